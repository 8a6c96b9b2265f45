//! The editing flags of `muddit t2i`: img2img (`--init-image`), inpainting (`--mask`) and
//! outpainting (`--outpaint`). The input image is VQ-encoded by the run's backend and placed on
//! the canvas as an [`EditIds`]; what the edit used (paths and SHA-256 of its inputs) goes into
//! the PNG so that `--from-png` redoes it, and refuses inputs that changed since.

use crate::model::Models;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use muddit_engine::image_io::load_image;
use muddit_engine::pipeline::{mask_tokens, EditIds};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Strength of an img2img run when `--strength` is not given.
pub const IMG2IMG_STRENGTH: f32 = 0.6;

#[derive(Args, Clone, Default)]
pub struct EditFlags {
    /// Start from this image (img2img); with --mask, inpainting; with --outpaint, outpainting.
    /// It is resized to --width x --height (less the pads), by default its own size rounded
    /// to the model's size step.
    #[arg(long, short = 'i')]
    pub init_image: Option<PathBuf>,
    /// Fraction in (0, 1] of the editable tokens regenerated; the schedule starts where that
    /// much is masked [default: 0.6 for img2img, 1 with --mask or --outpaint].
    #[arg(long)]
    pub strength: Option<f32>,
    /// Inpainting mask for --init-image: white (>= 50%) pixels are regenerated, a token as soon
    /// as one of its pixels is; every other token is kept exactly as encoded.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Outpainting: grow the canvas of --init-image by `L,T,R,B` pixels (each rounded up to
    /// the model's size step); the new tokens start masked, the old ones are kept.
    #[arg(long, value_name = "L,T,R,B")]
    pub outpaint: Option<String>,
    /// Paste the input's pixels back where nothing was regenerated (outside the mask, the old
    /// part of an outpainting).
    #[arg(long)]
    pub keep_unmasked_pixels: bool,
}

/// What an edit used, stored in the PNG's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRecord {
    pub init_image: String,
    pub init_image_sha256: String,
    pub mask: Option<String>,
    pub mask_sha256: Option<String>,
    /// Pixels added per side (left, top, right, bottom), after rounding.
    pub outpaint: [usize; 4],
    pub strength: f32,
    pub keep_unmasked_pixels: bool,
}

/// An edit ready to run on a canvas of `width x height` pixels.
pub struct Edit {
    pub record: EditRecord,
    pub width: usize,
    pub height: usize,
    pub ids: EditIds,
    /// With `--keep-unmasked-pixels`: the input on the canvas `[3, H, W]` and, per pixel
    /// `[H, W]`, whether it is pasted back.
    pub paste: Option<(Vec<f32>, Vec<bool>)>,
}

impl Edit {
    /// Pastes the input's kept pixels into `pixels` (`[B, 3, H, W]`), if asked for.
    pub fn paste_into(&self, pixels: &mut [f32]) {
        let Some((input, kept)) = &self.paste else {
            return;
        };
        let plane = self.width * self.height;
        for image in pixels.chunks_exact_mut(3 * plane) {
            for (c, channel) in image.chunks_exact_mut(plane).enumerate() {
                for (p, v) in channel.iter_mut().enumerate() {
                    if kept[p] {
                        *v = input[c * plane + p];
                    }
                }
            }
        }
    }
}

/// The SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 10 hex digits of the SHA-256 of the transformer's weight files (in name order),
/// as image front-ends show a "Model hash".
pub fn model_hash(root: &Path) -> Result<String> {
    let dir = muddit_engine::model_dir::transformer_dir(root)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for path in &files {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::io::copy(&mut file, &mut hasher)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(hex(&hasher.finalize())[..10].to_string())
}

/// `L,T,R,B` in pixels.
fn parse_pads(text: &str) -> Result<[usize; 4]> {
    let values: Vec<usize> = text
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--outpaint {text}: expected four pixel counts L,T,R,B"))?;
    match values[..] {
        [l, t, r, b] => Ok([l, t, r, b]),
        _ => bail!("--outpaint {text}: expected four pixel counts L,T,R,B"),
    }
}

/// An input file of the edit: the flag's path, else the stored one, which must not have
/// changed since (its SHA-256).
fn input_file(
    flag: Option<&Path>,
    stored: Option<(&str, &str)>,
    what: &str,
) -> Result<Option<(PathBuf, String)>> {
    if let Some(path) = flag {
        return Ok(Some((path.to_path_buf(), sha256_file(path)?)));
    }
    let Some((path, want)) = stored else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    ensure!(
        path.exists(),
        "--from-png: the {what} {} it was made from is gone; pass --{what} FILE",
        path.display()
    );
    let got = sha256_file(&path)?;
    ensure!(
        got == want,
        "--from-png: the {what} {} changed since (SHA-256 {got}, the PNG stores {want}); pass --{what} {} to use it as it is now",
        path.display(),
        path.display()
    );
    Ok(Some((path, got)))
}

/// `value` rounded to the nearest positive multiple of `step`.
fn round_to(value: usize, step: usize) -> usize {
    ((value + step / 2) / step).max(1) * step
}

/// Reads the edit the flags (or the stored record) ask for, encodes its image with `models`;
/// `None` without an input image. `size`: `--width`, `--height` if given.
pub fn prepare(
    flags: &EditFlags,
    stored: Option<&EditRecord>,
    size: (Option<usize>, Option<usize>),
    models: &Models,
) -> Result<Option<Edit>> {
    let stored_input = stored.map(|r| (r.init_image.as_str(), r.init_image_sha256.as_str()));
    let Some((image_path, image_sha)) =
        input_file(flags.init_image.as_deref(), stored_input, "init-image")?
    else {
        let used = flags.strength.is_some()
            || flags.mask.is_some()
            || flags.outpaint.is_some()
            || flags.keep_unmasked_pixels;
        ensure!(
            !used,
            "--strength, --mask, --outpaint and --keep-unmasked-pixels need --init-image"
        );
        return Ok(None);
    };
    // Each stored part applies unless its flag is given.
    let stored_mask = stored.and_then(|r| r.mask.as_deref().zip(r.mask_sha256.as_deref()));
    let mask_file = input_file(flags.mask.as_deref(), stored_mask, "mask")?;
    let folder = models.folder();
    let f = folder.vqvae_cfg.scale_factor();
    let pads = match (&flags.outpaint, stored) {
        (Some(text), _) => parse_pads(text)?,
        (None, Some(r)) => r.outpaint,
        (None, None) => [0; 4],
    };
    let canvas = Canvas::new(&image_path, pads, size, folder.size_step())?;
    let (pads, (inner_w, inner_h), (width, height)) = (canvas.pads, canvas.inner, canvas.size);
    folder.grid(width, height)?;
    let editing_part = mask_file.is_some() || pads.iter().any(|&p| p > 0);
    let strength = flags
        .strength
        .or(stored.map(|r| r.strength))
        .unwrap_or(if editing_part { 1.0 } else { IMG2IMG_STRENGTH });
    ensure!(
        strength > 0.0 && strength <= 1.0,
        "--strength {strength}: must be in (0, 1]"
    );

    let image = load_image(&image_path, inner_h, inner_w)
        .with_context(|| format!("--init-image {}", image_path.display()))?;
    let ids = models.encode(&image.data, inner_h, inner_w)?;
    let mask_pixels = match &mask_file {
        Some((path, _)) => Some(load_mask(path, canvas.inner, pads)?),
        None => None,
    };
    let regenerate = mask_pixels
        .as_deref()
        .map(|m| mask_tokens(m, inner_h, inner_w, f))
        .transpose()?;
    let token_pads = pads.map(|p| p / f);
    let mask_id = folder.transformer_cfg.mask_id() as u32;
    let (grid, edit_ids) = EditIds::place(
        &ids,
        (inner_h / f, inner_w / f),
        regenerate.as_deref(),
        token_pads,
        mask_id,
        strength,
    )?;
    debug_assert_eq!(grid, (height / f, width / f));
    let keep_pixels = flags.keep_unmasked_pixels || stored.is_some_and(|r| r.keep_unmasked_pixels);
    ensure!(
        !keep_pixels || editing_part,
        "--keep-unmasked-pixels needs --mask or --outpaint (img2img regenerates everywhere)"
    );
    let paste = keep_pixels.then(|| {
        canvas_paste(
            &image.data,
            mask_pixels.as_deref(),
            (inner_w, inner_h),
            pads,
            (width, height),
        )
    });
    let record = EditRecord {
        init_image: image_path.display().to_string(),
        init_image_sha256: image_sha,
        mask: mask_file.as_ref().map(|(p, _)| p.display().to_string()),
        mask_sha256: mask_file.map(|(_, s)| s),
        outpaint: pads,
        strength,
        keep_unmasked_pixels: keep_pixels,
    };
    Ok(Some(Edit {
        record,
        width,
        height,
        ids: edit_ids,
        paste,
    }))
}

/// Where the input goes: pads (rounded up to the size step), the input's size and the canvas's.
struct Canvas {
    /// Pixels per side: left, top, right, bottom.
    pads: [usize; 4],
    /// `(w, h)` the input is resized to.
    inner: (usize, usize),
    /// `(W, H)` of the output.
    size: (usize, usize),
}

impl Canvas {
    /// `size`: `--width`, `--height` if given (the canvas, pads included); else the input's
    /// own size rounded to `step`, plus the pads.
    fn new(
        image: &Path,
        pads: [usize; 4],
        size: (Option<usize>, Option<usize>),
        step: usize,
    ) -> Result<Self> {
        let pads = pads.map(|p| p.div_ceil(step) * step);
        let (own_w, own_h) = image::image_dimensions(image)
            .with_context(|| format!("--init-image {}", image.display()))?;
        let inner = |flag: Option<usize>, own: u32, before: usize, after: usize, name: &str| {
            let Some(total) = flag else {
                return Ok(round_to(own as usize, step));
            };
            match total.checked_sub(before + after) {
                Some(v) if v > 0 && v % step == 0 => Ok(v),
                _ => bail!("--{name} {total}: less the --outpaint pads ({before} + {after} px) it must leave a positive multiple of {step} px for the input image"),
            }
        };
        let w = inner(size.0, own_w, pads[0], pads[2], "width")?;
        let h = inner(size.1, own_h, pads[1], pads[3], "height")?;
        Ok(Canvas {
            pads,
            inner: (w, h),
            size: (w + pads[0] + pads[2], h + pads[1] + pads[3]),
        })
    }
}

/// The mask's luma `[h, w]` in `[0, 1]` at the input's size `(w, h)`; without pads it must
/// have a white pixel.
fn load_mask(path: &Path, (w, h): (usize, usize), pads: [usize; 4]) -> Result<Vec<f32>> {
    let m = load_image(path, h, w).with_context(|| format!("--mask {}", path.display()))?;
    let plane = h * w;
    let luma: Vec<f32> = (0..plane)
        .map(|p| (m.data[p] + m.data[plane + p] + m.data[2 * plane + p]) / 3.0)
        .collect();
    ensure!(
        luma.iter().any(|&v| v >= 0.5) || pads.iter().any(|&p| p > 0),
        "--mask {}: no white pixel, nothing to regenerate",
        path.display()
    );
    Ok(luma)
}

/// The input `[3, h, w]` placed on the canvas `[3, H, W]` at the pads, and which canvas pixels
/// are pasted back: the input's own pixels outside the mask (all of them without a mask).
fn canvas_paste(
    image: &[f32],
    mask: Option<&[f32]>,
    (w, h): (usize, usize),
    pads: [usize; 4],
    (width, height): (usize, usize),
) -> (Vec<f32>, Vec<bool>) {
    let plane = width * height;
    let mut canvas = vec![0.0f32; 3 * plane];
    let mut kept = vec![false; plane];
    for y in 0..h {
        for x in 0..w {
            let (src, dst) = (y * w + x, (y + pads[1]) * width + x + pads[0]);
            for c in 0..3 {
                canvas[c * plane + dst] = image[c * w * h + src];
            }
            kept[dst] = mask.is_none_or(|m| m[src] < 0.5);
        }
    }
    (canvas, kept)
}
