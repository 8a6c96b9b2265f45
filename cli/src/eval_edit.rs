//! `muddit eval --tasks edit`: image editing on the held-out two-object scenes, judged by the
//! pixel checker of [`crate::shapes`]:
//! - inpainting: the left half (x < W/2) masked, the prompt names a new left object (another
//!   shape, a color neither object has) beside the scene's right one; correct when the checker
//!   sees exactly that scene (the right half kept: see below);
//! - img2img: the scene's own caption at strength 0.3; correct when the checker sees the scene;
//! - outpainting: the left half cropped (W/2 px wide) and grown back by W/2 px on the right
//!   with the scene's caption; correct when the checker sees the scene.
//!
//! The parts that keep a half (inpainting the right, outpainting the left) are judged as
//! `muddit t2i` delivers them: the input's pixels of that half pasted back (its default with
//! a mask or pads). Besides: how often the checker is right on the decoder's output alone
//! (`correct_without_paste`), how often that output's kept half is unchanged (mean absolute
//! difference below 16 levels: kept tokens are bit-identical, but the decoder's GroupNorm
//! takes its statistics over the whole image, so new content in one half moves the pixels of
//! the other), and the VQ-VAE's own ceiling (`roundtrip_correct`: the inputs encoded and
//! decoded).
//!
//! Each part is one batch (`EditIds` with one grid per image, one keep grid), image `i`
//! seeded `seed + i`.

use crate::eval::{frac, Ctx, ImageItem};
use crate::shapes::Scene;
use crate::{output, progress};
use anyhow::{Context, Result};
use muddit_engine::image_io::load_image;
use muddit_engine::pipeline::{EditIds, TextToImage};
use muddit_sampler::Guidance;

/// The unchanged side's bar: mean absolute difference in 8-bit levels.
const UNCHANGED_LEVELS: f64 = 16.0;
/// The img2img part's strength.
const IMG2IMG_STRENGTH: f32 = 0.3;
/// The parts, in the order they run; `--save-images` names their images `PART-NNN.png`.
pub const PARTS: [&str; 3] = ["inpaint", "img2img", "outpaint"];

/// One scene of the task: its input pixels `[3, S, S]` and what it shows.
struct Item {
    pixels: Vec<f32>,
    left: (String, String),
    right: (String, String),
}

/// What one part asks for: per image the prompt and the scene the checker must see.
struct Part {
    name: &'static str,
    prompts: Vec<String>,
    want: Vec<Scene>,
    /// `[B, h, w]` start ids, `[h, w]` keep grid, strength.
    edit: EditIds,
    /// The half of the output whose tokens are kept: the columns `x` with `kept(x)`.
    kept: Option<Half>,
}

impl Part {
    /// A part prompting each image with the caption of the scene it must show.
    fn new(
        ctx: &Ctx,
        name: &'static str,
        want: Vec<Scene>,
        edit: EditIds,
        kept: Option<Half>,
    ) -> Self {
        let prompts = want.iter().map(|s| ctx.world.caption(s)).collect();
        Part {
            name,
            prompts,
            want,
            edit,
            kept,
        }
    }
}

impl Item {
    /// The scene the input shows.
    fn scene(&self) -> Scene {
        pair(self.left.clone(), self.right.clone())
    }
}

/// A half of a square image.
#[derive(Clone, Copy)]
enum Half {
    Left,
    Right,
}

impl Half {
    fn holds(self, x: usize, size: usize) -> bool {
        match self {
            Half::Left => x < size / 2,
            Half::Right => x >= size / 2,
        }
    }
}

/// The `edit` section of the report and its summary line.
pub fn edits(
    ctx: &mut Ctx,
    images: &[&ImageItem],
    steps: usize,
    cfg: f32,
) -> Result<(serde_json::Value, String)> {
    let size = ctx.world.size;
    let items = pair_scenes(ctx, images, size)?;
    anyhow::ensure!(
        !items.is_empty(),
        "the evaluation set has no two-object scene to edit"
    );
    let guidance = Guidance::from_scale(cfg).with_context(|| format!("--cfg {cfg}"))?;
    let parts = [
        inpaint_part(ctx, &items, size)?,
        img2img_part(ctx, &items, size)?,
        outpaint_part(ctx, &items, size)?,
    ];
    let roundtrip = roundtrip_correct(ctx, &items, size)?;
    let mut section = serde_json::json!({ "n": items.len(), "steps": steps, "cfg": cfg, "roundtrip_correct": roundtrip });
    let mut pieces = Vec::new();
    for part in parts {
        let request = TextToImage {
            prompts: part.prompts.clone(),
            negative_prompt: String::new(),
            images_per_prompt: 1,
            width: size,
            height: size,
            sampler: ctx.sampler(steps, guidance),
            edit: Some(part.edit.clone()),
        };
        let bar = progress::steps_bar(steps, ctx.quiet, "eval edit");
        let out = ctx.pipeline.text_to_image(&request, &mut |_| bar.inc(1))?;
        bar.finish_and_clear();
        let (report, summary) = judge(ctx, &part, &items, &out.pixels, size)?;
        section[part.name] = report;
        pieces.push(summary);
    }
    let line = format!(
        "edit     {} scenes, {steps} steps: {}",
        items.len(),
        pieces.join(", ")
    );
    Ok((section, line))
}

/// The fraction of the inputs the checker still judges right after the VQ-VAE's encoding and
/// decoding: the ceiling of every edit that keeps tokens.
fn roundtrip_correct(ctx: &Ctx, items: &[Item], size: usize) -> Result<f64> {
    let f = ctx.pipeline.vqvae_cfg.scale_factor();
    let ids = encode(ctx, items, size, size)?;
    let pixels = ctx
        .pipeline
        .vqvae
        .decode(&ids, items.len(), size / f, size / f)?;
    let plane = size * size;
    let right = items.iter().enumerate().filter(|(i, item)| {
        let rgb = to_rgb8(&pixels[i * 3 * plane..(i + 1) * 3 * plane], plane);
        let want = item.scene();
        ctx.world.judge(&rgb, size, size).scene == Some(want)
    });
    Ok(frac(right.count(), items.len()))
}

/// The two-object scenes among `images`, loaded at `size x size`.
fn pair_scenes(ctx: &Ctx, images: &[&ImageItem], size: usize) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for item in images {
        let Scene::Pair { left, right } = Scene::from_key(&item.key)? else {
            continue;
        };
        let path = ctx.set_dir.join(&item.file);
        let pixels = load_image(&path, size, size)?.data;
        items.push(Item {
            pixels,
            left,
            right,
        });
    }
    Ok(items)
}

/// The ids `[B, h, w]` of the items' pixels, or of their left `w` columns.
fn encode(ctx: &Ctx, items: &[Item], size: usize, width: usize) -> Result<Vec<i64>> {
    let mut pixels = Vec::with_capacity(items.len() * 3 * size * width);
    for item in items {
        for row in item.pixels.chunks_exact(size) {
            pixels.extend_from_slice(&row[..width]);
        }
    }
    Ok(ctx
        .pipeline
        .vqvae
        .encode(&pixels, items.len(), size, width)?)
}

/// One [`EditIds`] for the batch: every image placed as [`EditIds::place`] does, the start
/// ids side by side `[B, h, w]`; the keep grid (the same for all) of the first.
fn batch_edit(
    ids: &[i64],
    grid: (usize, usize),
    regenerate: Option<&[bool]>,
    pads: [usize; 4],
    mask_id: u32,
    strength: f32,
) -> Result<EditIds> {
    let mut all: Option<EditIds> = None;
    for image in ids.chunks_exact(grid.0 * grid.1) {
        let (_, edit) = EditIds::place(image, grid, regenerate, pads, mask_id, strength)?;
        match &mut all {
            None => all = Some(edit),
            Some(all) => all.ids.extend(edit.ids),
        }
    }
    all.context("no image to edit")
}

/// A new left object for `item`: the next shape, and the first color after the left one's
/// that neither object has.
fn new_left(ctx: &Ctx, item: &Item) -> (String, String) {
    let shapes = &ctx.world.shapes;
    let colors: Vec<&String> = ctx.world.colors.keys().collect();
    let at = |list: &[&String], v: &String| list.iter().position(|c| *c == v).unwrap_or(0);
    let shape_refs: Vec<&String> = shapes.iter().collect();
    let shape = shapes[(at(&shape_refs, &item.left.0) + 1) % shapes.len()].clone();
    let start = at(&colors, &item.left.1);
    let color = (1..colors.len())
        .map(|k| colors[(start + k) % colors.len()])
        .find(|c| **c != item.left.1 && **c != item.right.1)
        .unwrap_or(colors[0])
        .clone();
    (shape, color)
}

fn pair(left: (String, String), right: (String, String)) -> Scene {
    Scene::Pair { left, right }
}

fn inpaint_part(ctx: &Ctx, items: &[Item], size: usize) -> Result<Part> {
    let f = ctx.pipeline.vqvae_cfg.scale_factor();
    let (h, w) = (size / f, size / f);
    let ids = encode(ctx, items, size, size)?;
    let regenerate: Vec<bool> = (0..h * w).map(|t| t % w < w / 2).collect();
    let mask_id = ctx.pipeline.transformer_cfg.mask_id() as u32;
    let edit = batch_edit(&ids, (h, w), Some(&regenerate), [0; 4], mask_id, 1.0)?;
    let want: Vec<Scene> = items
        .iter()
        .map(|i| pair(new_left(ctx, i), i.right.clone()))
        .collect();
    Ok(Part::new(ctx, PARTS[0], want, edit, Some(Half::Right)))
}

fn img2img_part(ctx: &Ctx, items: &[Item], size: usize) -> Result<Part> {
    let f = ctx.pipeline.vqvae_cfg.scale_factor();
    let ids = encode(ctx, items, size, size)?;
    let mask_id = ctx.pipeline.transformer_cfg.mask_id() as u32;
    let grid = (size / f, size / f);
    let edit = batch_edit(&ids, grid, None, [0; 4], mask_id, IMG2IMG_STRENGTH)?;
    let want = items.iter().map(Item::scene).collect();
    Ok(Part::new(ctx, PARTS[1], want, edit, None))
}

fn outpaint_part(ctx: &Ctx, items: &[Item], size: usize) -> Result<Part> {
    let f = ctx.pipeline.vqvae_cfg.scale_factor();
    let half = size / 2;
    let ids = encode(ctx, items, size, half)?;
    let mask_id = ctx.pipeline.transformer_cfg.mask_id() as u32;
    let pads = [0, 0, half / f, 0];
    let edit = batch_edit(&ids, (size / f, half / f), None, pads, mask_id, 1.0)?;
    let want = items.iter().map(Item::scene).collect();
    Ok(Part::new(ctx, PARTS[2], want, edit, Some(Half::Left)))
}

/// Judges a part's outputs `[B, 3, S, S]`: its report and its piece of the summary line.
fn judge(
    ctx: &Ctx,
    part: &Part,
    items: &[Item],
    pixels: &[f32],
    size: usize,
) -> Result<(serde_json::Value, String)> {
    let plane = size * size;
    let (mut correct, mut unchanged, mut correct_decoded) = (0, 0, 0);
    let mut diffs: Vec<f64> = Vec::new();
    let mut failures = Vec::new();
    for (i, (want, item)) in part.want.iter().zip(items).enumerate() {
        let px = &pixels[i * 3 * plane..(i + 1) * 3 * plane];
        let decoded = to_rgb8(px, plane);
        // What `muddit t2i` gives: the kept half pasted back (its default with a mask or pads).
        let rgb = match part.kept {
            Some(half) => {
                let input = to_rgb8(&item.pixels, plane);
                let seen = ctx.world.judge(&decoded, size, size).scene;
                correct_decoded += usize::from(seen.as_ref() == Some(want));
                let diff = half_diff(&decoded, &input, size, half);
                diffs.push(diff);
                unchanged += usize::from(diff < UNCHANGED_LEVELS);
                paste_half(&decoded, &input, size, half)
            }
            None => decoded,
        };
        let judged = ctx.world.judge(&rgb, size, size);
        let ok = judged.scene.as_ref() == Some(want);
        correct += usize::from(ok);
        if !ok {
            let seen = judged.describe();
            failures
                .push(serde_json::json!({ "index": i, "prompt": part.prompts[i], "seen": seen }));
        }
        if let Some(dir) = &ctx.args.save_images {
            let path = crate::eval::saved_image(dir, part.name, i);
            output::write_image(&path, ctx.args.overwrite, &rgb, size, size, None)?;
        }
    }
    let n = part.want.len();
    let mut report = serde_json::json!({
        "correct": frac(correct, n),
        "strength": format!("{}", part.edit.strength).parse::<f64>().unwrap_or(f64::NAN),
        "failures": failures,
    });
    if !diffs.is_empty() {
        report["correct_without_paste"] = frac(correct_decoded, n).into();
        report["kept_half_unchanged"] = frac(unchanged, n).into();
        report["kept_half_mean_abs_diff"] = (diffs.iter().sum::<f64>() / n as f64).into();
    }
    let summary = match part.kept {
        Some(_) => format!(
            "{} {:.1}% correct ({:.1}% without the paste-back, kept half decoded unchanged {:.1}%)",
            part.name,
            100.0 * frac(correct, n),
            100.0 * frac(correct_decoded, n),
            100.0 * frac(unchanged, n)
        ),
        None => format!("{} {:.1}% correct", part.name, 100.0 * frac(correct, n)),
    };
    Ok((report, summary))
}

/// `a` with `half` of `b` (both `[S, S, 3]`), as the paste-back gives.
fn paste_half(a: &[u8], b: &[u8], size: usize, half: Half) -> Vec<u8> {
    let mut out = a.to_vec();
    for (p, (o, v)) in out.chunks_exact_mut(3).zip(b.chunks_exact(3)).enumerate() {
        if half.holds(p % size, size) {
            o.copy_from_slice(v);
        }
    }
    out
}

/// `[3, S, S]` in `[0, 1]` -> `[S, S, 3]` bytes.
fn to_rgb8(px: &[f32], plane: usize) -> Vec<u8> {
    (0..plane)
        .flat_map(|p| {
            (0..3).map(move |c| (px[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8)
        })
        .collect()
}

/// Mean absolute difference, in 8-bit levels, over `half` of two `[S, S, 3]` images.
fn half_diff(a: &[u8], b: &[u8], size: usize, half: Half) -> f64 {
    let mut sum = 0u64;
    let mut count = 0u64;
    for (p, (x, y)) in a.chunks_exact(3).zip(b.chunks_exact(3)).enumerate() {
        if half.holds(p % size, size) {
            sum += x
                .iter()
                .zip(y)
                .map(|(u, v)| u.abs_diff(*v) as u64)
                .sum::<u64>();
            count += 3;
        }
    }
    sum as f64 / count.max(1) as f64
}
