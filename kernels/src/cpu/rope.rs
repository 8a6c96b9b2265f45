//! Rotary position embeddings over several axes (Flux style, interleaved pairs).

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
        let (c, sn) = (&cos[t * dh..(t + 1) * dh], &sin[t * dh..(t + 1) * dh]);
        for head in row.chunks_exact_mut(dh) {
            for p in (0..dh).step_by(2) {
                let (x0, x1) = (head[p], head[p + 1]);
                head[p] = x0 * c[p] - x1 * sn[p];
                head[p + 1] = x1 * c[p + 1] + x0 * sn[p + 1];
            }
        }
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
}
