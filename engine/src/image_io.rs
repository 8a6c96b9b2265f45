//! Image files in and out: PNG, JPEG and WebP in (through the `image` crate), resized to the
//! model resolution; PNG out.
//!
//! The reference loads images with PIL, converts them to RGB and applies torchvision's
//! `Resize((H, W))` then `ToTensor()`. On a PIL image `Resize` is PIL's `Image.resize` with
//! `BILINEAR`: a triangle filter whose support widens by the scale factor when shrinking
//! (antialiased), a horizontal then a vertical pass, each with 22-bit fixed-point weights and
//! its result rounded to 8 bits. `resize_bilinear` below is that algorithm (`Resample.c`), so
//! resized pixels equal PIL's exactly. (`image::imageops::resize` with `FilterType::Triangle`
//! is the same filter in floating point with one rounding at the end: it differs from PIL by
//! one 8-bit level on about 11% of the values of a 61x47 -> 32x32 shrink.)

use crate::error::{Error, Result};
use crate::limits::{MAX_INPUT_BYTES, MAX_INPUT_SIDE};
use std::path::Path;

/// An RGB image as the VQ-VAE takes it: `[3, height, width]`, values in `[0, 1]`.
pub struct RgbImage {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// Reads an image file (PNG, JPEG, WebP), converts it to RGB 8 bits and, when its size differs,
/// resizes it to `height x width` (bilinear, antialiased when shrinking, as PIL).
pub fn load_image(path: &Path, height: usize, width: usize) -> Result<RgbImage> {
    let bad = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    crate::limits::regular_file(path)?;
    let open = || {
        image::ImageReader::open(path)
            .map_err(|e| Error::io(path, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))
    };
    decode_bounded(open, bad, height, width, Convert::Rgb)
}

/// [`load_image`] of an image file's bytes (an upload); errors name the input `image`.
pub fn decode_image(bytes: &[u8], height: usize, width: usize) -> Result<RgbImage> {
    decode_bytes(bytes, "image", height, width, Convert::Rgb)
}

/// An editing mask's file bytes at `height x width`, errors naming the input `name`: its RGB,
/// or, when it has transparent pixels, white where it is transparent and black where opaque
/// (OpenAI's convention for edit masks: the transparent part is regenerated).
pub fn decode_mask(bytes: &[u8], name: &str, height: usize, width: usize) -> Result<RgbImage> {
    decode_bytes(bytes, name, height, width, Convert::Mask)
}

/// The `(width, height)` an image file's header declares, errors naming the input `name`.
pub fn image_dimensions(bytes: &[u8], name: &str) -> Result<(usize, usize)> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::input(name, e.to_string()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::input(name, e.to_string()))?;
    Ok((w as usize, h as usize))
}

fn decode_bytes(
    bytes: &[u8],
    name: &str,
    height: usize,
    width: usize,
    convert: Convert,
) -> Result<RgbImage> {
    let bad = |message: String| Error::input(name, message);
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))
    };
    decode_bounded(open, bad, height, width, convert)
}

/// How a decoded image becomes 8-bit RGB.
#[derive(Clone, Copy)]
enum Convert {
    /// Alpha dropped, as PIL's `convert("RGB")`.
    Rgb,
    /// Transparency, where there is any, as white (see [`decode_mask`]).
    Mask,
}

impl Convert {
    fn apply(self, img: image::DynamicImage) -> image::RgbImage {
        if matches!(self, Convert::Rgb) || !img.color().has_alpha() {
            return img.to_rgb8();
        }
        let rgba = img.to_rgba8();
        if rgba.pixels().all(|p| p[3] == 255) {
            return image::DynamicImage::ImageRgba8(rgba).to_rgb8();
        }
        image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let v = 255 - rgba.get_pixel(x, y)[3];
            image::Rgb([v, v, v])
        })
    }
}

/// Decodes the image `open` reads (opened twice: once for the header), within
/// [`MAX_INPUT_SIDE`] and [`MAX_INPUT_BYTES`], to RGB resized to `height x width`.
fn decode_bounded<R: std::io::BufRead + std::io::Seek>(
    open: impl Fn() -> Result<image::ImageReader<R>>,
    bad: impl Fn(String) -> Error,
    height: usize,
    width: usize,
    convert: Convert,
) -> Result<RgbImage> {
    let open = || match open()? {
        reader if reader.format().is_some() => Ok(reader),
        _ => Err(bad(
            "unknown file format (PNG, JPEG and WebP are supported)".into(),
        )),
    };
    // The declared size, from the header alone: a decompression bomb is refused unread.
    let (w, h) = open()?.into_dimensions().map_err(|e| bad(e.to_string()))?;
    let side = MAX_INPUT_SIDE as u32;
    if w > side || h > side {
        return Err(bad(format!(
            "{w} x {h} px; images of at most {side} px a side are read"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(MAX_INPUT_BYTES);
    let mut reader = open()?;
    reader.limits(limits);
    // Grey, palette, 16-bit and alpha images become 8-bit RGB.
    let img = convert.apply(reader.decode().map_err(|e| bad(e.to_string()))?);
    Ok(from_rgb8(&resize_bilinear(img, height, width)))
}

/// Fixed-point precision of PIL's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` for the bilinear filter and `normalize_coeffs_8bpc`: for each
/// output index, the first input index and the fixed-point weights of its inputs.
fn bilinear_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * ss).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let scaled = v * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// One 8-bit pass of PIL's resampling along rows (`horizontal`) or columns of `[h, w, 3]`.
fn resample_pass(src: &[u8], h: usize, w: usize, out_len: usize, horizontal: bool) -> Vec<u8> {
    let in_len = if horizontal { w } else { h };
    let coeffs = bilinear_coeffs(in_len, out_len);
    let (oh, ow) = if horizontal {
        (h, out_len)
    } else {
        (out_len, w)
    };
    let mut out = vec![0u8; oh * ow * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (start, k) = &coeffs[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &kv) in k.iter().enumerate() {
                    let (sy, sx) = if horizontal {
                        (y, start + i)
                    } else {
                        (start + i, x)
                    };
                    acc += src[(sy * w + sx) * 3 + c] as i64 * kv as i64;
                }
                out[(y * ow + x) * 3 + c] = (acc >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// PIL's `Image.resize((width, height), BILINEAR)` on an RGB image (what torchvision's `Resize`
/// does to a PIL image): a horizontal pass then a vertical one, each only when that side changes.
pub fn resize_bilinear(img: image::RgbImage, height: usize, width: usize) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = img.into_raw();
    let mut cur_w = w;
    if width != w {
        data = resample_pass(&data, h, w, width, true);
        cur_w = width;
    }
    if height != h {
        data = resample_pass(&data, h, cur_w, height, false);
    }
    image::RgbImage::from_raw(width as u32, height as u32, data)
        .unwrap_or_else(|| image::RgbImage::new(width as u32, height as u32))
}

/// 8-bit RGB -> `[3, H, W]` in `[0, 1]` (`ToTensor`).
pub fn from_rgb8(img: &image::RgbImage) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0.0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = px.0[c] as f32 / 255.0;
        }
    }
    RgbImage {
        data,
        height: h,
        width: w,
    }
}

/// `[3, H, W]` in `[0, 1]` (clipped) -> 8-bit RGB, rounding as diffusers' `numpy_to_pil`
/// (`(x * 255).round()`).
pub fn to_rgb8(data: &[f32], height: usize, width: usize) -> Result<image::RgbImage> {
    if data.len() != 3 * height * width {
        return Err(Error::input(
            "image",
            format!("{} values do not form [3, {height}, {width}]", data.len()),
        ));
    }
    let hw = height * width;
    let pixels: Vec<u8> = (0..hw)
        .flat_map(|i| (0..3).map(move |c| (data[c * hw + i].clamp(0.0, 1.0) * 255.0).round() as u8))
        .collect();
    image::RgbImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| Error::input("image", "image buffer of the wrong size"))
}

/// Writes `[3, H, W]` in `[0, 1]` as a PNG.
pub fn save_png(path: &Path, data: &[f32], height: usize, width: usize) -> Result<()> {
    to_rgb8(data, height, width)?
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}
