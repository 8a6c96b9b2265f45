//! Rotary position embeddings over several axes (Flux style, interleaved pairs).

use rayon::prelude::*;

use super::norm::rms_norm_row_;

/// Cos and sin tables `[S, Dh]` for positions `ids [S, A]` and axis widths `axes [A]` summing to
/// `Dh`. For axis `a` of width `d`, pair `k` turns by `id_a * 10000^(-2k/d)`; each value is
/// written twice (for both members of the pair) and the axes are concatenated. Angles are
/// computed in `f64`, as the reference does on the CPU, then rounded to `f32`.
pub fn rope_tables(ids: &[[f64; 3]], axes: &[usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let dh: usize = axes.iter().sum();
    let mut cos = Vec::with_capacity(ids.len() * dh);
    let mut sin = Vec::with_capacity(ids.len() * dh);
    for id in ids {
        for (a, &d) in axes.iter().enumerate() {
            for k in 0..d / 2 {
                let freq = 1.0 / 10000f64.powf((2 * k) as f64 / d as f64);
                let angle = id[a] * freq;
                let (s, c) = angle.sin_cos();
                cos.extend([c as f32; 2]);
                sin.extend([s as f32; 2]);
            }
        }
    }
    (cos, sin)
}

/// Rotates `x [S, H, Dh]` in place: each pair `(x0, x1)` becomes
/// `(x0 cos - x1 sin, x1 cos + x0 sin)` with the tables of `rope_tables` (`[S, Dh]`).
pub fn apply_rope_(x: &mut [f32], cos: &[f32], sin: &[f32], heads: usize, dh: usize) {
    let s = cos.len() / dh;
    assert_eq!(x.len(), s * heads * dh, "apply_rope: x is not [S, H, Dh]");
    for (t, row) in x.chunks_exact_mut(heads * dh).enumerate() {
        let tables = (&cos[t * dh..(t + 1) * dh], &sin[t * dh..(t + 1) * dh]);
        row.chunks_exact_mut(dh)
            .for_each(|head| rotate_(head, tables));
    }
}

/// [`super::norm::rms_norm_`] of every head of `x [S, H, Dh]` with `weight [Dh]`, then
/// [`apply_rope_`]: the same arithmetic (the same bits) in one parallel pass over the tokens.
pub fn rms_norm_rope_(x: &mut [f32], weight: &[f32], eps: f32, cos: &[f32], sin: &[f32]) {
    let dh = weight.len();
    let s = cos.len() / dh.max(1);
    assert!(
        dh > 0 && sin.len() == cos.len() && s > 0 && x.len().is_multiple_of(s * dh),
        "rms_norm_rope: x is not [S, H, {dh}] for tables of {s} positions"
    );
    let width = x.len() / s; // H * Dh
    #[cfg(target_arch = "x86_64")]
    let lanes = super::simd::width();
    x.par_chunks_mut(width)
        .with_min_len((8192 / width).max(1))
        .enumerate()
        .for_each(|(t, row)| {
            let tables = (&cos[t * dh..(t + 1) * dh], &sin[t * dh..(t + 1) * dh]);
            // SAFETY: `lanes` is this CPU's width (`None` runs nothing).
            #[cfg(target_arch = "x86_64")]
            if unsafe { norm_rope_wide(lanes, row, weight, eps, tables) }.is_some() {
                return;
            }
            norm_rope(row, weight, eps, tables);
        });
}

#[cfg(target_arch = "x86_64")]
super::simd::per_width! {
    /// [`norm_rope`] compiled for the vector width (the compiler vectorises the same scalar
    /// arithmetic, so the bits do not change).
    unsafe fn norm_rope_wide(row: &mut [f32], weight: &[f32], eps: f32, tables: (&[f32], &[f32])) -> () = norm_rope_lanes
}

// `per_width!` names the width as a type; the compiler picks the instructions from the
// target features of the caller alone.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
unsafe fn norm_rope_lanes<V>(row: &mut [f32], weight: &[f32], eps: f32, tables: (&[f32], &[f32])) {
    norm_rope(row, weight, eps, tables)
}

/// Every head of one token's row normed, then rotated.
#[inline(always)]
fn norm_rope(row: &mut [f32], weight: &[f32], eps: f32, tables: (&[f32], &[f32])) {
    for head in row.chunks_exact_mut(weight.len()) {
        rms_norm_row_(head, weight, eps);
        rotate_(head, tables);
    }
}

/// One head's pairs turned by the angles of one position's `(cos, sin)` rows.
#[inline(always)]
fn rotate_(head: &mut [f32], (c, sn): (&[f32], &[f32])) {
    for p in (0..head.len()).step_by(2) {
        let (x0, x1) = (head[p], head[p + 1]);
        head[p] = x0 * c[p] - x1 * sn[p];
        head[p + 1] = x1 * c[p + 1] + x0 * sn[p + 1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_rotation_keeps_norm() {
        let axes = [2, 4, 4];
        let (cos, sin) = rope_tables(&[[0.0; 3], [0.0, 3.0, 5.0]], &axes);
        let mut x: Vec<f32> = (0..20).map(|i| i as f32 * 0.1 - 1.0).collect();
        let before = x.clone();
        apply_rope_(&mut x, &cos, &sin, 1, 10);
        assert_eq!(&x[..10], &before[..10]);
        for p in (10..20).step_by(2) {
            let n0 = before[p].hypot(before[p + 1]);
            let n1 = x[p].hypot(x[p + 1]);
            assert!((n0 - n1).abs() < 1e-6);
        }
        // Axis 1 (width 4), pair 0 of row 1: angle 3 * 10000^0 = 3 rad.
        let (x0, x1) = (before[12], before[13]);
        assert!((x[12] - (x0 * 3f32.cos() - x1 * 3f32.sin())).abs() < 1e-6);
    }

    #[test]
    fn fused_norm_and_rotation_match_the_two_passes_bit_for_bit() {
        let axes = [4, 6, 6];
        let ids: Vec<[f64; 3]> = (0..37)
            .map(|t| [0.0, (t / 7) as f64, (t % 7) as f64])
            .collect();
        let (cos, sin) = rope_tables(&ids, &axes);
        let (heads, dh) = (3, 16);
        let weight: Vec<f32> = (0..dh).map(|i| 0.5 + i as f32 * 0.07).collect();
        let x: Vec<f32> = (0..ids.len() * heads * dh)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013)
            .collect();
        let mut want = x.clone();
        crate::cpu::norm::rms_norm_(&mut want, &weight, 1e-6);
        apply_rope_(&mut want, &cos, &sin, heads, dh);
        let mut got = x.clone();
        rms_norm_rope_(&mut got, &weight, 1e-6, &cos, &sin);
        assert_ne!(got, x, "the pass changed nothing");
        assert!(got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()));
    }
}
