//! CPU operations on row-major `f32` slices.

pub mod act;
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod bf16;
pub mod conv;
pub mod group_norm;
pub mod isa;
pub mod matmul;
pub mod norm;
pub mod packed;
pub mod rope;
#[cfg(target_arch = "x86_64")]
pub mod simd;
pub mod tile;
pub mod winograd;

/// Naive f64 references the kernels' unit tests compare with.
#[cfg(test)]
pub(crate) mod reference {
    /// `n` values in [-1, 1) on a grid of 1/1000, from a multiplicative hash of the index.
    pub fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Awkward `(m, k, n)` shapes of a product `x[M,K] · w[N,K]ᵀ`, shared by the product
    /// kernels' tests, each taking those its kernel's limits allow: one row; 12, 13, 16, 17 and
    /// 32 rows (the register tile, the AMX block heights and both A tiles); 300 and 700 rows
    /// (several row blocks); `k` below, at, and not a multiple of 32, over one or two slice bounds
    /// (512 f32, 1024 bf16); `n` below, at, and not a multiple of 32 columns.
    pub const AWKWARD_PRODUCTS: [(usize, usize, usize); 16] = [
        (1, 1, 1),
        (1, 40, 32),
        (5, 3, 17),
        (12, 64, 32),
        (13, 7, 33),
        (13, 77, 19),
        (16, 32, 32),
        (16, 64, 32),
        (17, 40, 31),
        (17, 100, 7),
        (29, 601, 40),
        (32, 200, 32),
        (33, 513, 65),
        (37, 1030, 545),
        (300, 300, 100),
        (700, 96, 70),
    ];

    /// `x[M,K] · w[N,K]ᵀ (+ b)` accumulated in f64.
    pub fn naive_linear(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = b.map_or(0.0, |b| b[j] as f64);
                for p in 0..k {
                    acc += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                out[i * n + j] = acc as f32;
            }
        }
        out
    }
}
