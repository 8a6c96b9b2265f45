//! Launch planning: each op checks its parameter struct and picks grid, block and dynamic
//! shared memory. The result runs on a GPU ([`super::CudaDevice::launch`]) or under the CPU
//! emulator (`crate::emu::run`), so tests exercise the real geometry.

use super::nvrtc::Module;
use super::params::*;
use super::CudaError;

/// One kernel launch: which kernel, its geometry and its parameters.
#[derive(Debug, Clone, Copy)]
pub struct Launch<P> {
    pub module: Module,
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory, bytes.
    pub smem: u32,
    pub params: P,
}

fn invalid(op: &'static str, reason: impl Into<String>) -> CudaError {
    CudaError::InvalidLaunch {
        op,
        reason: reason.into(),
    }
}

fn ensure(ok: bool, op: &'static str, reason: impl FnOnce() -> String) -> Result<(), CudaError> {
    match ok {
        true => Ok(()),
        false => Err(invalid(op, reason())),
    }
}

fn grid_1d(op: &'static str, blocks: usize) -> Result<[u32; 3], CudaError> {
    ensure(blocks < (1 << 31), op, || {
        format!("{blocks} blocks exceed the grid")
    })?;
    Ok([blocks.max(1) as u32, 1, 1])
}

/// Rows per block of the one-warp-per-row kernels (norms).
const ROWS_PER_BLOCK: usize = 8;

/// RMSNorm over rows of bf16 `x [rows, d]` (strides in elements), f32 weight `[d]`.
pub fn rms_norm(p: RmsNormParams) -> Result<Launch<RmsNormParams>, CudaError> {
    const OP: &str = "rms_norm";
    ensure(p.rows >= 0 && p.d > 0, OP, || {
        format!("rows {} d {}", p.rows, p.d)
    })?;
    ensure(p.x_stride >= p.d && p.out_stride >= p.d, OP, || {
        format!("strides {}/{} below d {}", p.x_stride, p.out_stride, p.d)
    })?;
    Ok(Launch {
        module: Module::Norm,
        kernel: "rms_norm_bf16",
        grid: grid_1d(OP, (p.rows as usize).div_ceil(ROWS_PER_BLOCK))?,
        block: [(32 * ROWS_PER_BLOCK) as u32, 1, 1],
        smem: 0,
        params: p,
    })
}

/// LayerNorm of f32 rows with modulation, affine weights or none (see norm.cu).
pub fn layer_norm(p: LayerNormParams) -> Result<Launch<LayerNormParams>, CudaError> {
    const OP: &str = "layer_norm";
    ensure(p.rows >= 0 && p.d > 0, OP, || {
        format!("rows {} d {}", p.rows, p.d)
    })?;
    ensure(p.x_stride >= p.d && p.out_stride >= p.d, OP, || {
        format!("strides {}/{} below d {}", p.x_stride, p.out_stride, p.d)
    })?;
    ensure(p.rows_per_item > 0, OP, || {
        "rows_per_item must be positive".into()
    })?;
    Ok(Launch {
        module: Module::Norm,
        kernel: "layer_norm_f32",
        grid: grid_1d(OP, (p.rows as usize).div_ceil(ROWS_PER_BLOCK))?,
        block: [(32 * ROWS_PER_BLOCK) as u32, 1, 1],
        smem: 0,
        params: p,
    })
}

/// The epilogue of a GEMM (see gemm.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmOut {
    /// C bf16 = act(acc + bias) (+ res).
    Bf16,
    /// C f32 = act(acc + bias).
    F32,
    /// C f32 += gate * (acc + bias).
    Residual,
}

/// Rows and columns of one GEMM tile, and the dynamic shared memory of the pipeline.
pub const GEMM_TILE: usize = 128;
const GEMM_SMEM: u32 = 3 * (128 + 128) * 40 * 2;
const GEMM_THREADS: u32 = 256;

fn check_gemm(op: &'static str, p: &GemmParams) -> Result<(), CudaError> {
    ensure(p.m >= 0 && p.n > 0 && p.k > 0, op, || {
        format!("M {} N {} K {}", p.m, p.n, p.k)
    })?;
    ensure(p.k % 8 == 0, op, || {
        format!("K {} is not a multiple of 8", p.k)
    })?;
    ensure(p.ldc >= p.n, op, || {
        format!("ldc {} below N {}", p.ldc, p.n)
    })?;
    ensure(p.w % 16 == 0 && p.a % 16 == 0, op, || {
        "A and W must be 16-byte aligned".into()
    })?;
    for (what, map) in [("a_map", p.a_map), ("c_map", p.c_map)] {
        ensure(
            map.per > 0 && map.stride >= 0 && map.offset >= 0,
            op,
            || format!("{what} {map:?}"),
        )?;
    }
    ensure(p.rows_per_item > 0, op, || {
        "rows_per_item must be positive".into()
    })?;
    Ok(())
}

fn gemm_grid(op: &'static str, m: i32, n: i32) -> Result<[u32; 3], CudaError> {
    let (gm, gn) = (
        (m as usize).div_ceil(GEMM_TILE),
        (n as usize).div_ceil(GEMM_TILE),
    );
    ensure(gm < 65536, op, || {
        format!("M {m} needs {gm} row tiles (at most 65535)")
    })?;
    Ok([gn as u32, gm.max(1) as u32, 1])
}

/// `C = epilogue(A · Wᵀ)`: A bf16 `[M, K]`, W bf16 `[N, K]`, K a multiple of 8, `lda` a
/// multiple of 8 (16-byte rows); one launch, the whole K per block.
pub fn gemm(out: GemmOut, mut p: GemmParams) -> Result<Launch<GemmParams>, CudaError> {
    const OP: &str = "gemm";
    check_gemm(OP, &p)?;
    ensure(p.lda >= p.k && p.lda % 8 == 0, OP, || {
        format!("lda {} must be >= K {} and a multiple of 8", p.lda, p.k)
    })?;
    ensure(out == GemmOut::Bf16 || p.res == 0, OP, || {
        "a bf16 residual needs the bf16 epilogue".into()
    })?;
    p.splits = 1;
    p.k_split = (p.k as usize).next_multiple_of(GEMM_BK) as i32;
    p.partial = 0;
    Ok(Launch {
        module: Module::Gemm,
        kernel: match out {
            GemmOut::Bf16 => "gemm_bf16",
            GemmOut::F32 => "gemm_f32out_bf16",
            GemmOut::Residual => "gemm_residual_bf16",
        },
        grid: gemm_grid(OP, p.m, p.n)?,
        block: [GEMM_THREADS, 1, 1],
        smem: GEMM_SMEM,
        params: p,
    })
}

/// K elements per pipeline slice of the GEMM kernels.
const GEMM_BK: usize = 32;
/// At most this many K slices in a split-K GEMM.
pub const MAX_SPLITS: usize = 8;
/// The shallowest K slice split-K makes (8 pipeline steps: enough to hide the loads).
const MIN_SPLIT_DEPTH: usize = 8 * GEMM_BK;

/// Tensor-core flops per byte of memory traffic at which a GEMM slot and the bandwidth are
/// equally busy: an H100 SXM at the efficiencies of ROOFLINE.md (55% of 989 TFLOP/s over 75%
/// of 3.35 TB/s).
const FLOPS_PER_BYTE: f64 = 220.0;

/// The K slices an `m x n x k` GEMM should be cut into on a device with `slots` resident GEMM
/// blocks (2 per SM): the count in 1..=[`MAX_SPLITS`], each slice at least 256 deep, with the
/// least modelled time: the busiest slot's waves (`ceil(tiles * s / slots)`) of `ceil(k / s)`
/// deep tiles, plus, when split, the partial sums written and read back (8 bytes per slice
/// and element) at [`FLOPS_PER_BYTE`].
pub fn split_k(m: usize, n: usize, k: usize, slots: usize) -> usize {
    let tiles = m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE);
    let slots = slots.max(1);
    let cost = |s: usize| {
        let (count, depth) = slices(k, s);
        let waves = (tiles * count).div_ceil(slots);
        let flops = (waves * slots * 2 * GEMM_TILE * GEMM_TILE * depth) as f64;
        let bytes = if count > 1 { 8 * count * m * n } else { 0 };
        flops + bytes as f64 * FLOPS_PER_BYTE
    };
    let mut best = 1;
    for s in 2..=MAX_SPLITS {
        if slices(k, s).1 < MIN_SPLIT_DEPTH {
            break;
        }
        if cost(s) < cost(best) {
            best = s;
        }
    }
    best
}

/// `(slices, K elements per slice)` of a GEMM of depth `k` asked to split `splits` ways: the
/// slices are whole pipeline steps, so fewer than asked may come out.
fn slices(k: usize, splits: usize) -> (usize, usize) {
    let steps = k.div_ceil(GEMM_BK);
    let per = steps.div_ceil(splits.clamp(1, steps.max(1)));
    (steps.div_ceil(per), per * GEMM_BK)
}

/// f32 elements of the partial sums an `m x n x k` GEMM split `splits` ways writes.
pub fn split_k_scratch(m: usize, n: usize, k: usize, splits: usize) -> usize {
    match slices(k, splits).0 {
        1 => 0,
        s => s * m * n,
    }
}

/// [`gemm`] with K cut into `splits` slices (see gemm.cu, "Split-K"): one launch when it comes
/// out as one slice, else the partial products into `p.partial` (f32, at least
/// [`split_k_scratch`] elements, the caller's check) and the reduction with the epilogue.
pub fn gemm_split(
    out: GemmOut,
    p: GemmParams,
    splits: usize,
) -> Result<Vec<Launch<GemmParams>>, CudaError> {
    const OP: &str = "gemm_split";
    let mut first = gemm(out, p)?;
    let (count, k_split) = slices(p.k as usize, splits);
    if count == 1 {
        return Ok(vec![first]);
    }
    ensure(p.partial != 0 && p.partial % 4 == 0, OP, || {
        "split-K needs an f32 partial-sum buffer".into()
    })?;
    ensure(count <= MAX_SPLITS, OP, || {
        format!("{count} K slices (at most {MAX_SPLITS})")
    })?;
    first.params.partial = p.partial;
    first.params.splits = count as i32;
    first.params.k_split = k_split as i32;
    first.grid[2] = count as u32;
    let elems = p.m as usize * p.n as usize;
    let reduce = Launch {
        module: Module::Gemm,
        kernel: match out {
            GemmOut::Bf16 => "gemm_splitk_bf16",
            GemmOut::F32 => "gemm_splitk_f32out",
            GemmOut::Residual => "gemm_splitk_residual",
        },
        grid: grid_1d(OP, elems.div_ceil(SPLITK_THREADS as usize).min(65535))?,
        block: [SPLITK_THREADS, 1, 1],
        smem: 0,
        params: first.params,
    };
    Ok(vec![first, reduce])
}

/// Threads per block of the split-K reduction.
const SPLITK_THREADS: u32 = 256;

/// 2-D convolution as an implicit GEMM: image bf16 `[B, h, w, c]` (`c % 8 == 0`), weight bf16
/// `[N, (k, k, c)]`, output bf16 `[B, ho, wo, N]` (`ldc` per pixel), optional f32 bias and bf16
/// residual; `p.m` must be `B * ho * wo` and `p.k` `k * k * c`.
pub fn conv2d(mut p: GemmParams) -> Result<Launch<GemmParams>, CudaError> {
    const OP: &str = "conv2d";
    check_gemm(OP, &p)?;
    let g = p.conv;
    ensure(g.c > 0 && g.c % 8 == 0, OP, || {
        format!("{} input channels: pad to a multiple of 8", g.c)
    })?;
    ensure(
        g.ksize > 0 && g.stride > 0 && g.pad_t >= 0 && g.pad_l >= 0,
        OP,
        || format!("{g:?}"),
    )?;
    ensure(p.k == g.ksize * g.ksize * g.c, OP, || {
        format!("K {} is not k * k * c = {}", p.k, g.ksize * g.ksize * g.c)
    })?;
    ensure(g.ho > 0 && g.wo > 0 && p.m % (g.ho * g.wo) == 0, OP, || {
        format!("M {} is not B * {} * {}", p.m, g.ho, g.wo)
    })?;
    ensure(
        p.a_map == RowMap::IDENTITY && p.c_map == RowMap::IDENTITY,
        OP,
        || "row maps are not supported".into(),
    )?;
    p.splits = 1;
    p.k_split = (p.k as usize).next_multiple_of(GEMM_BK) as i32;
    p.partial = 0;
    Ok(Launch {
        module: Module::Gemm,
        kernel: "conv2d_bf16",
        grid: gemm_grid(OP, p.m, p.n)?,
        block: [GEMM_THREADS, 1, 1],
        smem: GEMM_SMEM,
        params: p,
    })
}

/// Flash attention over `[B, S, H, Dh]` bf16 tensors (row strides in the params), `Dh` 64 or
/// 128; sets the softmax scale `1 / sqrt(Dh)`.
pub fn attention(head_dim: usize, mut p: AttnParams) -> Result<Launch<AttnParams>, CudaError> {
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
    Ok(Launch {
        module: Module::Attention,
        kernel,
        grid: [(p.seq as u32).div_ceil(64), p.heads as u32, p.batch as u32],
        block: [128, 1, 1],
        smem,
        params: p,
    })
}

/// [`attention`] over heads of `true_dim` values stored zero-padded to `head_dim` (64 or 128):
/// the padding adds nothing to `q · k` and gives zero outputs, and the softmax scale is
/// `1 / sqrt(true_dim)`. Lets models with narrow heads (the test fixtures' 16 and 32) run on
/// the two attention kernels.
pub fn attention_padded(
    head_dim: usize,
    true_dim: usize,
    p: AttnParams,
) -> Result<Launch<AttnParams>, CudaError> {
    ensure(true_dim > 0 && true_dim <= head_dim, "attention", || {
        format!("head dim {true_dim} padded to {head_dim}")
    })?;
    let mut launch = attention(head_dim, p)?;
    launch.params.scale_log2 = std::f32::consts::LOG2_E / (true_dim as f32).sqrt();
    Ok(launch)
}

/// Per-head RMSNorm and rotary positions of q or k (rope.cu): `rows` logical tokens through
/// `map`, `heads` of `head_dim` (even) each.
pub fn qk_norm_rope(p: QkNormRopeParams) -> Result<Launch<QkNormRopeParams>, CudaError> {
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
    Ok(Launch {
        module: Module::Rope,
        kernel: "qk_norm_rope_bf16",
        grid: grid_1d(OP, tasks.div_ceil(ROWS_PER_BLOCK))?,
        block: [(32 * ROWS_PER_BLOCK) as u32, 1, 1],
        smem: 0,
        params: p,
    })
}

/// Blocks of a grid-stride element-wise kernel over `n` elements (at most 8 waves of 132 SMs).
fn elementwise_grid(op: &'static str, n: usize) -> Result<[u32; 3], CudaError> {
    grid_1d(op, n.div_ceil(256).clamp(1, 132 * 8))
}

/// Embedding rows (elementwise.cu); the caller has checked every id against the table.
pub fn embedding(p: EmbeddingParams) -> Result<Launch<EmbeddingParams>, CudaError> {
    const OP: &str = "embedding";
    ensure(
        p.rows >= 0 && p.d > 0 && (p.pos == 0 || p.seq > 0),
        OP,
        || format!("rows {} d {} seq {}", p.rows, p.d, p.seq),
    )?;
    Ok(Launch {
        module: Module::Elementwise,
        kernel: "embedding_bf16",
        grid: elementwise_grid(OP, p.rows as usize * p.d as usize)?,
        block: [256, 1, 1],
        smem: 0,
        params: p,
    })
}

/// `y = act(x)` element-wise, f32 or bf16 on either side.
pub fn activation(p: ActParams) -> Result<Launch<ActParams>, CudaError> {
    const OP: &str = "activation";
    ensure(p.n >= 0 && (0..=4).contains(&p.act), OP, || {
        format!("n {} act {}", p.n, p.act)
    })?;
    Ok(Launch {
        module: Module::Elementwise,
        kernel: "act_bf16",
        grid: elementwise_grid(OP, p.n as usize)?,
        block: [256, 1, 1],
        smem: 0,
        params: p,
    })
}

/// The sinusoidal embedding of `rows` scalars into `[rows, 2 half]` (row stride `out_stride`).
pub fn sin_embed(p: SinEmbedParams) -> Result<Launch<SinEmbedParams>, CudaError> {
    const OP: &str = "sin_embed";
    ensure(
        p.rows >= 0 && p.half > 0 && p.out_stride >= 2 * p.half,
        OP,
        || format!("rows {} half {} stride {}", p.rows, p.half, p.out_stride),
    )?;
    Ok(Launch {
        module: Module::Elementwise,
        kernel: "sin_embed_f32",
        grid: elementwise_grid(OP, p.rows as usize * p.half as usize)?,
        block: [256, 1, 1],
        smem: 0,
        params: p,
    })
}

/// Tokens per block of `sample_tokens_f32` (one warp each).
const SAMPLER_WARPS: usize = 4;

/// The draw and confidence of every token (sampler.cu). `bad` must hold `i32::MAX` before the
/// launch; afterwards it holds the first flat token with bad logits, if any.
pub fn sample_tokens(p: SampleParams) -> Result<Launch<SampleParams>, CudaError> {
    const OP: &str = "sample_tokens";
    ensure(p.batch > 0 && p.tokens > 0 && p.vocab > 0, OP, || {
        format!("B {} n {} V {}", p.batch, p.tokens, p.vocab)
    })?;
    ensure(
        p.guided == 0 || (p.scale.is_finite() && p.scale >= 0.0),
        OP,
        || format!("guidance scale {}", p.scale),
    )?;
    let tokens = p.batch as usize * p.tokens as usize;
    let smem = SAMPLER_WARPS * (p.vocab as usize).div_ceil(64) * 8;
    ensure(smem <= 200 << 10, OP, || {
        format!("vocabulary {} too large", p.vocab)
    })?;
    Ok(Launch {
        module: Module::Sampler,
        kernel: "sample_tokens_f32",
        grid: grid_1d(OP, tokens.div_ceil(SAMPLER_WARPS))?,
        block: [(32 * SAMPLER_WARPS) as u32, 1, 1],
        smem: smem as u32,
        params: p,
    })
}

/// The re-masking of each row (sampler.cu): one block per row.
pub fn remask(p: RemaskParams) -> Result<Launch<RemaskParams>, CudaError> {
    const OP: &str = "remask";
    ensure(p.batch > 0 && p.tokens > 0, OP, || {
        format!("B {} n {}", p.batch, p.tokens)
    })?;
    ensure(p.last != 0 || p.tokens >= 2, OP, || {
        "fewer than 2 tokens".into()
    })?;
    Ok(Launch {
        module: Module::Sampler,
        kernel: "remask_f32",
        grid: grid_1d(OP, p.batch as usize)?,
        block: [1024, 1, 1],
        smem: 0,
        params: p,
    })
}

/// Pixels per partial sum of the GroupNorm statistics.
const GN_BAND: usize = 4096;
const GN_MAX_GROUPS: i32 = 128;

fn group_norm_chunks(pixels: i32) -> i32 {
    (pixels.max(1) as usize).div_ceil(GN_BAND).min(256) as i32
}

/// f64 elements of the workspace `group_norm` needs for `batch` items of `pixels` pixels.
pub fn group_norm_workspace(batch: usize, pixels: usize, groups: usize) -> usize {
    batch * groups * group_norm_chunks(pixels as i32) as usize * 3
}

/// GroupNorm (+ SiLU) over bf16 `[B, P, C]`: the statistics launch, then the apply launch.
#[allow(clippy::type_complexity)]
pub fn group_norm(
    mut p: GroupNormParams,
) -> Result<(Launch<GroupNormParams>, Launch<GroupNormParams>), CudaError> {
    const OP: &str = "group_norm";
    ensure(p.batch > 0 && p.pixels > 0 && p.channels > 0, OP, || {
        format!("B {} P {} C {}", p.batch, p.pixels, p.channels)
    })?;
    ensure(
        p.groups > 0 && p.groups <= GN_MAX_GROUPS && p.channels % p.groups == 0,
        OP,
        || {
            format!(
                "{} channels in {} groups (at most {GN_MAX_GROUPS})",
                p.channels, p.groups
            )
        },
    )?;
    ensure(p.batch < 65536, OP, || "batch too large".into())?;
    p.chunks = group_norm_chunks(p.pixels);
    let stats = Launch {
        module: Module::Vq,
        kernel: "group_norm_stats_bf16",
        grid: [p.chunks as u32, p.groups as u32, p.batch as u32],
        block: [256, 1, 1],
        smem: 0,
        params: p,
    };
    let per_item = p.pixels as usize * p.channels as usize;
    let blocks = per_item
        .div_ceil(256)
        .clamp(1, (132 * 8 / p.batch as usize).max(1));
    let apply = Launch {
        module: Module::Vq,
        kernel: "group_norm_apply_bf16",
        grid: [blocks as u32, p.batch as u32, 1],
        block: [256, 1, 1],
        smem: 0,
        params: p,
    };
    Ok((stats, apply))
}

/// Nearest 2x upsampling of bf16 `[B, h, w, c]`.
pub fn upsample2x(p: Upsample2xParams) -> Result<Launch<Upsample2xParams>, CudaError> {
    const OP: &str = "upsample2x";
    ensure(p.batch > 0 && p.h > 0 && p.w > 0 && p.c > 0, OP, || {
        format!("{p:?}")
    })?;
    let n = 4 * p.batch as usize * p.h as usize * p.w as usize * p.c as usize;
    Ok(Launch {
        module: Module::Vq,
        kernel: "upsample2x_bf16",
        grid: elementwise_grid(OP, n)?,
        block: [256, 1, 1],
        smem: 0,
        params: p,
    })
}

/// Nearest codebook entry of each f32 latent `[P, E]` among f32 `[V, E]`: i32 ids `[P]`.
pub fn vq_nearest(p: VqNearestParams) -> Result<Launch<VqNearestParams>, CudaError> {
    const OP: &str = "vq_nearest";
    ensure(p.pixels >= 0 && p.entries > 0 && p.dim > 0, OP, || {
        format!("{p:?}")
    })?;
    let smem = 32 * p.dim as usize * 4;
    ensure(smem <= 200 << 10, OP, || {
        format!("latent width {} too large", p.dim)
    })?;
    Ok(Launch {
        module: Module::Vq,
        kernel: "vq_nearest_f32",
        grid: grid_1d(OP, (p.pixels as usize).div_ceil(8))?,
        block: [256, 1, 1],
        smem: smem as u32,
        params: p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H100: 132 SMs x 2 resident GEMM blocks.
    const H100_SLOTS: usize = 264;

    #[test]
    fn split_k_fills_the_slots_only_where_tiles_are_few() {
        // Public 1B shapes at 512 px (M = 666 single-block rows, 512 image rows, 154 text).
        assert_eq!(
            split_k(666, 1024, 5120, H100_SLOTS),
            5,
            "single proj_out: 48 tiles"
        );
        assert_eq!(
            split_k(512, 1024, 4096, H100_SLOTS),
            6,
            "dual ff down: 32 tiles"
        );
        assert_eq!(
            split_k(666, 7168, 1024, H100_SLOTS),
            1,
            "fused qkv + mlp: 336 tiles"
        );
        assert_eq!(
            split_k(154, 1024, 1024, H100_SLOTS),
            4,
            "text out: 16 tiles"
        );
        // Shallow K never splits below 256 per slice.
        assert_eq!(split_k(64, 64, 384, H100_SLOTS), 1);
        assert_eq!(split_k(64, 64, 512, H100_SLOTS), 2);
        // Many tiles: one slice.
        assert_eq!(split_k(4096, 4096, 4096, H100_SLOTS), 1);
    }

    #[test]
    fn slices_cover_k_in_whole_steps() {
        assert_eq!(slices(200, 3), (3, 96));
        assert_eq!(slices(384, 5), (4, 96));
        assert_eq!(slices(64, 8), (2, 32));
        assert_eq!(slices(1024, 1), (1, 1024));
        assert_eq!(split_k_scratch(10, 20, 384, 5), 4 * 10 * 20);
        assert_eq!(split_k_scratch(10, 20, 64, 1), 0);
    }
}
