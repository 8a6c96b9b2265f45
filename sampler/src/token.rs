//! The per-token work of a step on one `[V]` row of logits: softmax, draw, confidence.
//!
//! Reductions use a fixed number of lanes ([`LANES`]) in a fixed order, so the result does not
//! depend on the instruction set the compiler picks, and the exponential is a branch-free
//! polynomial that vectorizes.

use crate::guidance::combine_into;
use crate::DrawRule;

/// Accumulator lanes of the max and exp-sum reductions.
const LANES: usize = 16;
/// Entries per f64 partial sum of the probabilities (the draw walks these blocks first).
const DRAW_BLOCK: usize = 64;
/// Clamp applied to probabilities and to `-ln u` before their logarithms, as upstream.
const TINY: f32 = 1e-20;

/// What the step needs from one masked token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Drawn {
    /// The drawn id (< V).
    pub id: u32,
    /// Its softmax probability, f32.
    pub prob: f32,
}

/// Scratch of one worker: the row's (combined, then exponentiated) logits and block sums.
pub(crate) struct Scratch {
    /// `[V]`
    pub values: Vec<f32>,
    /// `[ceil(V / DRAW_BLOCK)]`
    pub blocks: Vec<f64>,
}

impl Scratch {
    pub fn new(vocab: usize) -> Self {
        Self {
            values: vec![0.0; vocab],
            blocks: vec![0.0; vocab.div_ceil(DRAW_BLOCK)],
        }
    }
}

/// Upstream's Gumbel noise of a uniform: `-ln(max(-ln(max(u, 1e-20)), 1e-20))`, in f32.
pub(crate) fn gumbel(u: f32) -> f32 {
    -(-u.max(TINY).ln()).max(TINY).ln()
}

/// The log-confidence term of a probability: `ln(max(p, 1e-20))`.
pub(crate) fn log_prob(p: f32) -> f32 {
    p.max(TINY).ln()
}

/// Softmax of one token's logits `[V]` and one draw; `None` if the logits hold NaN or +inf
/// or are all -inf. Softmax as PyTorch's: `m = max`, `e_j = exp(x_j - m)`, `s = sum e`,
/// `p_j = e_j * (1 / s)`; `scratch.values` receives `e`.
#[inline(always)]
pub(crate) fn draw_plain(
    logits: &[f32],
    rule: DrawRule,
    u: f32,
    scratch: &mut Scratch,
) -> Option<Drawn> {
    let m = max_finite(logits)?;
    let argmax = first_index_of(logits, m, rule);
    let sum = exp_sum_from(logits, &mut scratch.values, m);
    finish(sum, argmax, rule, u, scratch)
}

/// [`draw_plain`] on the guided logits `u + scale * (c - u)` of `uncond`, `cond` `[V]`.
#[inline(always)]
pub(crate) fn draw_guided(
    scale: f32,
    uncond: &[f32],
    cond: &[f32],
    rule: DrawRule,
    u: f32,
    scratch: &mut Scratch,
) -> Option<Drawn> {
    combine_into(scale, uncond, cond, &mut scratch.values);
    let m = max_finite(&scratch.values)?;
    let argmax = first_index_of(&scratch.values, m, rule);
    let sum = exp_sum_in_place(&mut scratch.values, m);
    finish(sum, argmax, rule, u, scratch)
}

/// The draw once `scratch.values` holds `e = exp(x - m)` and `sum = sum e`.
#[inline(always)]
fn finish(sum: f32, argmax: usize, rule: DrawRule, u: f32, scratch: &mut Scratch) -> Option<Drawn> {
    if !sum.is_finite() {
        return None; // a NaN logit
    }
    let inv = 1.0 / sum;
    let id = match rule {
        DrawRule::Greedy => argmax,
        DrawRule::Sample => inverse_cdf(&scratch.values, inv, u, &mut scratch.blocks),
    };
    let prob = scratch.values[id] * inv;
    Some(Drawn {
        id: id as u32,
        prob,
    })
}

/// The maximum of `xs` `[V]` if it is finite (NaN entries are skipped here and caught by the sum).
#[inline(always)]
fn max_finite(xs: &[f32]) -> Option<f32> {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(reduce_max(acc), |a, &x| if x > a { x } else { a });
    m.is_finite().then_some(m)
}

/// The maximum of the lanes (the order does not matter for a maximum).
#[inline(always)]
fn reduce_max(acc: [f32; LANES]) -> f32 {
    acc.into_iter()
        .fold(f32::NEG_INFINITY, |a, x| if x > a { x } else { a })
}

/// The first index holding `m` (greedy draws only; 0 otherwise).
#[inline(always)]
fn first_index_of(xs: &[f32], m: f32, rule: DrawRule) -> usize {
    match rule {
        DrawRule::Greedy => xs.iter().position(|&x| x == m).unwrap_or(0),
        DrawRule::Sample => 0,
    }
}

/// `dst[j] = exp(src[j] - m)`; returns the f32 sum over [`LANES`] lanes. `src`, `dst`: `[V]`.
#[inline(always)]
fn exp_sum_from(src: &[f32], dst: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut dst_chunks = dst.chunks_exact_mut(LANES);
    let mut src_chunks = src.chunks_exact(LANES);
    for (d, s) in (&mut dst_chunks).zip(&mut src_chunks) {
        for ((a, o), &x) in acc.iter_mut().zip(d).zip(s) {
            *o = exp_nonpositive(x - m);
            *a += *o;
        }
    }
    let mut tail = 0.0f32;
    for (o, &x) in dst_chunks
        .into_remainder()
        .iter_mut()
        .zip(src_chunks.remainder())
    {
        *o = exp_nonpositive(x - m);
        tail += *o;
    }
    reduce_lanes(acc) + tail
}

/// `xs[j] = exp(xs[j] - m)`; returns the f32 sum over [`LANES`] lanes. `xs`: `[V]`.
#[inline(always)]
fn exp_sum_in_place(xs: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *x = exp_nonpositive(*x - m);
            *a += *x;
        }
    }
    let mut tail = 0.0f32;
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - m);
        tail += *x;
    }
    reduce_lanes(acc) + tail
}

/// Pairwise sum of the lanes in a fixed order: lane `l` with lane `l + LANES / 2`, and so on.
#[inline(always)]
fn reduce_lanes<T: Copy + std::ops::AddAssign>(mut acc: [T; LANES]) -> T {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            let upper = acc[l + width];
            acc[l] += upper;
        }
        width /= 2;
    }
    acc[0]
}

/// `exp(x)` for `x <= 0` (NaN propagates), within about 2 ulp; 0 below -87 (where the true
/// value is under 1.7e-38). Cody-Waite reduction `x = n ln 2 + r`, |r| <= ln 2 / 2, a degree-5
/// polynomial for `e^r` (Cephes `expf` coefficients) and `2^n` built from the exponent bits.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375 exactly
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = poly * (r * r) + r + 1.0;
    let n_int = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        er * scale
    }
}

/// The inverse-CDF draw: the first `j` with `C_j > u * C_last`, `C_j = sum_{i<=j} p_i` in f64,
/// `p_i = e_i * inv` in f32. `e`: `[V]`; `blocks`: `[ceil(V / DRAW_BLOCK)]`, overwritten with
/// the per-block sums. Falls back to the last `j` with `p_j > 0` when rounding leaves no
/// `C_j` above the target (possible only for `u` within ~1e-16 of 1).
#[inline(always)]
fn inverse_cdf(e: &[f32], inv: f32, u: f32, blocks: &mut [f64]) -> usize {
    let total = block_sums(e, inv, blocks);
    let target = f64::from(u) * total;
    let mut acc = 0.0f64;
    for (b, &block) in blocks.iter().enumerate() {
        if acc + block > target {
            let start = b * DRAW_BLOCK;
            let end = e.len().min(start + DRAW_BLOCK);
            return start + walk_block(&e[start..end], inv, acc, target);
        }
        acc += block;
    }
    last_positive(e, inv)
}

/// Per-block f64 sums of `e_i * inv` ([`LANES`] lanes inside a block); returns their
/// sequential total. `e`: `[V]`, `blocks`: `[ceil(V / DRAW_BLOCK)]`.
#[inline(always)]
fn block_sums(e: &[f32], inv: f32, blocks: &mut [f64]) -> f64 {
    let mut total = 0.0f64;
    for (block, chunk) in blocks.iter_mut().zip(e.chunks(DRAW_BLOCK)) {
        let mut acc = [0.0f64; LANES];
        let mut lanes = chunk.chunks_exact(LANES);
        for lane in &mut lanes {
            for (a, &x) in acc.iter_mut().zip(lane) {
                *a += f64::from(x * inv);
            }
        }
        for (a, &x) in acc.iter_mut().zip(lanes.remainder()) {
            *a += f64::from(x * inv);
        }
        *block = reduce_lanes(acc);
        total += *block;
    }
    total
}

/// Inside one block: the first `j` whose running sum from `acc` exceeds `target`, else the
/// last `j` of the block with a positive probability.
fn walk_block(e: &[f32], inv: f32, mut acc: f64, target: f64) -> usize {
    for (j, &x) in e.iter().enumerate() {
        acc += f64::from(x * inv);
        if acc > target {
            return j;
        }
    }
    last_positive(e, inv)
}

/// The last index with `e_j * inv > 0` (0 if none).
fn last_positive(e: &[f32], inv: f32) -> usize {
    e.iter().rposition(|&x| x * inv > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_std() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x >= -87.0 {
            let got = f64::from(exp_nonpositive(x));
            let want = f64::from(x).exp();
            worst = worst.max((got - want).abs() / want);
            x -= 0.001_37;
        }
        println!("exp_nonpositive worst relative error {worst:.3e} (tolerance 2.5e-7)");
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-87.01), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn inverse_cdf_picks_the_interval_of_u() {
        // p = [0.25, 0, 0.5, 0.25] spread over blocks of DRAW_BLOCK.
        let mut e = vec![0.0f32; 3 * DRAW_BLOCK + 5];
        let idx = [0, DRAW_BLOCK + 3, 2 * DRAW_BLOCK, 3 * DRAW_BLOCK + 4];
        for (&i, p) in idx.iter().zip([0.25, 0.0, 0.5, 0.25]) {
            e[i] = p;
        }
        let mut blocks = vec![0.0; e.len().div_ceil(DRAW_BLOCK)];
        let cases = [
            (0.0, 0),
            (0.2499, 0),
            (0.25, 2 * DRAW_BLOCK),
            (0.7499, 2 * DRAW_BLOCK),
        ];
        for (u, want) in cases
            .into_iter()
            .chain([(0.75, 3 * DRAW_BLOCK + 4), (1.0, 3 * DRAW_BLOCK + 4)])
        {
            assert_eq!(inverse_cdf(&e, 1.0, u, &mut blocks), want, "u = {u}");
        }
    }

    #[test]
    fn softmax_draw_rejects_bad_logits() {
        let mut scratch = Scratch::new(4);
        for bad in [
            [0.0, f32::NAN, 1.0, 2.0],
            [f32::INFINITY, 0.0, 0.0, 0.0],
            [f32::NEG_INFINITY; 4],
        ] {
            assert_eq!(
                draw_plain(&bad, DrawRule::Sample, 0.5, &mut scratch),
                None,
                "{bad:?}"
            );
        }
        let ok = [f32::NEG_INFINITY, 0.0, 0.0, f32::NEG_INFINITY];
        let d = draw_plain(&ok, DrawRule::Sample, 0.9, &mut scratch).unwrap();
        assert_eq!((d.id, d.prob), (2, 0.5));
        let g = draw_plain(&ok, DrawRule::Greedy, 0.9, &mut scratch).unwrap();
        assert_eq!((g.id, g.prob), (1, 0.5));
    }

    #[test]
    fn gumbel_matches_upstream_clamps() {
        assert!((gumbel(0.0) - -(46.0517f32).ln()).abs() < 1e-6);
        assert!((gumbel(0.5) - 0.366_512_9).abs() < 1e-6);
        assert!(gumbel(1.0 - 2f32.powi(-24)) > 16.0);
    }
}
