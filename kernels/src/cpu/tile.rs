//! The register tile every x86 micro-kernel of the packed products fills (`avx512.rs`,
//! `avx2.rs`): [`MR`] rows of packed activations times one [`NR`]-column weight panel, and
//! where the finished tile goes ([`Tile`]). A leaf module, so the kernels and the blocking code
//! (`packed.rs`) share it without depending on each other.

/// Rows of the register tile.
pub const MR: usize = 12;
/// Columns of the register tile: one packed weight panel (two zmm / four ymm vectors of f32).
pub const NR: usize = 32;

/// How the accumulators start.
#[derive(Clone, Copy)]
pub enum Init {
    Zero,
    /// Continue the partial sums already in `c`.
    Load,
    /// Start from a bias row (`cols` valid values).
    Bias(*const f32),
}

/// Where a finished register tile goes: `rows x cols` of `c` at row stride `ldc`, how the
/// accumulators start, and whether GELU-tanh is applied on the way out.
#[derive(Clone, Copy)]
pub struct Tile {
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub init: Init,
    pub gelu: bool,
}
