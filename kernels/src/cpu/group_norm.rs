//! GroupNorm over channel-last images `[B, P, C]` (`P` pixels), optionally fused with SiLU.
//!
//! Design. Channel `c` belongs to group `c / (C / G)`. The statistics of one (image, group)
//! pair are spread over every pixel, so the pass over the data is by bands of pixels (rayon),
//! each band adding up per-channel sums (f32 lanes over runs of 64 pixels, then f64); the bands'
//! and a group's channels' sums are then added. Mean and variance take two passes (sum, then the
//! sum of squared deviations from the mean), which keeps the variance accurate however large the
//! mean. A third pass normalises, applies the affine
//! weight and bias and, if asked, SiLU (every GroupNorm of the VQ-VAE's ResNet blocks is followed
//! by one). Three reads and one write of the tensor: bandwidth-bound.

use rayon::prelude::*;

/// Pixels per band of the reduction passes.
const BAND_PIXELS: usize = 1024;

/// Pixels summed in f32 before their sums are added to the band's f64 totals.
const FLUSH_PIXELS: usize = 64;

/// Per channel of `x [P, C]`: the sum of the values, or with `centre [C]` of the squared
/// deviations from it. Bands in parallel; within a band, runs of [`FLUSH_PIXELS`] pixels add up
/// in f32 lanes over the channels (vectorised), each run's sums then go into f64.
fn channel_sums(x: &[f32], c: usize, centre: Option<&[f32]>) -> Vec<f64> {
    x.par_chunks(BAND_PIXELS * c)
        .map(|band| {
            let mut total = vec![0.0f64; c];
            let mut run = vec![0.0f32; c];
            for pixels in band.chunks(FLUSH_PIXELS * c) {
                run.fill(0.0);
                match centre {
                    None => {
                        for px in pixels.chunks_exact(c) {
                            run.iter_mut().zip(px).for_each(|(s, &v)| *s += v);
                        }
                    }
                    Some(m) => {
                        for px in pixels.chunks_exact(c) {
                            for ((s, &v), &m) in run.iter_mut().zip(px).zip(m) {
                                *s += (v - m) * (v - m);
                            }
                        }
                    }
                }
                total
                    .iter_mut()
                    .zip(&run)
                    .for_each(|(t, &s)| *t += s as f64);
            }
            total
        })
        .reduce(
            || vec![0.0f64; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Per group of `per_group` consecutive channels: the sum of `sums [C]`.
fn group_totals(sums: &[f64], per_group: usize) -> Vec<f64> {
    sums.chunks_exact(per_group)
        .map(|g| g.iter().sum())
        .collect()
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
        let mean: Vec<f64> = group_totals(&channel_sums(xb, c, None), per_group)
            .into_iter()
            .map(|s| s / count)
            .collect();
        let centre: Vec<f32> = (0..c).map(|ch| mean[ch / per_group] as f32).collect();
        let var = group_totals(&channel_sums(xb, c, Some(&centre)), per_group);
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
