//! bf16 rounding, the one definition every CPU kernel uses (on the `half` crate): nearest even,
//! NaN kept NaN (quiet), infinities kept.

/// `x` rounded to bf16, as its bit pattern.
pub fn bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 a bf16 bit pattern stands for (exact).
pub fn value(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
}

/// `x` rounded to the nearest bf16, as f32.
pub fn round(x: f32) -> f32 {
    value(bits(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to the even upper one.
        assert_eq!(bits(1.0 + 3.0 / 256.0), 0x3f82);
        // Just above the first tie rounds up.
        assert_eq!(bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(round(f32::NAN).is_nan());
        // A NaN whose payload sits only in the dropped bits stays NaN (not infinity).
        assert!(round(f32::from_bits(0x7f80_0001)).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(-0.0).to_bits(), (-0.0f32).to_bits());
        // The largest finite values round up to infinity, as in PyTorch.
        assert_eq!(round(f32::MAX), f32::INFINITY);
    }
}
