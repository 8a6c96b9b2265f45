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
