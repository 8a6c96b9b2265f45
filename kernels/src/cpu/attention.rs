//! Scaled dot-product attention over `[B, S, H, Dh]` tensors, blocked over query rows.
//!
//! Each task takes one (batch item, head, block of `QUERY_BLOCK` query rows): scores for the block
//! (`[QUERY_BLOCK, S]`), a row softmax, then the product with V. No `S x S` matrix is ever held,
//! so memory stays `threads * QUERY_BLOCK * S` floats whatever the sequence length.

use super::matmul::{linear, matmul};
use rayon::prelude::*;

const QUERY_BLOCK: usize = 128;

/// `[B, S, H, Dh]` -> `[B, H, S, Dh]`.
fn heads_first(x: &[f32], b: usize, s: usize, h: usize, dh: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for t in 0..s {
            for hi in 0..h {
                let src = ((bi * s + t) * h + hi) * dh;
                let dst = ((bi * h + hi) * s + t) * dh;
                out[dst..dst + dh].copy_from_slice(&x[src..src + dh]);
            }
        }
    }
    out
}

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
        let max = seen.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
        let mut sum = 0.0f64;
        for v in seen.iter_mut() {
            *v = (*v * scale - max).exp();
            sum += *v as f64;
        }
        let inv = (1.0 / sum) as f32;
        seen.iter_mut().for_each(|v| *v *= inv);
        hidden.fill(0.0);
    }
}

/// `out = softmax(q kᵀ / sqrt(Dh)) v` for `q, k, v, out [B, S, H, Dh]`; `causal` masks keys
/// after each query (the CLIP text encoder), otherwise every query sees every key (the MM-DiT).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    s: usize,
    h: usize,
    dh: usize,
    causal: bool,
    out: &mut [f32],
) {
    let len = b * s * h * dh;
    assert!(
        q.len() == len && k.len() == len && v.len() == len && out.len() == len,
        "attention: q, k, v, out are not [B, S, H, Dh]"
    );
    let (q, k, v) = (
        heads_first(q, b, s, h, dh),
        heads_first(k, b, s, h, dh),
        heads_first(v, b, s, h, dh),
    );
    let scale = 1.0 / (dh as f32).sqrt();
    let blocks = s.div_ceil(QUERY_BLOCK);
    // [B, H, S, Dh], written block by block.
    let mut o = vec![0.0f32; len];
    let tasks: Vec<(usize, usize)> = (0..b * h)
        .flat_map(|bh| (0..blocks).map(move |blk| (bh, blk)))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(bh, blk)| {
            let q0 = blk * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(s - q0);
            let head = bh * s * dh;
            let qb = &q[head + q0 * dh..head + (q0 + rows) * dh];
            let (kh, vh) = (&k[head..head + s * dh], &v[head..head + s * dh]);
            let mut scores = vec![0.0f32; rows * s];
            linear(qb, kh, None, rows, dh, s, &mut scores);
            softmax_rows_(&mut scores, s, scale, causal, q0);
            let mut ob = vec![0.0f32; rows * dh];
            matmul(&scores, vh, rows, s, dh, &mut ob);
            ob
        })
        .collect();
    for (&(bh, blk), ob) in tasks.iter().zip(results) {
        let start = bh * s * dh + blk * QUERY_BLOCK * dh;
        o[start..start + ob.len()].copy_from_slice(&ob);
    }
    // [B, H, S, Dh] -> [B, S, H, Dh]
    for bi in 0..b {
        for hi in 0..h {
            for t in 0..s {
                let src = ((bi * h + hi) * s + t) * dh;
                let dst = ((bi * s + t) * h + hi) * dh;
                out[dst..dst + dh].copy_from_slice(&o[src..src + dh]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        b: usize,
        s: usize,
        h: usize,
        dh: usize,
        causal: bool,
    ) -> Vec<f32> {
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
            attention(&q, &k, &v, b, s, h, dh, causal, &mut out);
            let want = naive(&q, &k, &v, b, s, h, dh, causal);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(g, r)| (g - r).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "(b={b}, s={s}, h={h}, dh={dh}, causal={causal}) worst abs error {worst}"
            );
        }
    }
}
