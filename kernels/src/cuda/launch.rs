//! A planned kernel launch ([`Launch`]: which kernel, its geometry, its parameter struct) and
//! what every planner and runner shares: the checks, the grids, and how far a strided or
//! row-mapped matrix reaches into its buffer.

use super::common::RowMap;
use super::nvrtc::Module;
use super::{CudaError, Result};

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

impl<P> Launch<P> {
    /// `kernel` of `module` over `grid` blocks of `threads` threads, `smem` bytes of dynamic
    /// shared memory.
    pub fn new(
        (module, kernel): (Module, &'static str),
        grid: [u32; 3],
        threads: u32,
        smem: u32,
        params: P,
    ) -> Self {
        let block = [threads, 1, 1];
        Launch {
            module,
            kernel,
            grid,
            block,
            smem,
            params,
        }
    }
}

pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> CudaError {
    CudaError::InvalidLaunch {
        op,
        reason: reason.into(),
    }
}

pub(crate) fn ensure(ok: bool, op: &'static str, reason: impl FnOnce() -> String) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(invalid(op, reason())),
    }
}

pub(crate) fn grid_1d(op: &'static str, blocks: usize) -> Result<[u32; 3]> {
    ensure(blocks < (1 << 31), op, || {
        format!("{blocks} blocks exceed the grid")
    })?;
    Ok([blocks.max(1) as u32, 1, 1])
}

/// Rows per block of the one-warp-per-row kernels (norms).
pub(crate) const ROWS_PER_BLOCK: usize = 8;

/// Blocks of a grid-stride element-wise kernel over `n` elements (at most 8 waves of 132 SMs).
pub(crate) fn elementwise_grid(op: &'static str, n: usize) -> Result<[u32; 3]> {
    grid_1d(op, n.div_ceil(256).clamp(1, 132 * 8))
}

/// Elements a `rows`-row strided matrix needs: `(last row) * stride + width`.
pub(crate) fn span(rows: usize, stride: usize, width: usize) -> usize {
    match rows {
        0 => 0,
        r => (r - 1) * stride + width,
    }
}

/// Elements reached by `m` logical rows through `map` with row stride `stride`.
pub(crate) fn mapped_span(map: RowMap, m: usize, stride: usize, width: usize) -> usize {
    match m {
        0 => 0,
        // Row maps are monotonic: the last logical row is the furthest physical one.
        m => map.row(m - 1) * stride + width,
    }
}
