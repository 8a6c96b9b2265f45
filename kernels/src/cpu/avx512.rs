//! AVX-512 micro-kernels for the packed matrix products (`packed.rs`). Every function here needs
//! `avx512f` (the bf16 ones also `avx512bf16`); callers check with [`super::isa::Isa::detect`]
//! first. The element-wise maths of both widths is in `simd.rs`.
//!
//! Register tile: `MR x NR = 12 x 32` f32 accumulators (24 zmm registers), two zmm loads of the
//! packed weights and twelve broadcasts of the packed activations per step of `k` (per pair of `k`
//! for bf16, whose `vdpbf16ps` multiplies two bf16 pairs into each f32 lane).

use std::arch::x86_64::*;

use super::simd::gelu_tanh;
use super::tile::{Init, Tile, MR, NR};

#[inline(always)]
fn col_masks(cols: usize) -> (__mmask16, __mmask16) {
    let lo = if cols >= 16 {
        0xffff
    } else {
        (1u32 << cols) as u16 - 1
    };
    let hi = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        (1u32 << (cols - 16)) as u16 - 1
    } else {
        0
    };
    (lo, hi)
}

/// The column masks of row `r`: none past the tile's rows, so every row's loads and stores
/// can be issued (masked-off lanes neither fault nor write) and the loops over the `MR` rows
/// have a fixed count: the accumulators then stay in registers from `start` to `finish`.
#[inline(always)]
fn row_masks(m: (__mmask16, __mmask16), r: usize, rows: usize) -> (__mmask16, __mmask16) {
    if r < rows {
        m
    } else {
        (0, 0)
    }
}

#[inline(always)]
unsafe fn start(t: &Tile, m: (__mmask16, __mmask16)) -> [[__m512; 2]; MR] {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    match t.init {
        Init::Zero => {}
        Init::Load => {
            for (r, a) in acc.iter_mut().enumerate() {
                let (m0, m1) = row_masks(m, r, t.rows);
                // wrapping: the rows past the tile's are never touched (all lanes masked).
                let row = t.c.wrapping_add(r * t.ldc);
                a[0] = _mm512_maskz_loadu_ps(m0, row);
                a[1] = _mm512_maskz_loadu_ps(m1, row.wrapping_add(16));
            }
        }
        Init::Bias(b) => {
            let b0 = _mm512_maskz_loadu_ps(m.0, b);
            let b1 = _mm512_maskz_loadu_ps(m.1, b.add(16));
            for a in acc.iter_mut() {
                *a = [b0, b1];
            }
        }
    }
    acc
}

#[inline(always)]
unsafe fn finish(acc: &[[__m512; 2]; MR], t: &Tile, m: (__mmask16, __mmask16)) {
    for (r, a) in acc.iter().enumerate() {
        let (m0, m1) = row_masks(m, r, t.rows);
        let (mut v0, mut v1) = (a[0], a[1]);
        if t.gelu {
            v0 = gelu_tanh(v0);
            v1 = gelu_tanh(v1);
        }
        let row = t.c.wrapping_add(r * t.ldc);
        _mm512_mask_storeu_ps(row, m0, v0);
        _mm512_mask_storeu_ps(row.wrapping_add(16), m1, v1);
    }
}

/// `tile (+)= a[MR, kc] · b[kc, NR]`: `a` row-major with row stride `lda`, `b` the packed f32
/// weight panel `[kc][NR]` (64-byte aligned). Only the tile's `rows x cols` of `c` are touched.
///
/// # Safety
/// `avx512f` present; `a` holds `MR` rows of `kc` values at stride `lda`, `b` `kc * NR` values;
/// the tile's `c` holds `rows` rows of `cols` values at stride `ldc`.
#[target_feature(enable = "avx512f")]
pub unsafe fn kernel_f32(kc: usize, a: *const f32, lda: usize, b: *const f32, t: Tile) {
    let m = col_masks(t.cols);
    let mut acc = start(&t, m);
    for kk in 0..kc {
        let bp = b.add(kk * NR);
        let b0 = _mm512_load_ps(bp);
        let b1 = _mm512_load_ps(bp.add(16));
        let ap = a.add(kk);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * lda));
            acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
        }
    }
    finish(&acc, &t, m);
}

/// As [`kernel_f32`] with bf16 operands: `a` is `[MR, kc]` bf16 bits (`kc`, `lda` even), `b` the
/// packed pair panel `[kc/2][NR][2]`; products accumulate in f32 (`vdpbf16ps`).
///
/// # Safety
/// `avx512f` and `avx512bf16` present; sizes as in [`kernel_f32`].
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn kernel_bf16(kc: usize, a: *const u16, lda: usize, b: *const u16, t: Tile) {
    let m = col_masks(t.cols);
    let mut acc = start(&t, m);
    for kk in 0..kc / 2 {
        let bp = b.add(kk * 2 * NR);
        let b0: __m512bh = std::mem::transmute(_mm512_load_si512(bp as *const __m512i));
        let b1: __m512bh = std::mem::transmute(_mm512_load_si512(bp.add(NR) as *const __m512i));
        let ap = a.add(2 * kk);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let pair = (ap.add(r * lda) as *const i32).read_unaligned();
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, b0);
            acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, b1);
        }
    }
    finish(&acc, &t, m);
}

/// Widens a bf16 pair panel `[kc/2][NR][2]` into the f32 panel `[kc][NR]` (`kc` even).
///
/// # Safety
/// `avx512f` present; `src` holds `kc * NR` values, `dst` is 64-byte aligned with room for as many.
#[target_feature(enable = "avx512f")]
pub unsafe fn widen_panel(kc: usize, src: *const u16, dst: *mut f32) {
    // One pair row: 32 u16 = columns 0..16 interleaved with k and k+1.
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for kk in 0..kc / 2 {
        for half in 0..2 {
            let s = src.add(kk * 2 * NR + half * NR);
            // 32 bf16 -> 32 f32 bit patterns (two zmm), then split even/odd k.
            let lo = _mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(s as *const __m256i)),
                16,
            );
            let hi = _mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(s.add(16) as *const __m256i)),
                16,
            );
            let k0 = _mm512_permutex2var_epi32(lo, even, hi);
            let k1 = _mm512_permutex2var_epi32(lo, odd, hi);
            _mm512_store_si512(dst.add(2 * kk * NR + half * 16) as *mut __m512i, k0);
            _mm512_store_si512(dst.add((2 * kk + 1) * NR + half * 16) as *mut __m512i, k1);
        }
    }
}

/// Rounds `src` to bf16 (nearest even, as `vcvtne2ps2bf16`) into `dst`, `dst.len() == src.len()`.
///
/// # Safety
/// `avx512f`, `avx512bw` and `avx512bf16` present.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 32 <= n {
        let lo = _mm512_loadu_ps(src.as_ptr().add(i));
        let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut __m512i, v);
        i += 32;
    }
    if i < n {
        let m: __mmask16 = ((1u32 << (n - i).min(16)) - 1) as u16;
        let m2: __mmask16 = ((1u32 << (n - i).saturating_sub(16)) - 1) as u16;
        let lo = _mm512_maskz_loadu_ps(m, src.as_ptr().add(i));
        let hi = _mm512_maskz_loadu_ps(m2, src.as_ptr().add(i + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        let mask: __mmask32 = ((1u64 << (n - i)) - 1) as u32;
        _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i) as *mut i16, mask, v);
    }
}

/// [`super::bf16::pairs_into`]: `even[j]` and `odd[j]` (zero without `odd`) rounded to bf16
/// into the low and high half of `dst[j]`, sixteen pairs per step.
///
/// # Safety
/// `avx512f`, `avx512bw` and `avx512bf16` present; `even`, `odd` and `dst` of one length.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn to_bf16_pairs(even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
    // Word i of the result takes u16 lanes i (even, low half) and 16 + i (odd, high half).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let n = dst.len();
    let mut i = 0;
    while i < n {
        let m: __mmask16 = ((1u32 << (n - i).min(16)) - 1) as u16;
        let e = _mm512_maskz_loadu_ps(m, even.as_ptr().add(i));
        let o = match odd {
            Some(odd) => _mm512_maskz_loadu_ps(m, odd.as_ptr().add(i)),
            None => _mm512_setzero_ps(),
        };
        // Lanes 0..16 the even values, 16..32 the odd ones.
        let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(o, e));
        let pairs = _mm512_permutexvar_epi16(interleave, halves);
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i) as *mut i32, m, pairs);
        i += 16;
    }
}
