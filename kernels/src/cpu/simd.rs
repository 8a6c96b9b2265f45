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
    /// `a` in the lanes where `self < bound`, `b` in the others (and where either is NaN).
    unsafe fn select_lt(self, bound: Self, a: Self, b: Self) -> Self;
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
    unsafe fn select_lt(self, bound: Self, a: Self, b: Self) -> Self {
        _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_LT_OQ>(self, bound))
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
    unsafe fn select_lt(self, bound: Self, a: Self, b: Self) -> Self {
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(self, bound), b, a)
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

/// GELU with the exact erf, `0.5 x (1 + erf(x/√2)) = 0.5 x erfc(-x/√2)`. With `t = |x|/√2`,
/// `erfc(t)` is `1 - t·P(t²)` below `t = 1` and `exp(S(t - 2.75) - t²)` above (`S` evaluated
/// at `t <= 4.5`); `P` and `S` are fitted by `tools/erf_coefficients.py`. For `x < 0` the
/// result is `0.5 x erfc(t)`, for `x >= 0` `0.5 x (2 - erfc(t))`, so no large terms cancel;
/// the exponent is carried in two parts. Relative error under 1e-6 against the f64 formula.
///
/// # Safety
/// The width's instructions present (called inside a function compiled with them).
#[inline(always)]
pub unsafe fn gelu_erf<V: F32s>(x: V) -> V {
    const ERF_P: [f32; 7] = [
        1.1283792e+00,
        -3.761263e-01,
        1.1283605e-01,
        -2.6854314e-02,
        5.188918e-03,
        -8.013302e-04,
        7.8592755e-05,
    ];
    const ERFC_S: [f32; 10] = [
        -1.6416404e+00,
        -3.2653594e-01,
        4.8713323e-02,
        -8.933379e-03,
        1.7048465e-03,
        -3.204254e-04,
        5.772761e-05,
        -9.754187e-06,
        1.3785561e-06,
        -1.0859589e-07,
    ];
    let (zero, half) = (V::splat(0.0), V::splat(0.5));
    let t = x
        .max(zero.sub(x))
        .mul(V::splat(std::f32::consts::FRAC_1_SQRT_2));
    // t² = x²/2 as hi + lo, exactly (the rounding of t itself would move e^-t² by 2e-6).
    let xx = x.mul(x);
    let (t2, t2_lo) = (xx.mul(half), x.fmsub(x, xx).mul(half));
    let near = t
        .mul(horner(&ERF_P, t2))
        .fnmadd(V::splat(1.0), V::splat(1.0)); // 1 - erf(t)
    let s = horner(&ERFC_S, t.min(V::splat(4.5)).sub(V::splat(2.75)));
    // e^(s - t²) as e^hi (1 + lo): hi the rounded exponent, lo what its rounding and t²'s low
    // part leave (t² >= |s| wherever this branch is taken, so `(s - hi) - t²` is exact).
    let hi = s.sub(t2);
    let lo = s.sub(hi).sub(t2).sub(t2_lo);
    let e = exp(hi);
    // Past t = 10, erfc(t) < 1e-44: zero (the 8-lane `exp` stops at the smallest normal).
    let far = t.select_lt(V::splat(10.0), e.fmadd(lo, e), zero);
    let erfc = t.select_lt(V::splat(1.0), near, far); // erfc(t)
    let one_plus = x.select_lt(zero, erfc, V::splat(2.0).sub(erfc)); // 1 + erf(x/√2)
    x.mul(V::splat(0.5)).mul(one_plus)
}

/// The polynomial `c[0] + c[1] u + c[2] u² + ...` by Horner's rule.
///
/// # Safety
/// The width's instructions present (called inside a function compiled with them).
#[inline(always)]
unsafe fn horner<V: F32s>(c: &[f32], u: V) -> V {
    let mut r = V::splat(c[c.len() - 1]);
    for &v in c[..c.len() - 1].iter().rev() {
        r = r.fmadd(u, V::splat(v));
    }
    r
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
    GeluErf,
    Silu,
}

#[inline(always)]
unsafe fn apply<V: F32s>(op: Op, v: V) -> V {
    match op {
        Op::GeluTanh => gelu_tanh(v),
        Op::GeluErf => gelu_erf(v),
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

    /// `0.5 x erfc(-x/√2)` in f64 (no cancellation for negative `x`).
    fn gelu_erf_f64(x: f64) -> f64 {
        0.5 * x * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
    }

    /// The vector GELU-erf on a fine grid over [-40, 40] (both polynomials, the switch at
    /// `|x| = √2`, the clamp at `|x| = 4.5√2`, the tails) and at 0, huge values, ±inf and NaN:
    /// relative error at most 1e-6, plus 1e-9 absolute where the result is below that.
    #[test]
    fn gelu_erf_is_accurate_everywhere() {
        let widths: Vec<Width> = match width() {
            None => return println!("skipped: this CPU has no AVX2 + FMA"),
            Some(Width::W8) => vec![Width::W8],
            Some(Width::W16) => vec![Width::W8, Width::W16],
        };
        let xs: Vec<f32> = (-40 * 4096..=40 * 4096)
            .map(|i| i as f32 / 4096.0)
            .collect();
        for w in widths {
            let mut got = xs.clone();
            assert_eq!(map_(Some(w), &mut got, Op::GeluErf), Some(()));
            let mut worst = 0.0f64;
            for (&x, &g) in xs.iter().zip(&got) {
                let want = gelu_erf_f64(x as f64);
                let err = (g as f64 - want).abs();
                assert!(
                    err <= 1e-6 * want.abs() + 1e-9,
                    "{w:?}: gelu_erf({x}) = {g}, want {want}"
                );
                if want.abs() > 1e-6 {
                    worst = worst.max(err / want.abs());
                }
            }
            println!("{w:?}: worst relative error {worst:.2e} where |gelu| > 1e-6");
            // As `0.5 x (1 + erf(x/√2))` evaluates them: -inf gives -inf * 0.
            let mut special = [0.0f32, -0.0, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY];
            map_(Some(w), &mut special, Op::GeluErf);
            assert_eq!(special[..5], [0.0, 0.0, 1e30, 0.0, f32::INFINITY], "{w:?}");
            let mut nan = [f32::NAN];
            map_(Some(w), &mut nan, Op::GeluErf);
            assert!(special[5].is_nan() && nan[0].is_nan(), "{w:?}: NaN out");
        }
    }

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
            for op in [Op::Silu, Op::GeluTanh, Op::GeluErf] {
                let mut got = xs.clone();
                assert_eq!(map_(Some(w), &mut got, op), Some(()));
                for (&x, &g) in xs.iter().zip(&got) {
                    let u = x as f64;
                    let want = match op {
                        Op::Silu => u / (1.0 + (-u).exp()),
                        Op::GeluTanh => {
                            0.5 * u * (1.0 + (0.797_884_560_8 * (u + 0.044715 * u * u * u)).tanh())
                        }
                        Op::GeluErf => gelu_erf_f64(u),
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
