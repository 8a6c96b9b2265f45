//! Scaled dot-product attention over `[B, S, H, Dh]` tensors, blocked over query rows.
//!
//! Each task takes one (batch item, head): K and Vᵀ of the head are packed once as the weights of
//! two products ([`super::packed`]), read in place from the `[B, S, H, Dh]` buffers, then for each block of `QUERY_BLOCK` query rows: scores
//! `[QUERY_BLOCK, S]`, a row softmax, and the product with V. No `S x S` matrix is ever held, so
//! memory stays `threads * QUERY_BLOCK * S` floats whatever the sequence length. With
//! `Compute::Bf16` both products take bf16 operands (the scores are rounded after the softmax),
//! accumulating in f32, as the other matrix products of a bf16 run.

use super::packed::{
    linear, linear_rows, Compute, Epilogue, PackedMatrix, Source, Storage, StridedRows,
};
use rayon::prelude::*;

const QUERY_BLOCK: usize = 128;

/// Softmax of each row of `scores [R, S]` in place, after scaling by `scale`; with `causal`, row
/// `r` (query position `first_query + r`) sees keys `0..=first_query + r` only.
fn softmax_rows_(scores: &mut [f32], s: usize, scale: f32, causal: bool, first_query: usize) {
    for (r, row) in scores.chunks_exact_mut(s).enumerate() {
        let visible = if causal {
            (first_query + r + 1).min(s)
        } else {
            s
        };
        let (seen, hidden) = row.split_at_mut(visible);
        softmax_(seen, scale);
        hidden.fill(0.0);
    }
}

/// `softmax(scale * row)` in place.
fn softmax_(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::softmax_(super::simd::width(), row, scale).is_some() {
        return;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        *v = (*v * scale - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The shape of an attention over `[B, S, H, Dh]` tensors; `causal` masks keys after each
/// query (the CLIP text encoder), otherwise every query sees every key (the MM-DiT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// B
    pub batch: usize,
    /// S
    pub seq: usize,
    /// H
    pub heads: usize,
    /// Dh
    pub head_dim: usize,
    pub causal: bool,
}

impl AttnShape {
    pub fn new(batch: usize, seq: usize, heads: usize, head_dim: usize, causal: bool) -> Self {
        AttnShape {
            batch,
            seq,
            heads,
            head_dim,
            causal,
        }
    }

    /// `(B, S, H, Dh)`
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.seq, self.heads, self.head_dim)
    }
}

/// `out = softmax(q kᵀ / sqrt(Dh)) v` for `q, k, v, out [B, S, H, Dh]` of `shape`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, out: &mut [f32]) {
    attention_with(q, k, v, shape, Compute::F32, out)
}

/// [`attention`] with both products in `compute` arithmetic.
pub fn attention_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    compute: Compute,
    out: &mut [f32],
) {
    let ((b, s, h, dh), causal) = (shape.dims(), shape.causal);
    let len = b * s * h * dh;
    assert!(
        q.len() == len && k.len() == len && v.len() == len && out.len() == len,
        "attention: q, k, v, out are not [B, S, H, Dh]"
    );
    let scale = 1.0 / (dh as f32).sqrt();
    let storage = match compute {
        Compute::F32 => Storage::F32,
        Compute::Bf16 => Storage::Bf16,
    };
    // [B * H][S, Dh]
    let heads: Vec<Vec<f32>> = (0..b * h)
        .into_par_iter()
        .map(|bh| {
            let (bi, hi) = (bh / h, bh % h);
            // Head hi of item bi: S rows of Dh values, H * Dh apart.
            let (at, ld) = ((bi * s * h + hi) * dh, h * dh);
            let keys = Source::Strided {
                x: &k[at..],
                ld,
                transposed: false,
            };
            let values = Source::Strided {
                x: &v[at..],
                ld,
                transposed: true,
            };
            let keys = PackedMatrix::of(keys, s, dh, storage, compute); // [S, Dh]
            let values = PackedMatrix::of(values, dh, s, storage, compute); // Vᵀ [Dh, S]
            let mut o = vec![0.0f32; s * dh];
            let mut scores = vec![0.0f32; QUERY_BLOCK.min(s) * s];
            for q0 in (0..s).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(s - q0);
                let scores = &mut scores[..rows * s];
                let queries = StridedRows {
                    x: &q[at + q0 * ld..],
                    ld,
                    k: dh,
                    rows,
                };
                linear_rows(&queries, &keys, None, Epilogue::None, scores);
                softmax_rows_(scores, s, scale, causal, q0);
                linear(
                    scores,
                    &values,
                    None,
                    Epilogue::None,
                    &mut o[q0 * dh..(q0 + rows) * dh],
                );
            }
            o
        })
        .collect();
    // [B * H][S, Dh] -> [B, S, H, Dh]
    out.par_chunks_mut(s * h * dh)
        .enumerate()
        .for_each(|(bi, item)| {
            for (t, row) in item.chunks_exact_mut(h * dh).enumerate() {
                for (hi, dst) in row.chunks_exact_mut(dh).enumerate() {
                    dst.copy_from_slice(&heads[bi * h + hi][t * dh..(t + 1) * dh]);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention of `shape` in f64, one query row at a time.
    fn naive(q: &[f32], k: &[f32], v: &[f32], shape: AttnShape) -> Vec<f32> {
        let ((b, s, h, dh), causal) = (shape.dims(), shape.causal);
        let mut out = vec![0.0; q.len()];
        let at = |bi: usize, t: usize, hi: usize| ((bi * s + t) * h + hi) * dh;
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..s {
                    let n = if causal { i + 1 } else { s };
                    let logits: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..dh)
                                .map(|d| q[at(bi, i, hi) + d] as f64 * k[at(bi, j, hi) + d] as f64)
                                .sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let z: f64 = w.iter().sum();
                    for d in 0..dh {
                        out[at(bi, i, hi) + d] = ((0..n)
                            .map(|j| w[j] * v[at(bi, j, hi) + d] as f64)
                            .sum::<f64>()
                            / z) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_on_awkward_shapes() {
        for &(b, s, h, dh, causal) in &[
            (1, 1, 1, 4, false),
            (2, 77, 2, 8, true),
            (1, 333, 3, 16, false),
            (2, 130, 1, 6, true),
        ] {
            let n = b * s * h * dh;
            let gen = |seed: u32| -> Vec<f32> {
                (0..n as u32)
                    .map(|i| {
                        ((i.wrapping_mul(2246822519).wrapping_add(seed) >> 9) % 2000) as f32 / 500.0
                            - 2.0
                    })
                    .collect()
            };
            let (q, k, v) = (gen(1), gen(2), gen(3));
            let mut out = vec![0.0; n];
            let shape = AttnShape::new(b, s, h, dh, causal);
            attention(&q, &k, &v, shape, &mut out);
            let want = naive(&q, &k, &v, shape);
            let worst_abs = |out: &[f32]| {
                out.iter()
                    .zip(&want)
                    .map(|(g, r)| (g - r).abs())
                    .fold(0.0f32, f32::max)
            };
            let worst = worst_abs(&out);
            assert!(
                worst < 1e-4,
                "(b={b}, s={s}, h={h}, dh={dh}, causal={causal}) worst abs error {worst}"
            );
            // bf16 operands: q, k, v and the probabilities rounded to 8 bits of mantissa.
            attention_with(&q, &k, &v, shape, Compute::Bf16, &mut out);
            let worst = worst_abs(&out);
            assert!(
                worst < 0.05,
                "bf16 (b={b}, s={s}, h={h}, dh={dh}, causal={causal}) worst abs error {worst}"
            );
        }
    }
}
