//! AVX2 + FMA micro-kernels for the packed matrix products (`packed.rs`), for x86 CPUs without
//! AVX-512 (most laptops, older servers), and the vector helpers the widened bf16 path uses on
//! every x86 level (the element-wise maths of both widths is in `simd.rs`). Every function here
//! needs `avx2` and `fma`; callers check with [`super::isa::Isa::detect`] first.
//!
//! Sixteen ymm registers hold a 6 x 16 block of f32 accumulators (12 registers), two weight
//! vectors and one broadcast: the classic AVX2 register tile. The [`MR`] x [`NR`] = 12 x 32 tile
//! that the blocking hands out is covered as four such blocks (two row halves x two column
//! halves of the weight panel `[kc][NR]`), each streaming its rows of `a` and half of each
//! panel row from L1.

use std::arch::x86_64::*;

use super::simd::gelu_tanh;
use super::tile::{Init, Tile, MR, NR};

/// Rows of one register block.
const RB: usize = MR / 2;
/// Columns of one register block (two ymm).
const CB: usize = NR / 2;

/// Lane masks for `n` (0..=8) valid lanes.
#[inline(always)]
unsafe fn lanes(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
}

/// `tile (+)= a[MR, kc] · b[kc, NR]`: `a` row-major with row stride `lda`, `b` the packed f32
/// weight panel `[kc][NR]` (32-byte aligned). Only the tile's `rows x cols` of `c` are touched.
///
/// # Safety
/// `avx2` and `fma` present; `a` holds `MR` rows of `kc` values at stride `lda`, `b` `kc * NR`
/// values; the tile's `c` holds `rows` rows of `cols` values at stride `ldc`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn kernel_f32(kc: usize, a: *const f32, lda: usize, b: *const f32, t: Tile) {
    // Column halves outer: the two row blocks of a half read the same weight lines, which the
    // second then finds in L1.
    for c0 in (0..t.cols).step_by(CB) {
        for r0 in (0..t.rows).step_by(RB) {
            block(kc, a.add(r0 * lda), lda, b.add(c0), t, r0, c0);
        }
    }
}

/// One 6 x 16 register block at rows `r0..`, columns `c0..` of the tile.
#[inline(always)]
unsafe fn block(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    t: Tile,
    r0: usize,
    c0: usize,
) {
    let rows = (t.rows - r0).min(RB);
    let cols = (t.cols - c0).min(CB);
    let (m0, m1) = (lanes(cols.min(8)), lanes(cols.saturating_sub(8)));
    // Whole rows of 16 take plain loads and stores (masked stores are slow on AMD cores).
    let whole = cols == CB;
    let mut acc = [[_mm256_setzero_ps(); 2]; RB];
    match t.init {
        Init::Zero => {}
        Init::Load => {
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                *a = load_row(t.c.add((r0 + r) * t.ldc + c0), whole, (m0, m1));
            }
        }
        Init::Bias(bias) => acc = [load_row(bias.add(c0), whole, (m0, m1)); RB],
    }
    // The block's rows of `a`, each read at `k` (the rows past the tile's are zero padding).
    let ar: [*const f32; RB] = std::array::from_fn(|r| a.add(r * lda));
    let mut kk = 0;
    while kk + 4 <= kc {
        step(&mut acc, b, &ar, kk);
        step(&mut acc, b, &ar, kk + 1);
        step(&mut acc, b, &ar, kk + 2);
        step(&mut acc, b, &ar, kk + 3);
        kk += 4;
    }
    while kk < kc {
        step(&mut acc, b, &ar, kk);
        kk += 1;
    }
    for (r, a) in acc.iter().enumerate().take(rows) {
        let (mut v0, mut v1) = (a[0], a[1]);
        if t.gelu {
            v0 = gelu_tanh(v0);
            v1 = gelu_tanh(v1);
        }
        let row = t.c.add((r0 + r) * t.ldc + c0);
        if whole {
            _mm256_storeu_ps(row, v0);
            _mm256_storeu_ps(row.add(8), v1);
        } else {
            _mm256_maskstore_ps(row, m0, v0);
            _mm256_maskstore_ps(row.add(8), m1, v1);
        }
    }
}

/// One step of `k`: the block's accumulators plus row `kk` of the panel times each row's value.
#[inline(always)]
unsafe fn step(acc: &mut [[__m256; 2]; RB], b: *const f32, ar: &[*const f32; RB], kk: usize) {
    let bp = b.add(kk * NR);
    let b0 = _mm256_load_ps(bp);
    let b1 = _mm256_load_ps(bp.add(8));
    for (acc_r, ap) in acc.iter_mut().zip(ar) {
        let av = _mm256_broadcast_ss(&*ap.add(kk));
        acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
        acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
    }
}

/// 16 values of a row at `p`, masked by `m` unless `whole`.
#[inline(always)]
unsafe fn load_row(p: *const f32, whole: bool, m: (__m256i, __m256i)) -> [__m256; 2] {
    if whole {
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
    } else {
        [
            _mm256_maskload_ps(p, m.0),
            _mm256_maskload_ps(p.add(8), m.1),
        ]
    }
}

/// Widens a bf16 pair panel `[kc/2][NR][2]` into the f32 panel `[kc][NR]` (`kc` even): each
/// 32-bit lane holds the pair (k, k+1) of one column, so k is the lane shifted up 16 bits and
/// k+1 the lane with its low half cleared.
///
/// # Safety
/// `avx2` present; `src` holds `kc * NR` values, `dst` is 32-byte aligned with room for as many.
#[target_feature(enable = "avx2")]
pub unsafe fn widen_panel(kc: usize, src: *const u16, dst: *mut f32) {
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for kk in 0..kc / 2 {
        let s = src.add(kk * 2 * NR) as *const __m256i;
        let d0 = dst.add(2 * kk * NR) as *mut __m256i;
        let d1 = dst.add((2 * kk + 1) * NR) as *mut __m256i;
        for q in 0..NR / 8 {
            let v = _mm256_loadu_si256(s.add(q));
            _mm256_store_si256(d0.add(q), _mm256_slli_epi32(v, 16));
            _mm256_store_si256(d1.add(q), _mm256_and_si256(v, high));
        }
    }
}

/// Rounds every value of `x` to the nearest bf16 (ties to even; NaN stays NaN), in place, as
/// [`super::bf16::round`].
///
/// # Safety
/// `avx2` present.
#[target_feature(enable = "avx2")]
pub unsafe fn round_bf16_(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let bias = _mm256_set1_epi32(0x7fff);
    let one = _mm256_set1_epi32(1);
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let quiet = _mm256_set1_epi32(0x0040_0000);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(p.add(i));
        let b = _mm256_castps_si256(v);
        let odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
        let r = _mm256_and_si256(_mm256_add_epi32(b, _mm256_add_epi32(bias, odd)), high);
        // NaN: keep the sign and high bits, set the quiet bit.
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let q = _mm256_and_si256(_mm256_or_si256(b, quiet), high);
        let out = _mm256_blendv_epi8(r, q, nan);
        _mm256_storeu_ps(p.add(i), _mm256_castsi256_ps(out));
        i += 8;
    }
    if i < n {
        let mut tail = [0.0f32; 8];
        tail[..n - i].copy_from_slice(&x[i..]);
        round_bf16_(&mut tail);
        x[i..].copy_from_slice(&tail[..n - i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have() -> bool {
        let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if !ok {
            println!("skipped: this CPU has no AVX2 + FMA");
        }
        ok
    }

    #[test]
    fn vector_rounding_equals_scalar() {
        if !have() {
            return;
        }
        let mut x: Vec<f32> = (0..1000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
            .collect();
        x.extend([
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff80_0001),
            f32::INFINITY,
            f32::MAX,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -0.0,
        ]);
        let want: Vec<u32> = x
            .iter()
            .map(|&v| super::super::bf16::round(v).to_bits())
            .collect();
        // SAFETY: checked by have().
        unsafe { round_bf16_(&mut x) };
        for (i, (g, w)) in x.iter().map(|v| v.to_bits()).zip(&want).enumerate() {
            let both_nan = f32::from_bits(g).is_nan() && f32::from_bits(*w).is_nan();
            assert!(g == *w || both_nan, "element {i}: {g:#x} vs {w:#x}");
        }
    }
}
