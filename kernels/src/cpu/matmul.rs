//! The portable matrix product, on the `gemm` crate (runtime-dispatched SIMD, all cores): what
//! `packed::linear` falls back to on CPUs without AVX-512.

use gemm::{gemm, Parallelism};

fn parallelism(flops: usize) -> Parallelism {
    // Below about a million multiply-adds the thread hand-off costs more than it saves.
    if flops < 1 << 20 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N])`, `w` in PyTorch `nn.Linear` layout.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "linear: x is not [M,K]");
    assert_eq!(w.len(), n * k, "linear: w is not [N,K]");
    assert_eq!(out.len(), m * n, "linear: out is not [M,N]");
    if m == 0 || n == 0 {
        return;
    }
    let read_dst = match bias {
        Some(b) => {
            assert_eq!(b.len(), n, "linear: bias is not [N]");
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
            true
        }
        None => false,
    };
    // SAFETY: the asserts above make every index the strides reach lie inside its slice:
    // dst is M x N with row stride N, lhs M x K with row stride K, and rhs = wᵀ is K x N read
    // with row stride 1 and column stride K from the N x K buffer `w`.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m * n * k),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference::naive_linear;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_matches_naive_on_awkward_shapes() {
        for &(m, k, n) in &[(1, 1, 1), (1, 77, 5), (77, 33, 129), (130, 64, 17)] {
            let x = pseudo(m * k, 1);
            let w = pseudo(n * k, 2);
            let b = pseudo(n, 3);
            let mut out = vec![0.0; m * n];
            linear(&x, &w, Some(&b), m, k, n, &mut out);
            let want = naive_linear(&x, &w, Some(&b), m, k, n);
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-4 + 1e-5 * r.abs(),
                    "({m},{k},{n}) element {i}: {g} vs {r}"
                );
            }
            linear(&x, &w, None, m, k, n, &mut out);
            let want = naive_linear(&x, &w, None, m, k, n);
            for (g, r) in out.iter().zip(&want) {
                assert!((g - r).abs() <= 1e-4 + 1e-5 * r.abs());
            }
        }
    }
}
