//! Normalisations over the last dimension of row-major `[M, D]` data.
//!
//! Sums are accumulated in `f64`: the rows are short (at most a few thousand) and this keeps the
//! CPU backend a tight reference for the device kernels.

use rayon::prelude::*;

/// Rows per parallel task: enough work to pay for the hand-off.
fn rows_per_task(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

/// `Σ f(v)` over `row` in `f64`, in eight interleaved partial sums (which vectorise).
#[inline(always)]
fn sum_f64(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f(c[i] as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// RMSNorm in place: `x = x * rsqrt(mean(x²) + eps) * weight`, per row of `x [M, D]`, `weight [D]`.
pub fn rms_norm_(x: &mut [f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    assert!(d > 0 && x.len() % d == 0, "rms_norm: x is not [M, {d}]");
    x.par_chunks_mut(d)
        .with_min_len(rows_per_task(d))
        .for_each(|row| rms_norm_row_(row, weight, eps));
}

/// [`rms_norm_`] of one row, `row.len() == weight.len()`.
#[inline(always)]
pub(crate) fn rms_norm_row_(row: &mut [f32], weight: &[f32], eps: f32) {
    let ms = sum_f64(row, |v| v * v) / row.len() as f64;
    let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
    for (v, &w) in row.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
}

/// `(mean, 1/sqrt(var + eps))` of one row, variance biased as in `nn.LayerNorm`.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = sum_f64(row, |v| v) / n;
    let var = sum_f64(row, |v| (v - mean) * (v - mean)) / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// LayerNorm without affine parameters, in place, per row of `x [M, D]`.
pub fn layer_norm_(x: &mut [f32], d: usize, eps: f32) {
    assert!(d > 0 && x.len() % d == 0, "layer_norm: x is not [M, {d}]");
    x.par_chunks_mut(d)
        .with_min_len(rows_per_task(d))
        .for_each(|row| {
            let (mean, inv) = moments(row, eps);
            for v in row.iter_mut() {
                *v = (*v - mean) * inv;
            }
        });
}

/// Adaptive-norm modulation: `out = LayerNorm(x) * (1 + scale) + shift` per row of `x [M, D]`,
/// with `shift`, `scale` `[D]` (one conditioning vector for all rows of one batch item).
pub fn layer_norm_modulate(x: &[f32], shift: &[f32], scale: &[f32], eps: f32, out: &mut [f32]) {
    let d = shift.len();
    assert!(
        d > 0 && x.len() % d == 0 && scale.len() == d,
        "layer_norm_modulate: x is not [M, {d}]"
    );
    assert_eq!(
        out.len(),
        x.len(),
        "layer_norm_modulate: out differs from x"
    );
    x.par_chunks(d)
        .zip(out.par_chunks_mut(d))
        .with_min_len(rows_per_task(d))
        .for_each(|(row, orow)| {
            let (mean, inv) = moments(row, eps);
            for i in 0..d {
                orow[i] = (row[i] - mean) * inv * (1.0 + scale[i]) + shift[i];
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0, -2.0, 2.0];
        rms_norm_(&mut x, &[1.0, 2.0], 1e-12);
        // Row [3,4]: rms = sqrt(12.5).
        let r = 12.5f32.sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 8.0 / r).abs() < 1e-6);
        assert_eq!(&x[2..4], &[0.0, 0.0]);
        assert!((x[4] + 1.0).abs() < 1e-6 && (x[5] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn modulate_is_layer_norm_then_affine() {
        let x = vec![1.0, 2.0, 3.0, 4.0];
        let mut plain = x.clone();
        layer_norm_(&mut plain, 4, 1e-6);
        let mean: f32 = plain.iter().sum::<f32>() / 4.0;
        let var: f32 = plain.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        let mut out = vec![0.0; 4];
        layer_norm_modulate(&x, &[0.5; 4], &[1.0, 0.0, -1.0, 2.0], 1e-6, &mut out);
        for i in 0..4 {
            let scale = [1.0, 0.0, -1.0, 2.0][i];
            assert!((out[i] - (plain[i] * (1.0 + scale) + 0.5)).abs() < 1e-6);
        }
    }
}
