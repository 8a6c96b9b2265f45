//! The editing flags of `muddit t2i`: img2img (`--init-image`), inpainting (`--mask`) and
//! outpainting (`--outpaint`). The input image is VQ-encoded by the run's backend and placed on
//! the canvas as an [`EditIds`]; what the edit used (paths and SHA-256 of its inputs) goes into
//! the PNG so that `--from-png` redoes it, and refuses inputs that changed since.

use crate::generate::named;
use crate::model::Models;
use anyhow::{ensure, Context, Result};
use clap::Args;
use muddit_engine::image_io::{decode_image, decode_mask, image_dimensions, RgbImage};
use muddit_engine::limits::MAX_SIDE;
use muddit_engine::pipeline::{mask_tokens, EditIds, ModelFolder};
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
    /// as one of its pixels is; every other token is kept exactly as encoded. A mask with
    /// transparent pixels is read the other way round (OpenAI's convention): the transparent
    /// part is regenerated.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Outpainting: grow the canvas of --init-image by `L,T,R,B` pixels (each rounded up to
    /// the model's size step); the new tokens start masked, the old ones are kept.
    #[arg(long, value_name = "L,T,R,B")]
    pub outpaint: Option<String>,
    /// Paste the input's pixels back where nothing was regenerated (outside the mask, the old
    /// part of an outpainting) [the default with --mask or --outpaint].
    #[arg(long, overrides_with = "no_keep_unmasked_pixels")]
    pub keep_unmasked_pixels: bool,
    /// Keep the decoder's pixels everywhere: no paste-back (the kept tokens stay exact, but
    /// the decoder redraws their pixels a little differently).
    #[arg(long, overrides_with = "keep_unmasked_pixels")]
    pub no_keep_unmasked_pixels: bool,
    /// Feather the paste-back: its mask blurred by a Gaussian of this standard deviation in
    /// pixels, so that the seam fades over about 2R px on each side [default: 0, a sharp seam].
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub mask_blur: Option<f32>,
}

impl EditFlags {
    /// Paste-back as the flags ask, `None` when they leave it to the default.
    fn keep_pixels(&self) -> Option<bool> {
        match (self.keep_unmasked_pixels, self.no_keep_unmasked_pixels) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
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
    /// The paste-back's feather (`--mask-blur`), 0 for a sharp seam.
    #[serde(default)]
    pub mask_blur: f32,
}

/// Largest `--mask-blur`, in pixels.
pub const MAX_MASK_BLUR: f32 = 256.0;

/// An edit as asked, its files read: what `muddit t2i`'s flags (with a stored record's parts)
/// and the server's `/v1/images/edits` fields both come to.
pub struct EditRequest<'a> {
    /// The input image file.
    pub image: &'a [u8],
    /// The inpainting mask file.
    pub mask: Option<&'a [u8]>,
    /// Pixels to add per side (left, top, right, bottom), before rounding.
    pub pads: [usize; 4],
    /// The canvas `(width, height)` if asked, pads included.
    pub size: (Option<usize>, Option<usize>),
    pub strength: Option<f32>,
    /// Paste-back, `None` for the default (on with a mask or pads).
    pub keep_pixels: Option<bool>,
    pub mask_blur: Option<f32>,
}

/// The input of an [`EditRequest`] a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EditInput {
    Image,
    Mask,
    Strength,
    Width,
    Height,
    KeepPixels,
    MaskBlur,
    Outpaint,
}

/// A refused edit: which input, and why (the message starts with the value when it is a
/// number).
#[derive(Debug)]
pub struct EditError {
    pub input: EditInput,
    pub message: String,
}

fn refuse<T>(input: EditInput, message: impl Into<String>) -> Result<T, EditError> {
    Err(EditError {
        input,
        message: message.into(),
    })
}

/// Which input made the canvas too large or uneven (`e` names its side), and why: the size
/// asked for that side, else the outpainting pads on it, else the input image's own size.
fn canvas_culprit(e: muddit_engine::Error, request: &EditRequest) -> (EditInput, String) {
    let height = matches!(&e, muddit_engine::Error::InvalidInput { name, .. } if name == "height");
    let message = engine_message(e);
    let [left, top, right, bottom] = request.pads;
    let (side, asked, padded, input) = match height {
        false => ("width", request.size.0, left + right, EditInput::Width),
        true => ("height", request.size.1, top + bottom, EditInput::Height),
    };
    if asked.is_some() {
        (input, message)
    } else if padded > 0 {
        let pads = format!("{left},{top},{right},{bottom}");
        (
            EditInput::Outpaint,
            format!("{pads}: the canvas {side}: {message}"),
        )
    } else {
        let hint = "(a width and height given resize the input)";
        (EditInput::Image, format!("its {side}: {message} {hint}"))
    }
}

/// The message of an engine error about an input (without the input's name).
fn engine_message(e: muddit_engine::Error) -> String {
    match e {
        muddit_engine::Error::InvalidInput { message, .. } => message,
        other => other.to_string(),
    }
}

/// An edit checked and its files decoded, ready to be encoded by the models.
pub struct PlannedEdit {
    /// The input at its size on the canvas.
    image: RgbImage,
    /// Per input pixel `[h, w]`, in `[0, 1]`: the mask (>= 0.5 is regenerated).
    mask: Option<Vec<f32>>,
    canvas: Canvas,
    pub strength: f32,
    pub keep_pixels: bool,
    pub mask_blur: f32,
}

/// Checks `request` against the model in `folder` and decodes its files.
pub fn plan(request: &EditRequest, folder: &ModelFolder) -> Result<PlannedEdit, EditError> {
    let step = folder.size_step();
    let own = image_dimensions(request.image, "image")
        .or_else(|e| refuse(EditInput::Image, engine_message(e)))?;
    let canvas = Canvas::new(own, request.pads, request.size, step)?;
    let (inner_w, inner_h) = canvas.inner;
    let (width, height) = canvas.size;
    if let Err(e) = folder.grid(width, height) {
        let (input, message) = canvas_culprit(e, request);
        return refuse(input, message);
    }
    let editing_part = request.mask.is_some() || request.pads.iter().any(|&p| p > 0);
    let default = if editing_part { 1.0 } else { IMG2IMG_STRENGTH };
    let strength = request.strength.unwrap_or(default);
    if !(strength > 0.0 && strength <= 1.0) {
        return refuse(
            EditInput::Strength,
            format!("{strength}: must be in (0, 1]"),
        );
    }
    let keep_pixels = request.keep_pixels.unwrap_or(editing_part);
    if keep_pixels && !editing_part {
        return refuse(
            EditInput::KeepPixels,
            "needs a mask or outpainting (img2img regenerates everywhere)",
        );
    }
    let mask_blur = request.mask_blur.unwrap_or(0.0);
    if !(0.0..=MAX_MASK_BLUR).contains(&mask_blur) {
        return refuse(
            EditInput::MaskBlur,
            format!("{mask_blur}: must be from 0 to {MAX_MASK_BLUR} px"),
        );
    }
    if mask_blur > 0.0 && !keep_pixels {
        return refuse(
            EditInput::MaskBlur,
            format!("{mask_blur}: feathers the paste-back, which this edit does not do"),
        );
    }
    let image = decode_image(request.image, inner_h, inner_w)
        .or_else(|e| refuse(EditInput::Image, engine_message(e)))?;
    let mask = match request.mask {
        Some(bytes) => Some(read_mask(bytes, canvas.inner, canvas.pads)?),
        None => None,
    };
    Ok(PlannedEdit {
        image,
        mask,
        canvas,
        strength,
        keep_pixels,
        mask_blur,
    })
}

impl PlannedEdit {
    /// The canvas `(width, height)`.
    pub fn size(&self) -> (usize, usize) {
        self.canvas.size
    }

    /// What the PNG records of this edit, its input image and mask given as (name, SHA-256).
    pub fn record(&self, image: (String, String), mask: Option<(String, String)>) -> EditRecord {
        let (mask, mask_sha256) = mask.unzip();
        EditRecord {
            init_image: image.0,
            init_image_sha256: image.1,
            mask,
            mask_sha256,
            outpaint: self.canvas.pads,
            strength: self.strength,
            keep_unmasked_pixels: self.keep_pixels,
            mask_blur: self.mask_blur,
        }
    }

    /// Encodes the input with `models` and places it on the canvas.
    pub fn encode(&self, models: &Models, record: EditRecord) -> Result<Edit> {
        let folder = models.folder();
        let f = folder.vqvae_cfg.scale_factor();
        let (inner_w, inner_h) = self.canvas.inner;
        let (width, height) = self.canvas.size;
        let ids = models.encode(&self.image.data, inner_h, inner_w)?;
        let regenerate = self
            .mask
            .as_deref()
            .map(|m| mask_tokens(m, inner_h, inner_w, f))
            .transpose()?;
        let mask_id = folder.transformer_cfg.mask_id() as u32;
        let (grid, ids) = EditIds::place(
            &ids,
            (inner_h / f, inner_w / f),
            regenerate.as_deref(),
            self.canvas.pads.map(|p| p / f),
            mask_id,
            self.strength,
        )?;
        debug_assert_eq!(grid, (height / f, width / f));
        let paste = self.keep_pixels.then(|| self.paste());
        Ok(Edit {
            record,
            width,
            height,
            ids,
            paste,
        })
    }

    /// The input on the canvas and how much of it each canvas pixel takes back.
    fn paste(&self) -> Paste {
        let (w, h) = self.canvas.inner;
        let (width, height) = self.canvas.size;
        let [left, top, ..] = self.canvas.pads;
        let plane = width * height;
        let mut input = vec![0.0f32; 3 * plane];
        let mut alpha = vec![0.0f32; plane];
        for y in 0..h {
            for x in 0..w {
                let (src, dst) = (y * w + x, (y + top) * width + x + left);
                for c in 0..3 {
                    input[c * plane + dst] = self.image.data[c * w * h + src];
                }
                let kept = self.mask.as_deref().is_none_or(|m| m[src] < 0.5);
                alpha[dst] = f32::from(u8::from(kept));
            }
        }
        if self.mask_blur > 0.0 {
            alpha = gaussian_blur(&alpha, width, height, self.mask_blur);
        }
        Paste { input, alpha }
    }
}

/// The input's pixels to paste back onto the output.
pub struct Paste {
    /// `[3, H, W]`
    input: Vec<f32>,
    /// `[H, W]` in `[0, 1]`: the input's weight in the composite.
    alpha: Vec<f32>,
}

/// An edit ready to run on a canvas of `width x height` pixels.
pub struct Edit {
    pub record: EditRecord,
    pub width: usize,
    pub height: usize,
    pub ids: EditIds,
    /// The paste-back, when the edit keeps the input's pixels.
    pub paste: Option<Paste>,
}

impl Edit {
    /// Composites the input's kept pixels into `pixels` (`[B, 3, H, W]`), if asked for:
    /// exactly the input where it is fully kept, a blend along a feathered seam.
    pub fn paste_into(&self, pixels: &mut [f32]) {
        let Some(Paste { input, alpha }) = &self.paste else {
            return;
        };
        let plane = self.width * self.height;
        for image in pixels.chunks_exact_mut(3 * plane) {
            for (channel, from) in image.chunks_exact_mut(plane).zip(input.chunks_exact(plane)) {
                for ((v, &x), &a) in channel.iter_mut().zip(from).zip(alpha) {
                    if a >= 1.0 {
                        *v = x;
                    } else if a > 0.0 {
                        *v = a * x + (1.0 - a) * *v;
                    }
                }
            }
        }
    }
}

/// `plane [H, W]` blurred by a Gaussian of standard deviation `sigma` px (truncated at 3
/// sigma, edges repeated), rows then columns.
fn gaussian_blur(plane: &[f32], width: usize, height: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    // The centre weighs 1 even where `2 sigma^2` underflows to 0 (a blur of no width).
    let weights: Vec<f32> = (-radius..=radius)
        .map(|d| match d {
            0 => 1.0,
            d => (-(d * d) as f32 / (2.0 * sigma * sigma)).exp(),
        })
        .collect();
    let total: f32 = weights.iter().sum();
    let pass = |src: &[f32], along_rows: bool| -> Vec<f32> {
        let (n, len) = if along_rows {
            (height, width)
        } else {
            (width, height)
        };
        let at = |line: usize, i: usize| match along_rows {
            true => line * width + i,
            false => i * width + line,
        };
        let mut out = vec![0.0f32; src.len()];
        for line in 0..n {
            for i in 0..len {
                let sum: f32 = weights
                    .iter()
                    .zip(-radius..)
                    .map(|(w, d)| {
                        w * src[at(line, (i as isize + d).clamp(0, len as isize - 1) as usize)]
                    })
                    .sum();
                out[at(line, i)] = sum / total;
            }
        }
        out
    };
    pass(&pass(plane, true), false)
}

/// The SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
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
pub fn parse_pads(text: &str) -> std::result::Result<[usize; 4], String> {
    let values: Option<Vec<usize>> = text.split(',').map(|s| s.trim().parse().ok()).collect();
    match values.as_deref() {
        Some(&[l, t, r, b]) => Ok([l, t, r, b]),
        _ => Err(format!("{text}: expected four pixel counts L,T,R,B")),
    }
}

/// An input file of the edit: its path, SHA-256 and bytes. The flag's path, else the stored
/// one, which must not have changed since (its SHA-256).
fn input_file(
    flag: Option<&Path>,
    stored: Option<(&str, &str)>,
    what: &str,
) -> Result<Option<(PathBuf, String, Vec<u8>)>> {
    let read = |path: &Path| -> Result<(String, Vec<u8>)> {
        muddit_engine::limits::regular_file(path).with_context(|| format!("--{what}"))?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok((sha256_hex(&bytes), bytes))
    };
    if let Some(path) = flag {
        let (sha, bytes) = read(path)?;
        return Ok(Some((path.to_path_buf(), sha, bytes)));
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
    let (got, bytes) = read(&path)?;
    ensure!(
        got == want,
        "--from-png: the {what} {} changed since (SHA-256 {got}, the PNG stores {want}); pass --{what} {} to use it as it is now",
        path.display(),
        path.display()
    );
    Ok(Some((path, got, bytes)))
}

/// `value` rounded to the nearest positive multiple of `step`.
fn round_to(value: usize, step: usize) -> usize {
    ((value + step / 2) / step).max(1) * step
}

/// Reads the edit the flags (or the stored record) ask for, encodes its image with `models`;
/// `None` without an input image. `size`: the width and height asked for (`--width`,
/// `--height`, else the stored record's), `given`: which of them the flags gave.
pub fn prepare(
    flags: &EditFlags,
    stored: Option<(&EditRecord, &Path)>,
    (size, given): ((Option<usize>, Option<usize>), (bool, bool)),
    models: &Models,
) -> Result<Option<Edit>> {
    let (stored, png) = (stored.map(|s| s.0), stored.map(|s| s.1));
    let stored_input = stored.map(|r| (r.init_image.as_str(), r.init_image_sha256.as_str()));
    let Some((image_path, image_sha, image)) =
        input_file(flags.init_image.as_deref(), stored_input, "init-image")?
    else {
        let used = flags.strength.is_some()
            || flags.mask.is_some()
            || flags.outpaint.is_some()
            || flags.keep_pixels().is_some()
            || flags.mask_blur.is_some();
        ensure!(
            !used,
            "--strength, --mask, --outpaint, --[no-]keep-unmasked-pixels and --mask-blur need --init-image"
        );
        return Ok(None);
    };
    // Each stored part applies unless its flag is given.
    let stored_mask = stored.and_then(|r| r.mask.as_deref().zip(r.mask_sha256.as_deref()));
    let mask_file = input_file(flags.mask.as_deref(), stored_mask, "mask")?;
    let pads = match (&flags.outpaint, stored) {
        (Some(text), _) => parse_pads(text).map_err(|e| anyhow::anyhow!("--outpaint {e}"))?,
        (None, Some(r)) => r.outpaint,
        (None, None) => [0; 4],
    };
    let request = EditRequest {
        image: &image,
        mask: mask_file.as_ref().map(|(_, _, bytes)| bytes.as_slice()),
        pads,
        size,
        strength: flags.strength.or(stored.map(|r| r.strength)),
        keep_pixels: flags
            .keep_pixels()
            .or(stored.map(|r| r.keep_unmasked_pixels)),
        mask_blur: flags.mask_blur.or(stored.map(|r| r.mask_blur)),
    };
    let planned = plan(&request, models.folder()).map_err(|e| {
        // A value the flags did not give came from the `--from-png` record: named as stored.
        let named = |flag: &str, given: bool| named(flag, given, png, &e.message);
        anyhow::anyhow!(match e.input {
            EditInput::Image => format!("--init-image {}: {}", image_path.display(), e.message),
            EditInput::Mask => match &mask_file {
                Some((path, ..)) => format!("--mask {}: {}", path.display(), e.message),
                None => format!("--mask: {}", e.message),
            },
            EditInput::Strength => named("--strength", flags.strength.is_some()),
            EditInput::Width => named("--width", given.0),
            EditInput::Height => named("--height", given.1),
            EditInput::KeepPixels => named("--keep-unmasked-pixels", flags.keep_pixels().is_some()),
            EditInput::MaskBlur => named("--mask-blur", flags.mask_blur.is_some()),
            EditInput::Outpaint => named("--outpaint", flags.outpaint.is_some()),
        })
    })?;
    let record = planned.record(
        (image_path.display().to_string(), image_sha),
        mask_file.map(|(p, s, _)| (p.display().to_string(), s)),
    );
    planned.encode(models, record).map(Some)
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
    /// `size`: the canvas if asked, pads included; else the input's own size (`own`)
    /// rounded to `step`, plus the pads.
    fn new(
        own: (usize, usize),
        pads: [usize; 4],
        size: (Option<usize>, Option<usize>),
        step: usize,
    ) -> Result<Self, EditError> {
        if let Some(p) = pads.into_iter().find(|&p| p > MAX_SIDE) {
            return refuse(
                EditInput::Outpaint,
                format!("{p} px: a pad cannot be larger than the largest side, {MAX_SIDE} px"),
            );
        }
        // At most MAX_SIDE + step each, so neither this nor the sums below can overflow.
        let pads = pads.map(|p| p.div_ceil(step) * step);
        let inner = |asked: Option<usize>, own: usize, before: usize, after: usize, input| {
            let Some(total) = asked else {
                return Ok(round_to(own, step));
            };
            match total.checked_sub(before + after) {
                Some(v) if v > 0 && v % step == 0 => Ok(v),
                _ => refuse(input, format!("{total}: less the outpainting pads ({before} + {after} px) it must leave a positive multiple of {step} px for the input image")),
            }
        };
        let w = inner(size.0, own.0, pads[0], pads[2], EditInput::Width)?;
        let h = inner(size.1, own.1, pads[1], pads[3], EditInput::Height)?;
        Ok(Canvas {
            pads,
            inner: (w, h),
            size: (w + pads[0] + pads[2], h + pads[1] + pads[3]),
        })
    }
}

/// The mask's luma `[h, w]` in `[0, 1]` at the input's size `(w, h)`; without pads it must
/// have a white pixel.
fn read_mask(
    bytes: &[u8],
    (w, h): (usize, usize),
    pads: [usize; 4],
) -> Result<Vec<f32>, EditError> {
    let m =
        decode_mask(bytes, "mask", h, w).or_else(|e| refuse(EditInput::Mask, engine_message(e)))?;
    let plane = h * w;
    let luma: Vec<f32> = (0..plane)
        .map(|p| (m.data[p] + m.data[plane + p] + m.data[2 * plane + p]) / 3.0)
        .collect();
    if !luma.iter().any(|&v| v >= 0.5) && pads.iter().all(|&p| p == 0) {
        return refuse(
            EditInput::Mask,
            "no white (or transparent) pixel, nothing to regenerate",
        );
    }
    Ok(luma)
}
