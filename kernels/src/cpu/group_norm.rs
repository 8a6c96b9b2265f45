//! GroupNorm over channel-last images `[B, P, C]` (`P` pixels), optionally fused with SiLU.
//!
//! Design. Channel `c` belongs to group `c / (C / G)`. The statistics of one (image, group)
//! pair are spread over every pixel, so the pass over the data is by bands of pixels (rayon),
//! each band adding up per-group partial sums in `f64`; the bands' sums are then added. Mean and
//! variance take two passes (sum, then the sum of squared deviations), which keeps the variance
//! exact to f64 rounding however large the mean. A third pass normalises, applies the affine
//! weight and bias and, if asked, SiLU (every GroupNorm of the VQ-VAE's ResNet blocks is followed
//! by one). Three reads and one write of the tensor: bandwidth-bound.

use rayon::prelude::*;

/// Pixels per band of the reduction passes.
const BAND_PIXELS: usize = 1024;

/// Sum of `f(x, group)` per group over `x [P, C]`, in f64, bands in parallel.
fn group_sums(
    x: &[f32],
    c: usize,
    groups: usize,
    f: impl Fn(f32, usize) -> f64 + Sync,
) -> Vec<f64> {
    let per_group = c / groups;
    x.par_chunks(BAND_PIXELS * c)
        .map(|band| {
            let mut acc = vec![0.0f64; groups];
            for px in band.chunks_exact(c) {
                for (g, vals) in px.chunks_exact(per_group).enumerate() {
                    acc[g] += vals.iter().map(|&v| f(v, g)).sum::<f64>();
                }
            }
            acc
        })
        .reduce(
            || vec![0.0f64; groups],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// `nn.GroupNorm(groups, C, eps)` with affine `weight, bias [C]`, in place on
/// `x [batch, P, C]`, then SiLU when `silu` is set.
pub fn group_norm_(
    x: &mut [f32],
    batch: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) {
    let (a, b) = channel_affine(x, batch, groups, weight, bias, eps);
    apply_channel_affine_(x, batch, &a, &b, silu);
}

/// `x [batch, P, C] = x * a + b` per image and channel (`a, b [batch, C]`, as
/// [`channel_affine`] gives them), then SiLU when `silu` is set.
pub fn apply_channel_affine_(x: &mut [f32], batch: usize, a: &[f32], b: &[f32], silu: bool) {
    let c = a.len() / batch.max(1);
    assert!(
        batch > 0
            && b.len() == a.len()
            && a.len() == batch * c
            && x.len() % (batch * c).max(1) == 0,
        "group_norm: the channel map is not [B, C] for x [B, P, C]"
    );
    for ((xb, a), b) in x
        .chunks_exact_mut(x.len() / batch)
        .zip(a.chunks_exact(c))
        .zip(b.chunks_exact(c))
    {
        xb.par_chunks_mut(BAND_PIXELS * c).for_each(|band| {
            for px in band.chunks_exact_mut(c) {
                for ((v, &ai), &bi) in px.iter_mut().zip(a).zip(b) {
                    *v = *v * ai + bi;
                }
            }
            if silu {
                super::act::silu_(band);
            }
        });
    }
}

/// The statistics of `nn.GroupNorm(groups, C, eps)` with affine `weight, bias [C]` on
/// `x [batch, P, C]`, as the per-channel map it applies: `y = x * a + b`, `a, b [batch, C]`
/// (`a = weight / std`, `b = bias - mean * a` of the channel's group in that image).
pub fn channel_affine(
    x: &[f32],
    batch: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let c = weight.len();
    assert!(
        groups > 0 && c % groups == 0 && bias.len() == c,
        "group_norm: {c} channels do not split into {groups} groups"
    );
    assert!(
        batch > 0 && x.len() % (batch * c) == 0,
        "group_norm: x is not [B, P, {c}]"
    );
    let image = x.len() / batch;
    let count = (image / groups) as f64;
    let per_group = c / groups;
    let (mut a, mut b) = (vec![0.0f32; batch * c], vec![0.0f32; batch * c]);
    for ((xb, a), b) in x
        .chunks_exact(image)
        .zip(a.chunks_exact_mut(c))
        .zip(b.chunks_exact_mut(c))
    {
        let mean: Vec<f64> = group_sums(xb, c, groups, |v, _| v as f64)
            .into_iter()
            .map(|s| s / count)
            .collect();
        let var = group_sums(xb, c, groups, |v, g| (v as f64 - mean[g]).powi(2));
        for ch in 0..c {
            let g = ch / per_group;
            let inv = 1.0 / (var[g] / count + eps as f64).sqrt();
            a[ch] = (weight[ch] as f64 * inv) as f32;
            b[ch] = (bias[ch] as f64 - mean[g] * weight[ch] as f64 * inv) as f32;
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_definition_with_awkward_sizes() {
        // [B=2, P=1300 (more than one band), C=6], 3 groups of 2 channels, large mean.
        let (b, p, c, g) = (2, 1300, 6, 3);
        let x: Vec<f32> = (0..b * p * c)
            .map(|i| 100.0 + ((i as u32).wrapping_mul(2654435761) >> 20) as f32 / 512.0)
            .collect();
        let weight: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
        let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01 - 0.02).collect();
        for silu in [false, true] {
            let mut got = x.clone();
            group_norm_(&mut got, b, g, &weight, &bias, 1e-6, silu);
            let mut worst = 0.0f64;
            for bi in 0..b {
                for gi in 0..g {
                    let vals: Vec<f64> = (0..p)
                        .flat_map(|pi| (0..c / g).map(move |k| (pi, gi * (c / g) + k)))
                        .map(|(pi, ch)| x[(bi * p + pi) * c + ch] as f64)
                        .collect();
                    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                    let var =
                        vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                    for pi in 0..p {
                        for k in 0..c / g {
                            let ch = gi * (c / g) + k;
                            let at = (bi * p + pi) * c + ch;
                            let mut want = (x[at] as f64 - mean) / (var + 1e-6).sqrt()
                                * weight[ch] as f64
                                + bias[ch] as f64;
                            if silu {
                                want /= 1.0 + (-want).exp();
                            }
                            worst = worst.max((got[at] as f64 - want).abs());
                        }
                    }
                }
            }
            assert!(worst < 1e-4, "silu={silu}: worst abs error {worst}");
        }
    }
}
