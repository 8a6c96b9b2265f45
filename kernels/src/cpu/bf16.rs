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

/// The values of `even` and `odd` rounded to bf16 and put side by side as pairs into `dst`: pair
/// `j` holds `even[j]` in its low half and `odd[j]` (zero without `odd`) in its high half, the
/// layout `vdpbf16ps` reads (`vcvtne2ps2bf16` and a shuffle where the CPU has them).
pub fn pairs_into(even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
    assert_eq!(even.len(), dst.len(), "bf16::pairs_into: lengths differ");
    assert!(
        odd.is_none_or(|o| o.len() == dst.len()),
        "bf16::pairs_into: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::detect() >= super::isa::Isa::Avx512Bf16 {
        // SAFETY: avx512f, avx512bw and avx512bf16 are present (Isa::detect checks them); the
        // lengths are checked above.
        unsafe { super::avx512::to_bf16_pairs(even, odd, dst) };
        return;
    }
    for (j, d) in dst.iter_mut().enumerate() {
        let high = odd.map_or(0, |o| bits(o[j]));
        // The even value first in memory: the low half.
        *d = bytemuck::cast([bits(even[j]), high]);
    }
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

    #[test]
    fn pairs_hold_the_rounded_values_side_by_side() {
        // Ties, NaN, infinities and signed zeros among ordinary values; every length up to past
        // two vectors, so the vector path's tails are checked too.
        let special = [
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::NAN,
            f32::INFINITY,
            -0.0,
            f32::MAX,
        ];
        let values = |seed: u32, n: usize| -> Vec<f32> {
            (0..n as u32)
                .map(|i| match (i * 7 + seed) % 9 {
                    s if (s as usize) < special.len() => special[s as usize],
                    _ => ((i.wrapping_mul(2654435761) ^ seed) >> 9) as f32 * 1e-4 - 300.0,
                })
                .collect()
        };
        for n in 0..40 {
            let (even, odd) = (values(1, n), values(2, n));
            for odd in [None, Some(&odd[..])] {
                let mut got = vec![0xdead_beef; n];
                pairs_into(&even, odd, &mut got);
                for (j, &g) in got.iter().enumerate() {
                    let high = odd.map_or(0, |o| bits(o[j]));
                    let [lo, hi]: [u16; 2] = bytemuck::cast(g);
                    assert_eq!((lo, hi), (bits(even[j]), high), "n {n} pair {j}");
                }
            }
        }
    }
}
