//! 2-D convolutions over channel-last images `[B, H, W, C]`, as implicit matrix products.
//!
//! Design. A `k x k` convolution is a matrix product once every output pixel's receptive field
//! is read as one row `[(ky, kx, C)]`: `out[P, O] = fields[P, k*k*C] · w[O, k*k*C]ᵀ`. The weight
//! is reordered once at load time from PyTorch's `[O, C, kh, kw]` to `[O, (kh, kw, C)]`
//! (`patch_major_weight`) and packed. The fields are never written out as an im2col matrix: the
//! product's packing step gathers them (runs of `C` channels, zeros outside the image) straight
//! into its row tiles (`Fields`, a [`RowSource`]), rounding to bf16 there for bf16 products.
//! Output rows go in bands whose packed rows stay under `BAND_BYTES`. A 1x1 stride-1
//! convolution is the plain product on the image, in bands of pixels.
//!
//! Same-padded stride-1 convolutions (the VQ-VAE's 3x3 ones) skip the gathering where the
//! product allows ([`window_elements`]): the image is copied once with a zero border (in the
//! product's element type, bf16 for bf16 products), and for kernel row `ky` the fields of a row
//! of output pixels are `k * C` consecutive values starting at each pixel's neighbour, so the
//! micro-kernels read them in place ([`linear_windows`]) instead of from 9x larger packed rows. A convolution of a nearest-2x-upsampled image
//! ([`conv2d_upsampled_2x`], the VQ decoder's upsamplers) gathers straight from the small image:
//! the 4x larger one is never written.

use super::packed::{
    linear, linear_rows, linear_windows, window_elements, Elements, Epilogue, PackedMatrix,
    RowSource, WindowData, Windows,
};
use rayon::prelude::*;

/// Largest band of gathered fields, in bytes (as f32).
const BAND_BYTES: usize = 32 << 20;

/// The geometry of one convolution: input `[batch, height, width, c_in]`, a square `kernel`,
/// `stride`, and zero padding `[top, bottom, left, right]` (PyTorch's symmetric `padding=p` is
/// `[p; 4]`; diffusers' stride-2 `Downsample2D` pads `[0, 1, 0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2dShape {
    /// Output rows and columns: `(H + pad_t + pad_b - k) / stride + 1`, likewise for columns.
    pub fn out_hw(&self) -> (usize, usize) {
        let [t, b, l, r] = self.pad;
        (
            (self.height + t + b - self.kernel) / self.stride + 1,
            (self.width + l + r - self.kernel) / self.stride + 1,
        )
    }

    /// Floats in one row of the im2col matrix: `k * k * c_in`.
    pub fn patch(&self) -> usize {
        self.kernel * self.kernel * self.c_in
    }
}

/// PyTorch's `[O, C, kh, kw]` conv weight reordered to `[O, (kh, kw, C)]`, the row layout of
/// the im2col matrix.
pub fn patch_major_weight(w: &[f32], c_out: usize, c_in: usize, kernel: usize) -> Vec<f32> {
    let kk = kernel * kernel;
    assert_eq!(
        w.len(),
        c_out * c_in * kk,
        "conv weight is not [O, C, k, k]"
    );
    let mut out = vec![0.0; w.len()];
    for o in 0..c_out {
        for c in 0..c_in {
            for p in 0..kk {
                out[(o * kk + p) * c_in + c] = w[(o * c_in + c) * kk + p];
            }
        }
    }
    out
}

/// The receptive fields of output rows `y0..y0 + rows` of one image `x [H, W, C]`, as the rows
/// `[(ky, kx, C)]` of the product, gathered while the product packs them.
struct Fields<'a> {
    x: &'a [f32],
    s: &'a Conv2dShape,
    /// `x` is the input shrunk by this factor (1, or 2 for a nearest-upsampled input).
    up: usize,
    y0: usize,
    rows: usize,
    wo: usize,
}

impl RowSource for Fields<'_> {
    fn rows(&self) -> usize {
        self.rows * self.wo
    }

    fn fill(&self, row: usize, k0: usize, dst: &mut [f32]) {
        let (s, c) = (self.s, self.s.c_in);
        let (oy, ox) = (self.y0 + row / self.wo, row % self.wo);
        let mut p = k0;
        let mut out = dst;
        while !out.is_empty() {
            let (tap, c0) = (p / c, p % c);
            let run = (c - c0).min(out.len());
            let iy = (oy * s.stride + tap / s.kernel) as isize - s.pad[0] as isize;
            let ix = (ox * s.stride + tap % s.kernel) as isize - s.pad[2] as isize;
            let (head, rest) = out.split_at_mut(run);
            if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                head.fill(0.0);
            } else {
                let (sy, sx) = (iy as usize / self.up, ix as usize / self.up);
                let at = (sy * (s.width / self.up) + sx) * c + c0;
                head.copy_from_slice(&self.x[at..at + run]);
            }
            out = rest;
            p += run;
        }
    }
}

/// `out [B, Ho, Wo, O] = conv(x [B, H, W, C])` with the patch-major packed weight `w`
/// `[O, (k, k, C)]` and `bias [O]`.
pub fn conv2d(x: &[f32], w: &PackedMatrix, bias: Option<&[f32]>, s: &Conv2dShape, out: &mut [f32]) {
    convolve(x, 1, w, bias, s, out, true)
}

/// [`conv2d`] of `upsample_nearest_2x(x)`: `s` is the shape of the upsampled input (even height
/// and width), `x [B, H/2, W/2, C]`.
pub fn conv2d_upsampled_2x(
    x: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    out: &mut [f32],
) {
    assert!(
        s.height.is_multiple_of(2) && s.width.is_multiple_of(2),
        "conv2d_upsampled_2x: the upsampled size is odd"
    );
    convolve(x, 2, w, bias, s, out, true)
}

/// [`conv2d`] on an input stored `up` times smaller per side (nearest upsampling); `in_place`
/// allows reading the fields in place where the shape and product allow (tests compare both).
fn convolve(
    x: &[f32],
    up: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    out: &mut [f32],
    in_place: bool,
) {
    let (ho, wo) = s.out_hw();
    let image = s.height * s.width * s.c_in / (up * up);
    assert_eq!(x.len(), s.batch * image, "conv2d: x is not [B, H, W, C]");
    assert!(
        w.n() == s.c_out && w.k() == s.patch(),
        "conv2d: w is not [O, k*k*C]"
    );
    assert_eq!(
        out.len(),
        s.batch * ho * wo * s.c_out,
        "conv2d: out is not [B, Ho, Wo, O]"
    );
    // A 1x1 convolution is a product on the pixels, in bands of rows so that the packed rows
    // stay small (a whole image's would be a fresh map's worth of memory).
    if up == 1 && s.kernel == 1 && s.stride == 1 && s.pad == [0; 4] {
        let band = (BAND_BYTES / (4 * s.c_in).max(1)).max(1);
        let (xs, os) = (x.chunks(band * s.c_in), out.chunks_mut(band * s.c_out));
        xs.zip(os)
            .for_each(|(xb, ob)| linear(xb, w, bias, Epilogue::None, ob));
        return;
    }
    if let Some(elements) = in_place.then(|| in_place_elements(w, s)).flatten() {
        for b in 0..s.batch {
            let xb = &x[b * image..(b + 1) * image];
            let ob = &mut out[b * ho * wo * s.c_out..(b + 1) * ho * wo * s.c_out];
            same_in_place(xb, up, w, bias, s, elements, ob);
        }
        return;
    }
    let row_bytes = 4 * wo * s.patch();
    let band = (BAND_BYTES / row_bytes.max(1)).clamp(1, ho);
    for b in 0..s.batch {
        let xb = &x[b * image..(b + 1) * image];
        let ob = &mut out[b * ho * wo * s.c_out..(b + 1) * ho * wo * s.c_out];
        for y0 in (0..ho).step_by(band) {
            let rows = band.min(ho - y0);
            let fields = Fields {
                x: xb,
                s,
                up,
                y0,
                rows,
                wo,
            };
            let dst = &mut ob[y0 * wo * s.c_out..(y0 + rows) * wo * s.c_out];
            linear_rows(&fields, w, bias, Epilogue::None, dst);
        }
    }
}

/// The element type to read a convolution's fields in place, when its shape and product allow.
fn in_place_elements(w: &PackedMatrix, s: &Conv2dShape) -> Option<Elements> {
    let p = s.kernel / 2;
    let same = s.stride == 1 && s.kernel % 2 == 1 && s.pad == [p; 4];
    same.then(|| window_elements(w, s.kernel * s.c_in))
        .flatten()
}

/// One image `x [H/up, W/up, C]` (nearest-upsampled `up` times) convolved into `out [H, W, O]`
/// through [`linear_windows`]: the image copied once with its zero border, in `elements`.
fn same_in_place(
    x: &[f32],
    up: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    elements: Elements,
    out: &mut [f32],
) {
    let (c, p) = (s.c_in, s.kernel / 2);
    let pitch = s.width + 2 * p;
    let windows = |data| Windows {
        data,
        height: s.height,
        width: s.width,
        pitch,
        step: c,
        segments: s.kernel,
    };
    let needed = windows(WindowData::F32(&[])).needed(w.k());
    // Bordered row `py` of the image, each pixel's C values as f32 (before conversion).
    let source_pixel = |py: usize, px: usize| -> Option<&[f32]> {
        let (iy, ix) = (py.checked_sub(p)?, px.checked_sub(p)?);
        if iy >= s.height || ix >= s.width {
            return None;
        }
        let at = ((iy / up) * (s.width / up) + ix / up) * c;
        Some(&x[at..at + c])
    };
    let rows = s.height + 2 * p;
    match elements {
        Elements::Bf16 => {
            let data = BORDERED_BF16.take();
            let data = bordered(data, needed, rows, pitch, c, source_pixel, |src, dst| {
                super::bf16::round_into(src, dst)
            });
            linear_windows(&windows(WindowData::Bf16(&data[..needed])), w, bias, out);
            BORDERED_BF16.set(data);
        }
        Elements::F32 | Elements::F32Rounded => {
            let rounded = elements == Elements::F32Rounded;
            let data = BORDERED_F32.take();
            let data = bordered(data, needed, rows, pitch, c, source_pixel, |src, dst| {
                dst.copy_from_slice(src);
                if rounded {
                    super::bf16::round_(dst);
                }
            });
            linear_windows(&windows(WindowData::F32(&data[..needed])), w, bias, out);
            BORDERED_F32.set(data);
        }
    }
}

/// Writes the bordered image into `data` (grown to `needed` elements if shorter): `rows` rows
/// of `pitch` pixels of `c` values, pixel `(py, px)` converted from `source(py, px)` or zero on
/// the border, then zeros up to `needed`. Every element is written, so a buffer kept per thread
/// (only ever grown) is neither zeroed nor first-touched again by later calls.
#[allow(clippy::too_many_arguments)]
fn bordered<'a, T: Copy + Default + Send + Sync>(
    mut data: Vec<T>,
    needed: usize,
    rows: usize,
    pitch: usize,
    c: usize,
    source: impl Fn(usize, usize) -> Option<&'a [f32]> + Sync,
    convert: impl Fn(&[f32], &mut [T]) + Sync,
) -> Vec<T> {
    if data.len() < needed {
        data.resize(needed, T::default());
    }
    data[rows * pitch * c..needed].fill(T::default());
    data[..rows * pitch * c]
        .par_chunks_mut(pitch * c)
        .enumerate()
        .for_each(|(py, row)| {
            for (px, dst) in row.chunks_exact_mut(c).enumerate() {
                match source(py, px) {
                    Some(src) => convert(src, dst),
                    None => dst.fill(T::default()),
                }
            }
        });
    data
}

thread_local! {
    /// The bordered copies of [`same_in_place`], reused across calls (taken out while in use).
    static BORDERED_BF16: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
    static BORDERED_F32: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Nearest-neighbour 2x upsampling (`F.interpolate(scale_factor=2, mode="nearest")`):
/// `[B, H, W, C] -> [B, 2H, 2W, C]`.
pub fn upsample_nearest_2x(x: &[f32], batch: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * h * w * c,
        "upsample: x is not [B, H, W, C]"
    );
    let mut out = vec![0.0f32; 4 * x.len()];
    out.par_chunks_mut(2 * w * c)
        .enumerate()
        .for_each(|(row, dst)| {
            // Output row `row` of the flattened [B * 2H] rows reads input row `row / 2`.
            let (b, oy) = (row / (2 * h), row % (2 * h));
            let src = &x[(b * h + oy / 2) * w * c..(b * h + oy / 2 + 1) * w * c];
            for (ix, px) in src.chunks_exact(c).enumerate() {
                dst[2 * ix * c..(2 * ix + 1) * c].copy_from_slice(px);
                dst[(2 * ix + 1) * c..(2 * ix + 2) * c].copy_from_slice(px);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::packed::{Compute, Storage};
    use crate::cpu::reference::pseudo;

    /// `(got, want)` of every output element: `got` `[B, hw, O]` (NHWC), `want` `[B, O, hw]`
    /// (NCHW).
    fn output_pairs<'a>(
        got: &'a [f32],
        want: &'a [f64],
        (b, hw, o): (usize, usize, usize),
    ) -> impl Iterator<Item = (f64, f64)> + 'a {
        (0..b).flat_map(move |bi| {
            (0..o).flat_map(move |oi| {
                (0..hw).map(move |p| {
                    (
                        got[(bi * hw + p) * o + oi] as f64,
                        want[(bi * o + oi) * hw + p],
                    )
                })
            })
        })
    }

    /// Direct convolution in f64 on the PyTorch layouts `x [B, C, H, W]`, `w [O, C, k, k]`.
    fn naive_nchw(x: &[f32], w: &[f32], bias: &[f32], s: &Conv2dShape) -> Vec<f64> {
        let (ho, wo) = s.out_hw();
        let k = s.kernel;
        let mut out = vec![0.0f64; s.batch * s.c_out * ho * wo];
        for b in 0..s.batch {
            for o in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias[o] as f64;
                        for c in 0..s.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                                    let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= s.height as isize
                                        || ix >= s.width as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * s.c_in + c) * s.height + iy as usize)
                                        * s.width
                                        + ix as usize];
                                    let wv = w[((o * s.c_in + c) * k + ky) * k + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((b * s.c_out + o) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        out
    }

    /// The fused upsampling reads the same values as the explicit one, so the outputs are equal
    /// to the bit, f32 and bf16, on odd sizes and batches.
    #[test]
    fn upsampled_conv_equals_conv_of_the_upsampled_image() {
        for (b, h, w, c, o) in [(1, 1, 1, 1, 1), (2, 3, 5, 7, 9), (1, 6, 4, 33, 40)] {
            let x = pseudo(b * h * w * c, 4);
            let wt = pseudo(o * c * 9, 5);
            let bias = pseudo(o, 6);
            let s = Conv2dShape {
                batch: b,
                height: 2 * h,
                width: 2 * w,
                c_in: c,
                c_out: o,
                kernel: 3,
                stride: 1,
                pad: [1; 4],
            };
            let up = upsample_nearest_2x(&x, b, h, w, c);
            for (storage, compute) in [(Storage::F32, Compute::F32), (Storage::Bf16, Compute::Bf16)]
            {
                let packed = PackedMatrix::new(
                    &patch_major_weight(&wt, o, c, 3),
                    o,
                    9 * c,
                    storage,
                    compute,
                );
                let mut want = vec![0.0; b * 4 * h * w * o];
                conv2d(&up, &packed, Some(&bias), &s, &mut want);
                let mut got = vec![f32::NAN; want.len()];
                conv2d_upsampled_2x(&x, &packed, Some(&bias), &s, &mut got);
                assert_eq!(got, want, "({b}, {h}, {w}, {c}, {o}) {compute:?}");
            }
        }
    }

    /// Reading the fields in place sums the same products in the same order as gathering them,
    /// so the outputs are equal to the bit: every level this CPU has, every arithmetic, odd and
    /// even channel counts (bf16 weights need an even C in place), upsampled or not, and rows
    /// that end inside a register tile.
    #[test]
    fn fields_in_place_equal_gathered_fields() {
        use crate::cpu::isa::Isa;
        use crate::cpu::packed::Source;
        let levels = [Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];
        let modes = [
            (Storage::F32, Compute::F32),
            (Storage::Bf16, Compute::F32),
            (Storage::Bf16, Compute::Bf16),
        ];
        let mut in_place = 0;
        for isa in levels.into_iter().filter(|&i| i <= Isa::detect()) {
            for (storage, compute) in modes {
                for (b, h, w, c, o, up, k) in [
                    (1, 1, 1, 2, 1, 1, 3),
                    (2, 5, 13, 6, 33, 1, 3),
                    (1, 3, 7, 5, 40, 2, 3),
                    (2, 4, 9, 64, 70, 2, 3),
                    (1, 2, 3, 520, 8, 1, 3),
                    (2, 5, 13, 6, 33, 1, 1),
                    (1, 3, 7, 1100, 40, 1, 1),
                ] {
                    let x = pseudo(b * h * w * c, 7);
                    let wt = patch_major_weight(&pseudo(o * c * k * k, 8), o, c, k);
                    let bias = pseudo(o, 9);
                    let s = Conv2dShape {
                        batch: b,
                        height: up * h,
                        width: up * w,
                        c_in: c,
                        c_out: o,
                        kernel: k,
                        stride: 1,
                        pad: [k / 2; 4],
                    };
                    let packed = PackedMatrix::with_isa(
                        Source::F32(&wt),
                        o,
                        s.patch(),
                        storage,
                        compute,
                        isa,
                    );
                    in_place += in_place_elements(&packed, &s).is_some() as usize;
                    let n = b * up * up * h * w * o;
                    let (mut got, mut want) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                    convolve(&x, up, &packed, Some(&bias), &s, &mut got, true);
                    convolve(&x, up, &packed, Some(&bias), &s, &mut want, false);
                    let differ: Vec<usize> = (0..n).filter(|&i| got[i] != want[i]).collect();
                    if let Some(&i) = differ.first() {
                        panic!(
                            "{isa:?} {compute:?} ({b}, {h}, {w}, {c}, {o}) up {up} k {k}: {} of {n} \
                             differ, first pixel {} channel {}: {} vs {}",
                            differ.len(),
                            i / o,
                            i % o,
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
        println!("{in_place} cases read in place");
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() >= Isa::Avx2 {
            assert!(in_place > 0, "no case took the in-place path");
        }
    }

    #[test]
    fn matches_direct_convolution_on_awkward_shapes() {
        let cases = [
            // (B, H, W, C, O, k, stride, pad)
            (1, 1, 1, 1, 1, 3, 1, [1; 4]),
            (2, 7, 5, 3, 4, 3, 1, [1; 4]),
            (1, 8, 6, 5, 3, 3, 2, [0, 1, 0, 1]),
            (2, 9, 9, 4, 6, 3, 2, [0, 1, 0, 1]),
            (1, 4, 3, 6, 5, 1, 1, [0; 4]),
        ];
        for (b, h, w, c, o, k, stride, pad) in cases {
            let s = Conv2dShape {
                batch: b,
                height: h,
                width: w,
                c_in: c,
                c_out: o,
                kernel: k,
                stride,
                pad,
            };
            let x_nchw = pseudo(b * c * h * w, 1);
            let wt = pseudo(o * c * k * k, 2);
            let bias = pseudo(o, 3);
            let want = naive_nchw(&x_nchw, &wt, &bias, &s);
            // NCHW -> NHWC
            let mut x = vec![0.0; x_nchw.len()];
            for bi in 0..b {
                for ci in 0..c {
                    for p in 0..h * w {
                        x[(bi * h * w + p) * c + ci] = x_nchw[(bi * c + ci) * h * w + p];
                    }
                }
            }
            let (ho, wo) = s.out_hw();
            let weight = patch_major_weight(&wt, o, c, k);
            // The output `[B, ho, wo, O]` with the weight stored and multiplied as given.
            let run = |storage, compute| {
                let packed = PackedMatrix::new(&weight, o, s.patch(), storage, compute);
                let mut got = vec![0.0; b * ho * wo * o];
                conv2d(&x, &packed, Some(&bias), &s, &mut got);
                got
            };
            let got = run(Storage::F32, Compute::F32);
            let worst = output_pairs(&got, &want, (b, ho * wo, o))
                .map(|(g, r)| (g - r).abs() / (1e-5 + r.abs()))
                .fold(0.0f64, f64::max);
            assert!(worst < 1e-3, "{s:?}: worst relative error {worst}");
            // bf16 products: relative L2 error of the whole output within bf16 rounding.
            let got = run(Storage::Bf16, Compute::Bf16);
            let (mut err, mut norm) = (0.0f64, 0.0f64);
            for (g, r) in output_pairs(&got, &want, (b, ho * wo, o)) {
                err += (g - r).powi(2);
                norm += r * r;
            }
            let rel = (err / norm.max(1e-30)).sqrt();
            assert!(rel < 1e-2, "{s:?}: bf16 relative L2 error {rel}");
        }
    }

    #[test]
    fn nearest_upsample_repeats_pixels() {
        let x: Vec<f32> = (0..2 * 2 * 3 * 2).map(|v| v as f32).collect(); // [2, 2, 3, 2]
        let y = upsample_nearest_2x(&x, 2, 2, 3, 2);
        for b in 0..2 {
            for oy in 0..4 {
                for ox in 0..6 {
                    for c in 0..2 {
                        assert_eq!(
                            y[((b * 4 + oy) * 6 + ox) * 2 + c],
                            x[((b * 2 + oy / 2) * 3 + ox / 2) * 2 + c]
                        );
                    }
                }
            }
        }
    }
}
