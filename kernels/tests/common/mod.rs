//! Shared helpers of the emulated kernel tests: seeded inputs, bf16 rounding as the device
//! does it, and a comparison that prints the worst element and the fraction of tolerance used.
#![allow(dead_code)]

/// f32 -> bf16 bits, round to nearest even, NaN to 0x7FFF (as `cvt.rn.bf16.f32`).
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7FFF_FFFF > 0x7F80_0000 {
        return 0x7FFF;
    }
    ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) as u16
}

pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

pub fn to_bf16(xs: &[f32]) -> Vec<u16> {
    xs.iter().map(|&x| bf16_bits(x)).collect()
}

pub fn from_bf16(xs: &[u16]) -> Vec<f32> {
    xs.iter().map(|&b| bf16_value(b)).collect()
}

/// The values a bf16 tensor holds: `xs` rounded to bf16 and back.
pub fn round_bf16(xs: &[f32]) -> Vec<f32> {
    xs.iter().map(|&x| bf16_value(bf16_bits(x))).collect()
}

/// The address of an input the kernel only reads.
pub fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

/// The address of an output the kernel writes.
pub fn addr_mut<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// SplitMix64: seeded, reproducible test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (2.0 * self.unit() - 1.0) * scale).collect()
    }
}

/// Asserts `|got - want| <= atol + rtol * |want|` everywhere; prints the worst element and the
/// fraction of its tolerance it used.
pub fn check(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (mut worst, mut at, mut frac) = (0.0f32, 0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let f = if err.is_nan() {
            f32::INFINITY
        } else {
            err / (atol + rtol * w.abs())
        };
        if f > frac || (i == 0 && f.is_nan()) {
            (worst, at, frac) = (err, i, f);
        }
    }
    println!(
        "{what}: worst |err| {worst:.3e} at {at} (got {}, want {}), {:.1}% of tolerance (atol {atol:e}, rtol {rtol:e})",
        got.get(at).copied().unwrap_or(0.0),
        want.get(at).copied().unwrap_or(0.0),
        100.0 * frac
    );
    assert!(
        frac <= 1.0,
        "{what}: element {at}: got {} want {}",
        got[at],
        want[at]
    );
}
