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
/// multiple of 8 (16-byte rows).
pub fn gemm(out: GemmOut, p: GemmParams) -> Result<Launch<GemmParams>, CudaError> {
    const OP: &str = "gemm";
    check_gemm(OP, &p)?;
    ensure(p.lda >= p.k && p.lda % 8 == 0, OP, || {
        format!("lda {} must be >= K {} and a multiple of 8", p.lda, p.k)
    })?;
    ensure(out == GemmOut::Bf16 || p.res == 0, OP, || {
        "a bf16 residual needs the bf16 epilogue".into()
    })?;
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

/// 2-D convolution as an implicit GEMM: image bf16 `[B, h, w, c]` (`c % 8 == 0`), weight bf16
/// `[N, (k, k, c)]`, output bf16 `[B, ho, wo, N]` (`ldc` per pixel), optional f32 bias and bf16
/// residual; `p.m` must be `B * ho * wo` and `p.k` `k * k * c`.
pub fn conv2d(p: GemmParams) -> Result<Launch<GemmParams>, CudaError> {
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
    Ok(Launch {
        module: Module::Gemm,
        kernel: "conv2d_bf16",
        grid: gemm_grid(OP, p.m, p.n)?,
        block: [GEMM_THREADS, 1, 1],
        smem: GEMM_SMEM,
        params: p,
    })
}
