//! Element-wise activations, in place.

#[cfg(target_arch = "x86_64")]
use super::simd::{map_, width, Op};

/// SiLU: `x * sigmoid(x)`.
pub fn silu_(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if map_(width(), x, Op::Silu).is_some() {
        return;
    }
    for v in x.iter_mut() {
        *v /= 1.0 + (-*v).exp();
    }
}

/// GELU, tanh approximation (`nn.GELU(approximate="tanh")`).
pub fn gelu_tanh_(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    #[cfg(target_arch = "x86_64")]
    if map_(width(), x, Op::GeluTanh).is_some() {
        return;
    }
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (SQRT_2_OVER_PI * (u + 0.044715 * u * u * u)).tanh());
    }
}

/// GELU with the exact erf (`nn.GELU()`, transformers' `gelu`): `0.5 x (1 + erf(x / sqrt 2))`,
/// in f32 vectors ([`super::simd::gelu_erf`], relative error under 1e-6), or with the erf
/// evaluated in `f64` where this CPU has no vector width.
pub fn gelu_erf_(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if map_(width(), x, Op::GeluErf).is_some() {
        return;
    }
    for v in x.iter_mut() {
        let u = *v as f64;
        *v = (0.5 * u * (1.0 + libm::erf(u * std::f64::consts::FRAC_1_SQRT_2))) as f32;
    }
}

/// CLIP's `quick_gelu`: `x * sigmoid(1.702 x)`.
pub fn quick_gelu_(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v /= 1.0 + (-1.702 * *v).exp();
    }
}

/// ReLU: `max(x, 0)`.
pub fn relu_(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.max(0.0);
    }
}

/// Mish: `x * tanh(softplus(x))`, softplus with PyTorch's threshold of 20.
pub fn mish_(x: &mut [f32]) {
    for v in x.iter_mut() {
        let u = *v;
        let sp = if u > 20.0 { u } else { u.exp().ln_1p() };
        *v = u * sp.tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let mut x = vec![0.0, 1.0, -1.0, 3.0];
        silu_(&mut x);
        let want = [0.0, 0.731_058_6, -0.268_941_4, 2.857_722_5];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "silu {g} vs {w}");
        }
        let mut x = vec![0.0, 1.0, -1.0, 3.0];
        gelu_tanh_(&mut x);
        // Values of torch.nn.functional.gelu(x, approximate="tanh").
        let want = [0.0, 0.841_192, -0.158_808, 2.996_363_7];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "gelu {g} vs {w}");
        }
        let mut x = vec![0.0, 1.0, -1.0, 3.0, -4.0];
        gelu_erf_(&mut x);
        // Values of torch.nn.functional.gelu(x).
        let want = [0.0, 0.841_344_7, -0.158_655_3, 2.995_949_7, -1.264_8e-4];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "gelu erf {g} vs {w}");
        }
        let mut x = vec![0.0, 1.0, -1.0];
        quick_gelu_(&mut x);
        let want = [0.0, 0.845_795_8, -0.154_204_2];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "quick gelu {g} vs {w}");
        }
    }
}
