//! One f32 vector interface over the two x86 widths, so that element-wise maths (exp, GELU,
//! SiLU, softmax) and the Winograd transforms are written once: [`F32s`] for `__m256` (AVX2 +
//! FMA, 8 lanes) and `__m512` (AVX-512F, 16 lanes).
//!
//! Everything generic here is `#[inline(always)]`: it becomes the width's instructions inside a
//! caller compiled with that width's `#[target_feature]` (the entry points below, or the
//! micro-kernels' epilogues). [`width`] says which width this CPU's level runs.

use std::arch::x86_64::*;

use super::isa::Isa;

/// The vector width the element-wise kernels use on this CPU, `None` below AVX2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Width {
    /// `__m256`, AVX2 + FMA.
    W8,
    /// `__m512`, AVX-512F.
    W16,
}

impl Width {
    /// f32 values per vector.
    pub fn lanes(self) -> usize {
        match self {
            Width::W8 => 8,
            Width::W16 => 16,
        }
    }
}

/// The width of this CPU's level (`Isa::detect`).
pub fn width() -> Option<Width> {
    match Isa::detect() {
        Isa::Portable => None,
        Isa::Avx2 => Some(Width::W8),
        _ => Some(Width::W16),
    }
}

/// `fn $name(width, args) -> Option<R>`: runs `$generic::<__m256>` or `::<__m512>`, each compiled
/// inside a `#[target_feature]` function of its width, or returns `None` where `width` is `None`
/// or more than this CPU has ([`width`]). With `unsafe fn`, the function keeps `$generic`'s
/// safety contract on its arguments.
macro_rules! per_width {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($a:ident: $t:ty),* $(,)?) -> $r:ty = $g:ident) => {
        $(#[$m])*
        $vis unsafe fn $name(width: Option<$crate::cpu::simd::Width>, $($a: $t),*) -> Option<$r> {
            $crate::cpu::simd::per_width!(@run width, $g, $($a: $t),* => $r)
        }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) -> $r:ty = $g:ident) => {
        $(#[$m])*
        $vis fn $name(width: Option<$crate::cpu::simd::Width>, $($a: $t),*) -> Option<$r> {
            $crate::cpu::simd::per_width!(@run width, $g, $($a: $t),* => $r)
        }
    };
    (@run $width:ident, $g:ident, $($a:ident: $t:ty),* => $r:ty) => {{
        #[target_feature(enable = "avx2,fma")]
        unsafe fn w8($($a: $t),*) -> $r {
            $g::<std::arch::x86_64::__m256>($($a),*)
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn w16($($a: $t),*) -> $r {
            $g::<std::arch::x86_64::__m512>($($a),*)
        }
        // SAFETY: a width runs only where this CPU has its instructions (`simd::width`); the
        // arguments are as `$g` requires (the caller's contract).
        match $width.filter(|&w| Some(w) <= $crate::cpu::simd::width())? {
            $crate::cpu::simd::Width::W8 => Some(unsafe { w8($($a),*) }),
            $crate::cpu::simd::Width::W16 => Some(unsafe { w16($($a),*) }),
        }
    }};
}
pub(crate) use per_width;

/// f32 lanes of one register.
///
/// # Safety
/// Every method needs the width's instructions (called inside a function compiled with them);
/// the pointer methods read or write `LANES` values (`n` for the `_part` ones) at `p`.
#[allow(clippy::missing_safety_doc)]
pub trait F32s: Copy {
    const LANES: usize;
    /// Bounds of [`exp`]'s argument: below, `e^x` is 0 (or the smallest normal); above, +inf
    /// (or the largest finite), as the width's [`F32s::scale`] allows.
    const EXP_RANGE: (f32, f32);
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// The first `n < LANES` values at `p`, `fill` in the other lanes.
    unsafe fn load_part(p: *const f32, n: usize, fill: f32) -> Self;
    /// Stores the first `n < LANES` lanes.
    unsafe fn store_part(self, p: *mut f32, n: usize);
    /// The first `n` lanes, zeros after.
    unsafe fn keep(self, n: usize) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    unsafe fn min(self, o: Self) -> Self;
    /// `self * b + c`
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    /// `c - self * b`
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self;
    /// `self * b - c`
    unsafe fn fmsub(self, b: Self, c: Self) -> Self;
    /// To the nearest integer, ties to even.
    unsafe fn round(self) -> Self;
    /// `self * 2^n` for integral `n` within [`F32s::EXP_RANGE`] times log2(e).
    unsafe fn scale(self, n: Self) -> Self;
    unsafe fn reduce_max(self) -> f32;
    /// The lanes added up in f64.
    unsafe fn sum_f64(self) -> f64 {
        let mut lanes = [0f32; 16];
        self.store(lanes.as_mut_ptr());
        lanes[..Self::LANES].iter().map(|&v| v as f64).sum()
    }
}

/// Lane masks for the first `n` (0..=8) lanes.
#[inline(always)]
unsafe fn first_lanes(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
}

/// The methods of [`F32s`] that are one intrinsic of the width: `name(args) => intrinsic`.
macro_rules! one_intrinsic {
    ($($name:ident($($arg:ident),*) => $f:ident;)*) => {$(
        #[inline(always)]
        unsafe fn $name(self, $($arg: Self),*) -> Self {
            $f(self, $($arg),*)
        }
    )*};
}

impl F32s for __m256 {
    const LANES: usize = 8;
    // 2^n is built in the exponent bits: n must stay a normal exponent.
    const EXP_RANGE: (f32, f32) = (-87.0, 88.0);
    one_intrinsic! {
        add(o) => _mm256_add_ps;
        sub(o) => _mm256_sub_ps;
        mul(o) => _mm256_mul_ps;
        div(o) => _mm256_div_ps;
        max(o) => _mm256_max_ps;
        min(o) => _mm256_min_ps;
        fmadd(b, c) => _mm256_fmadd_ps;
        fnmadd(b, c) => _mm256_fnmadd_ps;
        fmsub(b, c) => _mm256_fmsub_ps;
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize, fill: f32) -> Self {
        let m = first_lanes(n);
        _mm256_blendv_ps(
            _mm256_set1_ps(fill),
            _mm256_maskload_ps(p, m),
            _mm256_castsi256_ps(m),
        )
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize) {
        _mm256_maskstore_ps(p, first_lanes(n), self)
    }
    #[inline(always)]
    unsafe fn keep(self, n: usize) -> Self {
        _mm256_and_ps(self, _mm256_castsi256_ps(first_lanes(n)))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self)
    }
    #[inline(always)]
    unsafe fn scale(self, n: Self) -> Self {
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(self, _mm256_castsi256_ps(bits))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(self), _mm256_extractf128_ps(self, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)))
    }
}

impl F32s for __m512 {
    const LANES: usize = 16;
    // `vscalefps` overflows to +inf and underflows through the subnormals to 0.
    const EXP_RANGE: (f32, f32) = (-104.0, 89.0);
    one_intrinsic! {
        add(o) => _mm512_add_ps;
        sub(o) => _mm512_sub_ps;
        mul(o) => _mm512_mul_ps;
        div(o) => _mm512_div_ps;
        max(o) => _mm512_max_ps;
        min(o) => _mm512_min_ps;
        fmadd(b, c) => _mm512_fmadd_ps;
        fnmadd(b, c) => _mm512_fnmadd_ps;
        fmsub(b, c) => _mm512_fmsub_ps;
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize, fill: f32) -> Self {
        _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask16(n), p)
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize) {
        _mm512_mask_storeu_ps(p, mask16(n), self)
    }
    #[inline(always)]
    unsafe fn keep(self, n: usize) -> Self {
        _mm512_maskz_mov_ps(mask16(n), self)
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self)
    }
    #[inline(always)]
    unsafe fn scale(self, n: Self) -> Self {
        _mm512_scalef_ps(self, n)
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        _mm512_reduce_max_ps(self)
    }
}

/// The first `n` (0..=16) lanes.
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as u16
}

/// `e^x`, about 1 ulp: Cody-Waite reduction by ln 2, then the degree-6 Taylor polynomial on
/// `|r| <= ln2/2` (relative error < 2e-8), scaled by `2^n`.
///
/// # Safety
/// The width's instructions present (called inside a function compiled with them).
#[inline(always)]
pub unsafe fn exp<V: F32s>(x: V) -> V {
    let (lo, hi) = V::EXP_RANGE;
    let x = x.min(V::splat(hi)).max(V::splat(lo));
    let n = x.mul(V::splat(std::f32::consts::LOG2_E)).round();
    let r = n.fnmadd(V::splat(0.693_145_75), x);
    let r = n.fnmadd(V::splat(1.428_606_8e-6), r);
    let mut p = V::splat(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.fmadd(r, V::splat(c));
    }
    p.scale(n)
}

/// GELU, tanh approximation, as `x · sigmoid(2u)` with `u = √(2/π)(x + 0.044715 x³)`
/// (`0.5 (1 + tanh u) = sigmoid(2u)`).
///
/// # Safety
/// The width's instructions present (called inside a function compiled with them).
#[inline(always)]
pub unsafe fn gelu_tanh<V: F32s>(x: V) -> V {
    let x2 = x.mul(x);
    let inner = x2.mul(V::splat(0.044715)).fmadd(x, x);
    let e = exp(inner.mul(V::splat(-2.0 * 0.797_884_6)));
    x.div(V::splat(1.0).add(e))
}

/// `x · sigmoid(x)`.
///
/// # Safety
/// The width's instructions present (called inside a function compiled with them).
#[inline(always)]
pub unsafe fn silu<V: F32s>(x: V) -> V {
    let e = exp(V::splat(0.0).sub(x));
    x.div(V::splat(1.0).add(e))
}

/// Element-wise operations applied in place by [`map_`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    GeluTanh,
    Silu,
}

#[inline(always)]
unsafe fn apply<V: F32s>(op: Op, v: V) -> V {
    match op {
        Op::GeluTanh => gelu_tanh(v),
        Op::Silu => silu(v),
    }
}

per_width! {
    /// Applies `op` to every element of `x` in place, with `width`'s instructions (`None`,
    /// nothing done, where this CPU lacks them).
    pub fn map_(x: &mut [f32], op: Op) -> () = map_lanes
}

#[inline(always)]
unsafe fn map_lanes<V: F32s>(x: &mut [f32], op: Op) {
    let (n, p) = (x.len(), x.as_mut_ptr());
    let full = n - n % V::LANES;
    for i in (0..full).step_by(V::LANES) {
        apply(op, V::load(p.add(i))).store(p.add(i));
    }
    if full < n {
        apply(op, V::load_part(p.add(full), n - full, 0.0)).store_part(p.add(full), n - full);
    }
}

per_width! {
    /// `softmax(scale * row)` in place with `width`'s instructions (`None`, nothing done, where
    /// this CPU lacks them): vector max, `exp`, a sum in f32 lanes (added up in f64), one
    /// scaling pass.
    pub fn softmax_(row: &mut [f32], scale: f32) -> () = softmax_lanes
}

#[inline(always)]
unsafe fn softmax_lanes<V: F32s>(row: &mut [f32], scale: f32) {
    let (n, p) = (row.len(), row.as_mut_ptr());
    let full = n - n % V::LANES;
    let tail = n - full;
    let mut mx = V::splat(f32::NEG_INFINITY);
    for i in (0..full).step_by(V::LANES) {
        mx = mx.max(V::load(p.add(i)));
    }
    if tail > 0 {
        mx = mx.max(V::load_part(p.add(full), tail, f32::NEG_INFINITY));
    }
    let max = V::splat(mx.reduce_max() * scale);
    let sc = V::splat(scale);
    let mut sum = V::splat(0.0);
    for i in (0..full).step_by(V::LANES) {
        let e = exp(V::load(p.add(i)).fmsub(sc, max));
        e.store(p.add(i));
        sum = sum.add(e);
    }
    if tail > 0 {
        let e = exp(V::load_part(p.add(full), tail, 0.0).fmsub(sc, max));
        e.store_part(p.add(full), tail);
        sum = sum.add(e.keep(tail));
    }
    let inv = V::splat((1.0 / sum.sum_f64()) as f32);
    for i in (0..full).step_by(V::LANES) {
        V::load(p.add(i)).mul(inv).store(p.add(i));
    }
    if tail > 0 {
        V::load_part(p.add(full), tail, 0.0)
            .mul(inv)
            .store_part(p.add(full), tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each width this CPU has, against the scalar definitions: exp over its whole range, SiLU
    /// and GELU, softmax rows of every tail length.
    #[test]
    fn both_widths_match_scalar_maths() {
        let widths: Vec<Width> = match width() {
            None => {
                println!("skipped: this CPU has no AVX2 + FMA");
                return;
            }
            Some(Width::W8) => {
                println!("AVX-512 width skipped: this CPU has no AVX-512F");
                vec![Width::W8]
            }
            Some(Width::W16) => vec![Width::W8, Width::W16],
        };
        let xs: Vec<f32> = (-1200..1200).map(|i| i as f32 * 0.075).collect();
        for w in widths {
            for op in [Op::Silu, Op::GeluTanh] {
                let mut got = xs.clone();
                assert_eq!(map_(Some(w), &mut got, op), Some(()));
                for (&x, &g) in xs.iter().zip(&got) {
                    let u = x as f64;
                    let want = match op {
                        Op::Silu => u / (1.0 + (-u).exp()),
                        Op::GeluTanh => {
                            0.5 * u * (1.0 + (0.797_884_560_8 * (u + 0.044715 * u * u * u)).tanh())
                        }
                    };
                    let err = (g as f64 - want).abs() / (1.0 + want.abs());
                    assert!(err <= 1e-6, "{w:?}: op at {x}: {g} vs {want}");
                }
            }
            for n in [1usize, 5, 8, 15, 16, 17, 77, 333] {
                let row: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
                let mut got = row.clone();
                assert_eq!(softmax_(Some(w), &mut got, 0.3), Some(()));
                let max = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64 * 0.3));
                let e: Vec<f64> = row.iter().map(|&v| (v as f64 * 0.3 - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for (g, e) in got.iter().zip(&e) {
                    let want = e / total;
                    assert!(
                        (*g as f64 - want).abs() <= 1e-6 * want.max(1e-3),
                        "{w:?}: softmax of {n}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
