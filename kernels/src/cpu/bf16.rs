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

/// `src` rounded to bf16 bits into `dst` (`vcvtne2ps2bf16` where the CPU has it).
pub fn round_into(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "bf16::round_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::detect() >= super::isa::Isa::Avx512Bf16 {
        // SAFETY: avx512f, avx512bw and avx512bf16 are present (Isa::detect checks them).
        unsafe { super::avx512::to_bf16(src, dst) };
        return;
    }
    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = bits(v));
}

/// Every value of `x` rounded to the nearest bf16, in place (AVX2 where the CPU has it).
pub fn round_(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::detect() >= super::isa::Isa::Avx2 {
        // SAFETY: avx2 is present (Isa::detect checks it for every level from avx2 up).
        unsafe { super::avx2::round_bf16_(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = round(*v));
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
