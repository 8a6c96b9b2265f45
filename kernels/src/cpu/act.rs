//! Element-wise activations, in place.

/// SiLU: `x * sigmoid(x)`.
pub fn silu_(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v /= 1.0 + (-*v).exp();
    }
}

/// GELU, tanh approximation (`nn.GELU(approximate="tanh")`).
pub fn gelu_tanh_(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (SQRT_2_OVER_PI * (u + 0.044715 * u * u * u)).tanh());
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
    }
}
