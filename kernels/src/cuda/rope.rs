//! `rope.cu`: per-head RMSNorm and rotary positions of q or k, in place. The parameter struct,
//! the launch plan ([`qk_norm_rope`]) and the runner on a [`Device`].

use super::common::RowMap;
use super::device::{Device, Ptr};
use super::launch::{ensure, grid_1d, mapped_span, Launch, ROWS_PER_BLOCK};
use super::norm::NORM_EPS;
use super::nvrtc::Module;
use super::Result;

/// `qk_norm_rope_bf16` (rope.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct QkNormRopeParams {
    pub x: u64,
    pub out: u64,
    pub weight: u64,
    pub cos: u64,
    pub sin: u64,
    pub rows: i32,
    pub heads: i32,
    pub head_dim: i32,
    pub seq: i32,
    pub x_stride: i32,
    pub out_stride: i32,
    pub map: RowMap,
    pub eps: f32,
    pub pad_: i32,
}

device_repr!(QkNormRopeParams);

/// Per-head RMSNorm and rotary positions of q or k (rope.cu): `rows` logical tokens through
/// `map`, `heads` of `head_dim` (even) each.
pub fn qk_norm_rope(p: QkNormRopeParams) -> Result<Launch<QkNormRopeParams>> {
    const OP: &str = "qk_norm_rope";
    ensure(p.rows >= 0 && p.heads > 0 && p.seq > 0, OP, || {
        format!("rows {} heads {} seq {}", p.rows, p.heads, p.seq)
    })?;
    ensure(p.head_dim > 0 && p.head_dim % 2 == 0, OP, || {
        format!("head dim {} must be even", p.head_dim)
    })?;
    let width = p.heads * p.head_dim;
    ensure(p.x_stride >= width && p.out_stride >= width, OP, || {
        format!(
            "strides {}/{} below H * Dh = {width}",
            p.x_stride, p.out_stride
        )
    })?;
    ensure(
        p.x_stride % 2 == 0 && p.out_stride % 2 == 0 && p.x % 4 == 0 && p.out % 4 == 0,
        OP,
        || "rows must start on 4-byte boundaries".into(),
    )?;
    ensure(
        p.map.per > 0 && p.map.stride >= 0 && p.map.offset >= 0,
        OP,
        || format!("{:?}", p.map),
    )?;
    ensure(p.cos == 0 || p.sin != 0, OP, || "cos without sin".into())?;
    let tasks = p.rows as usize * p.heads as usize;
    Ok(Launch::new(
        (Module::Rope, "qk_norm_rope_bf16"),
        grid_1d(OP, tasks.div_ceil(ROWS_PER_BLOCK))?,
        (32 * ROWS_PER_BLOCK) as u32,
        0,
        p,
    ))
}

impl Device {
    /// Per-head RMSNorm (weight f32 `[head_dim]`) and rotary positions (`cos, sin [seq,
    /// head_dim]`) of `heads` heads at column `h * head_stride` of `rows` rows through `map`,
    /// in place. Heads narrower than their stride (zero-padded for attention) are one launch
    /// each.
    #[allow(clippy::too_many_arguments)]
    pub fn qk_norm_rope(
        &self,
        x: Ptr<u16>,
        stride: usize,
        map: RowMap,
        rows: usize,
        (heads, head_dim, head_stride): (usize, usize, usize),
        weight: Ptr<f32>,
        (cos, sin, seq): (Ptr<f32>, Ptr<f32>, usize),
    ) -> Result<()> {
        const OP: &str = "qk_norm_rope";
        let reach = mapped_span(map, rows, stride, heads * head_stride);
        x.need(reach, OP, "x")?;
        let base = QkNormRopeParams {
            weight: weight.need(head_dim, OP, "weight")?,
            cos: cos.need(seq * head_dim, OP, "cos")?,
            sin: sin.need(seq * head_dim, OP, "sin")?,
            rows: rows as i32,
            head_dim: head_dim as i32,
            seq: seq as i32,
            x_stride: stride as i32,
            out_stride: stride as i32,
            map,
            eps: NORM_EPS,
            ..QkNormRopeParams::default()
        };
        let launches: Vec<(u64, usize)> = if head_dim == head_stride {
            vec![(x.addr, heads)]
        } else {
            (0..heads)
                .map(|h| Ok((x.at(h * head_stride)?.addr, 1)))
                .collect::<Result<_>>()?
        };
        for (addr, heads) in launches {
            let launch = qk_norm_rope(QkNormRopeParams {
                x: addr,
                out: addr,
                heads: heads as i32,
                ..base
            })?;
            // SAFETY: every row the map reaches holds `heads * head_stride` elements (checked
            // above); the tables hold `seq` rows and physical rows modulo `seq` index them.
            unsafe { self.launch(&launch)? };
        }
        Ok(())
    }
}
