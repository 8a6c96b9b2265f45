//! What the parameter structs of several kernel files share, mirroring `common.cuh`: row maps
//! (logical rows of a joint buffer) and activation codes.

/// A row map: logical row `m` at physical row `(m / per) * stride + offset + m % per`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMap {
    pub per: i32,
    pub stride: i32,
    pub offset: i32,
    pub pad_: i32,
}

impl RowMap {
    pub const IDENTITY: RowMap = RowMap {
        per: i32::MAX,
        stride: 0,
        offset: 0,
        pad_: 0,
    };

    /// Rows `offset..offset + per` of each group of `stride` rows: the text (`offset = 0`,
    /// `per = L`) or image (`offset = L`, `per = N`) part of a joint `[B, L + N]` buffer.
    pub fn part(per: usize, stride: usize, offset: usize) -> RowMap {
        RowMap {
            per: per as i32,
            stride: stride as i32,
            offset: offset as i32,
            pad_: 0,
        }
    }

    /// The physical row of logical row `m`.
    pub fn row(&self, m: usize) -> usize {
        let per = self.per as usize;
        (m / per) * self.stride as usize + self.offset as usize + m % per
    }
}

impl Default for RowMap {
    fn default() -> Self {
        Self::IDENTITY
    }
}

/// Activation codes (`MUDDIT_ACT_*` in common.cuh).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    #[default]
    None = 0,
    Silu = 1,
    GeluTanh = 2,
    GeluErf = 3,
    QuickGelu = 4,
}

device_repr!(RowMap);
