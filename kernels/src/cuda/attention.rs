//! `attention.cu`: flash attention over bf16 heads of 64 or 128 values (narrower heads
//! zero-padded). The parameter struct, the launch plans ([`attention`], [`attention_padded`])
//! and the runners on a [`Device`] ([`Device::attention`], causal or not).

use super::device::{Device, Ptr};
use super::launch::{ensure, invalid, span, Launch};
use super::nvrtc::Module;
use super::Result;

/// `flash_attn_d{64,128}_bf16` (attention.cu): element (b, s, h, d) of each tensor at
/// `(b * seq + s) * stride + h * Dh + d`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub batch: i32,
    pub seq: i32,
    pub heads: i32,
    pub q_stride: i32,
    pub k_stride: i32,
    pub v_stride: i32,
    pub o_stride: i32,
    pub causal: i32,
    /// `log2(e) / sqrt(Dh)`: set by [`attention`].
    pub scale_log2: f32,
    pub pad_: i32,
}

device_repr!(AttnParams);

/// Flash attention over `[B, S, H, Dh]` bf16 tensors (row strides in the params), `Dh` 64 or
/// 128; sets the softmax scale `1 / sqrt(Dh)`.
pub fn attention(head_dim: usize, mut p: AttnParams) -> Result<Launch<AttnParams>> {
    const OP: &str = "attention";
    let kernel = match head_dim {
        64 => "flash_attn_d64_bf16",
        128 => "flash_attn_d128_bf16",
        _ => return Err(invalid(OP, format!("head dim {head_dim} (64 or 128 only)"))),
    };
    ensure(p.batch > 0 && p.seq > 0 && p.heads > 0, OP, || {
        format!("B {} S {} H {}", p.batch, p.seq, p.heads)
    })?;
    let width = p.heads * head_dim as i32;
    for (what, stride) in [
        ("q", p.q_stride),
        ("k", p.k_stride),
        ("v", p.v_stride),
        ("o", p.o_stride),
    ] {
        ensure(stride >= width && stride % 8 == 0, OP, || {
            format!("{what} row stride {stride}: at least H * Dh = {width} and a multiple of 8")
        })?;
    }
    for (what, a) in [("q", p.q), ("k", p.k), ("v", p.v), ("o", p.o)] {
        ensure(a % 16 == 0, OP, || format!("{what} is not 16-byte aligned"))?;
    }
    ensure(p.batch < 65536 && p.heads < 65536, OP, || {
        "grid too large".into()
    })?;
    p.scale_log2 = std::f32::consts::LOG2_E / (head_dim as f32).sqrt();
    // Q and two stages of K and V: 5 tiles of 64 rows of Dh + 8 bf16.
    let smem = (5 * 64 * (head_dim + 8) * 2) as u32;
    let grid = [(p.seq as u32).div_ceil(64), p.heads as u32, p.batch as u32];
    Ok(Launch::new((Module::Attention, kernel), grid, 128, smem, p))
}

/// [`attention`] over heads of `true_dim` values stored zero-padded to `head_dim` (64 or 128):
/// the padding adds nothing to `q · k` and gives zero outputs, and the softmax scale is
/// `1 / sqrt(true_dim)`. Lets models with narrow heads (the test fixtures' 16 and 32) run on
/// the two attention kernels.
pub fn attention_padded(
    head_dim: usize,
    true_dim: usize,
    p: AttnParams,
) -> Result<Launch<AttnParams>> {
    ensure(true_dim > 0 && true_dim <= head_dim, "attention", || {
        format!("head dim {true_dim} padded to {head_dim}")
    })?;
    let mut launch = attention(head_dim, p)?;
    launch.params.scale_log2 = std::f32::consts::LOG2_E / (true_dim as f32).sqrt();
    Ok(launch)
}

impl Device {
    /// Attention over `[B, S, H, Dp]` bf16 q, k, v (row stride `H * Dp`) of heads holding
    /// `dh <= Dp` values, into `o` with row stride `o_stride`; with `causal`, query `s` sees keys
    /// `0..=s` (CLIP's text encoder).
    pub fn attention(
        &self,
        (q, k, v): (Ptr<u16>, Ptr<u16>, Ptr<u16>),
        (o, o_stride): (Ptr<u16>, usize),
        (batch, seq, heads): (usize, usize, usize),
        (dh, dp): (usize, usize),
        causal: bool,
    ) -> Result<()> {
        const OP: &str = "attention";
        let (rows, width) = (batch * seq, heads * dp);
        let launch = attention_padded(
            dp,
            dh,
            AttnParams {
                q: q.need(rows * width, OP, "q")?,
                k: k.need(rows * width, OP, "k")?,
                v: v.need(rows * width, OP, "v")?,
                o: o.need(span(rows, o_stride, width), OP, "o")?,
                batch: batch as i32,
                seq: seq as i32,
                heads: heads as i32,
                q_stride: width as i32,
                k_stride: width as i32,
                v_stride: width as i32,
                o_stride: o_stride as i32,
                causal: causal as i32,
                ..AttnParams::default()
            },
        )?;
        // SAFETY: q, k, v hold B * S rows of H * Dp, o B * S rows of `o_stride` (checked).
        unsafe { self.launch(&launch) }
    }
}
