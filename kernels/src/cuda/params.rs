//! `#[repr(C)]` mirrors of the kernels' parameter structs (field for field, same order, same
//! types: `u64` addresses, `i32` sizes, `f32` scalars). The emulated tests check every size
//! against the C struct's `sizeof`.

/// Implements cudarc's `DeviceRepr` for parameter structs.
macro_rules! device_repr {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: a `#[repr(C)]` struct of integers and floats with the layout of the kernel's
        // by-value parameter; it holds no references, so copying its bytes to the launch is exact.
        unsafe impl cudarc::driver::DeviceRepr for $t {}
    )*};
}

/// `rms_norm_bf16` (norm.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RmsNormParams {
    pub x: u64,
    pub out: u64,
    pub weight: u64,
    pub rows: i32,
    pub d: i32,
    pub x_stride: i32,
    pub out_stride: i32,
    pub eps: f32,
    pub pad_: i32,
}

/// `layer_norm_f32` (norm.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerNormParams {
    pub x: u64,
    pub out: u64,
    pub scale: u64,
    pub shift: u64,
    pub rows: i32,
    pub d: i32,
    pub x_stride: i32,
    pub out_stride: i32,
    pub rows_per_item: i32,
    pub item_stride: i32,
    pub scale_add: f32,
    pub eps: f32,
}

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

/// Convolution geometry of `conv2d_bf16` (gemm.cu): image `[B, h, w, c]`, output `[B, ho, wo, N]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvGeom {
    pub h: i32,
    pub w: i32,
    pub c: i32,
    pub ho: i32,
    pub wo: i32,
    pub ksize: i32,
    pub stride: i32,
    pub pad_t: i32,
    pub pad_l: i32,
    pub pad_: i32,
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

/// The GEMM kernels and `conv2d_bf16` (gemm.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmParams {
    pub a: u64,
    pub w: u64,
    pub bias: u64,
    pub c: u64,
    pub gate: u64,
    pub res: u64,
    /// Split-K: f32 `[splits, M, N]` partial sums (see `ops::gemm_split`), or 0.
    pub partial: u64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldc: i32,
    pub act: i32,
    pub rows_per_item: i32,
    pub gate_stride: i32,
    /// K slices and K elements per slice: filled in by `ops::gemm` / `ops::gemm_split`.
    pub splits: i32,
    pub k_split: i32,
    pub a_map: RowMap,
    pub c_map: RowMap,
    pub conv: ConvGeom,
}

impl GemmParams {
    /// `C[M, N] = A[M, K] · W[N, K]ᵀ` with dense rows (`lda = K`, `ldc = N`), no bias.
    pub fn dense(a: u64, w: u64, c: u64, m: usize, n: usize, k: usize) -> Self {
        Self {
            a,
            w,
            c,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            lda: k as i32,
            ldc: n as i32,
            rows_per_item: i32::MAX,
            ..Self::default()
        }
    }
}

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
    /// `log2(e) / sqrt(Dh)`: set by [`super::ops::attention`].
    pub scale_log2: f32,
    pub pad_: i32,
}

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

/// `embedding_bf16` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddingParams {
    pub ids: u64,
    pub table: u64,
    pub pos: u64,
    pub out: u64,
    pub rows: i32,
    pub d: i32,
    pub seq: i32,
    pub out_f32: i32,
}

/// `act_bf16` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ActParams {
    pub x: u64,
    pub y: u64,
    pub n: i64,
    pub act: i32,
    pub x_f32: i32,
    pub y_f32: i32,
    pub pad_: i32,
}

/// `sin_embed_f32` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SinEmbedParams {
    pub x: u64,
    pub out: u64,
    pub rows: i32,
    pub half: i32,
    pub out_stride: i32,
    pub scale: f32,
}

/// `sample_tokens_f32` (sampler.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleParams {
    pub logits: u64,
    pub ids: u64,
    pub draw_u: u64,
    pub gumbel_u: u64,
    pub drawn: u64,
    pub conf: u64,
    pub bad: u64,
    pub batch: i32,
    pub tokens: i32,
    pub vocab: i32,
    pub mask_id: u32,
    pub guided: i32,
    pub scale: f32,
    pub greedy: i32,
    pub temperature: f32,
}

/// `remask_f32` (sampler.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RemaskParams {
    pub ids: u64,
    pub drawn: u64,
    pub conf: u64,
    pub mask_len: u64,
    pub batch: i32,
    pub tokens: i32,
    pub mask_id: u32,
    pub raw_len: i32,
    pub last: i32,
    pub pad_: i32,
}

/// `group_norm_stats_bf16` and `group_norm_apply_bf16` (vq.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupNormParams {
    pub x: u64,
    pub out: u64,
    pub weight: u64,
    pub bias: u64,
    /// f64 `[B, G, chunks, 3]` workspace: [`super::ops::group_norm_workspace`] elements.
    pub stats: u64,
    pub batch: i32,
    pub pixels: i32,
    pub channels: i32,
    pub groups: i32,
    /// Set by [`super::ops::group_norm`].
    pub chunks: i32,
    pub silu: i32,
    pub eps: f32,
    pub pad_: i32,
}

/// `upsample2x_bf16` (vq.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Upsample2xParams {
    pub x: u64,
    pub out: u64,
    pub batch: i32,
    pub h: i32,
    pub w: i32,
    pub c: i32,
}

/// `vq_nearest_f32` (vq.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VqNearestParams {
    pub z: u64,
    pub codebook: u64,
    pub ids: u64,
    pub pixels: i32,
    pub entries: i32,
    pub dim: i32,
    pub pad_: i32,
}

device_repr!(
    GroupNormParams,
    Upsample2xParams,
    VqNearestParams,
    RmsNormParams,
    LayerNormParams,
    GemmParams,
    AttnParams,
    QkNormRopeParams,
    EmbeddingParams,
    ActParams,
    SinEmbedParams,
    SampleParams,
    RemaskParams,
);
