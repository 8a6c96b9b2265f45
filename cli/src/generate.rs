//! `muddit t2i`: text-to-image.

use crate::output::{self, ImageFormat, Outputs};
use crate::png_meta::{self, GenerationParams};
use crate::{progress, Global};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use muddit_engine::limits::ModelShape;
use muddit_engine::pipeline::TextToImage;
use muddit_engine::tensor_io::HostTensor;
use muddit_engine::tokenizer::{ClipTokenizer, TEXT_TOKENS};
use muddit_sampler::{DrawRule, Guidance, MaskSchedule, SamplerConfig, Temperature};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct T2iArgs {
    /// The prompt; repeat the flag for a batch of prompts.
    #[arg(long)]
    prompt: Vec<String>,
    /// What to steer away from (used with guidance; default empty).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Denoising steps [default: the model's `muddit.json`, else 48].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less turns guidance off [default: the model's, else 9].
    #[arg(long)]
    cfg: Option<f32>,
    /// Image width in pixels [default: the model's, else 512].
    #[arg(long)]
    width: Option<usize>,
    /// Image height in pixels [default: the model's, else 512].
    #[arg(long)]
    height: Option<usize>,
    /// Seed of the sampler's random draws; image `i` of the batch uses seed + i, printed and
    /// stored in its PNG. -1: a new one [default: a new one].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_seed)]
    seed: Option<Seed>,
    /// Gumbel temperature: `START,END` (linear ramp) or one value (ramped down to 0.01) [default: 2,0].
    #[arg(long)]
    temperature: Option<String>,
    /// Masking schedule [default: the model's scheduler config].
    #[arg(long)]
    schedule: Option<String>,
    /// Images per prompt [default: 1].
    #[arg(long)]
    batch: Option<usize>,
    #[command(flatten)]
    draws: crate::model::DrawFlags,
    /// Output PNG; with several images, a pattern with `%d` (the image's index) [default: out.png, or out-%d.png].
    #[arg(long, short)]
    output: Option<String>,
    /// Also write the final id grids (`ids`, i64 [B,h,w]) to this safetensors file.
    #[arg(long)]
    output_ids: Option<PathBuf>,
    #[command(flatten)]
    edit: crate::edit::EditFlags,
    /// Regenerate the image a PNG from `muddit t2i` was made from, alone (its stored
    /// parameters, edit inputs included: they must not have changed; flags given here override
    /// them).
    #[arg(long)]
    from_png: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
}

/// `--seed`: a seed, or -1 for a new one.
#[derive(Clone, Copy, Debug)]
pub enum Seed {
    Fixed(u64),
    Random,
}

fn parse_seed(text: &str) -> std::result::Result<Seed, String> {
    match text.trim() {
        "-1" => Ok(Seed::Random),
        t => t.parse().map(Seed::Fixed).map_err(|_| {
            format!(
                "`{text}` is not a seed (0 to {}, or -1 for a new one)",
                u64::MAX
            )
        }),
    }
}

pub fn parse_temperature(text: &str) -> Result<Temperature> {
    let parse = |s: &str| {
        s.trim()
            .parse::<f32>()
            .with_context(|| format!("--temperature {text}: `{s}` is not a number"))
    };
    let temperature = match text.split_once(',') {
        Some((a, b)) => Temperature::Anneal {
            start: parse(a)?,
            end: parse(b)?,
        },
        None => Temperature::Scalar(parse(text)?),
    };
    check_temperature(temperature).with_context(|| format!("--temperature {text}"))?;
    Ok(temperature)
}

/// A temperature scales the Gumbel noise of the re-masking: finite and 0 (no noise) or more; a
/// negative one would reverse the noise, which no sampler means.
fn check_temperature(temperature: Temperature) -> Result<()> {
    let (start, end) = temperature.endpoints();
    for value in [start, end] {
        ensure!(
            value.is_finite() && value >= 0.0,
            "{value} is not a temperature: it must be a finite number, 0 or more"
        );
    }
    Ok(())
}

/// The temperature of a run: `--temperature`, else the one stored in the PNG `png`, else the
/// default (2, 0).
fn pick_temperature(
    flag: Option<&str>,
    stored: Option<(&GenerationParams, &Path)>,
) -> Result<Temperature> {
    match (flag, stored) {
        (Some(t), _) => parse_temperature(t),
        (None, Some((p, png))) => {
            let [start, end] = p.temperature;
            let temperature = Temperature::Anneal { start, end };
            check_temperature(temperature)
                .with_context(|| format!("{}: stored `temperature`", png.display()))?;
            Ok(temperature)
        }
        (None, None) => Ok(Temperature::default()),
    }
}

/// How an error names a value: `--flag VALUE` as given, or, when the flag was not given and
/// the value came from the PNG `png`, the PNG and its stored field.
pub fn named(flag: &str, given: bool, png: Option<&Path>, value: impl std::fmt::Display) -> String {
    match (given, png) {
        (false, Some(png)) => format!(
            "{}: stored `{}` {value}",
            png.display(),
            flag.trim_start_matches("--").replace('-', "_")
        ),
        _ => format!("{flag} {value}"),
    }
}

/// A note on stderr when `--temperature` is given (`given`) to greedy draws, which add no noise.
pub fn note_temperature(greedy: bool, given: bool) {
    if greedy && given {
        eprintln!("note: --temperature has no effect with --greedy (no noise is added)");
    }
}

/// Notes on stderr for flags that have no effect on this run: the draws under `--greedy`, the
/// negative prompt without guidance.
fn note_unused(args: &T2iArgs, greedy: bool, guidance: Guidance, cfg: f32) {
    note_temperature(greedy, args.temperature.is_some());
    if greedy && args.seed.is_some() {
        eprintln!("note: --seed has no effect with --greedy (no random draws)");
    }
    if !guidance.needs_uncond() && args.negative_prompt.is_some() {
        eprintln!("note: --negative-prompt has no effect: guidance is off (cfg {cfg}; --cfg above 1 turns it on), and it is not recorded");
    }
}

/// A note on stderr for each prompt (and the negative prompt) longer than the text encoder's
/// window: the tokens past it are cut, as upstream cuts them, and the note names them.
fn note_truncated(tokenizer: &ClipTokenizer, request: &TextToImage) -> Result<()> {
    let named = request.prompts.iter().enumerate().map(|(i, p)| {
        let name = match request.prompts.len() {
            1 => "--prompt".to_string(),
            _ => format!("--prompt {}", i + 1),
        };
        (name, p)
    });
    let negative = ("--negative-prompt".to_string(), &request.negative_prompt);
    for (name, text) in named.chain(std::iter::once(negative)) {
        if let Some((tokens, tail)) = tokenizer.truncated_tail(text)? {
            eprintln!("note: {name} is {tokens} tokens; the text encoder reads the first {TEXT_TOKENS}, so {tail:?} is left out");
        }
    }
    Ok(())
}

/// The output file of image `i` of `n`.
fn output_path(pattern: &str, i: usize, n: usize) -> Result<PathBuf> {
    if pattern.contains("%d") {
        return Ok(PathBuf::from(pattern.replace("%d", &i.to_string())));
    }
    ensure!(
        n == 1,
        "--output {pattern}: {n} images need a pattern with %d, e.g. out-%d.png"
    );
    Ok(PathBuf::from(pattern))
}

pub fn run(args: T2iArgs, global: &Global) -> Result<()> {
    let stored = args
        .from_png
        .as_deref()
        .map(png_meta::read_params)
        .transpose()?;
    if let (Some(p), Some(png)) = (&stored, args.from_png.as_deref()) {
        check_stored_batch(p, png)?;
    }
    // --from-png alone redoes its one image: its prompt, its own seed, a batch of one.
    let redo = stored.is_some() && args.prompt.is_empty() && args.batch.is_none();
    let prompts = match (&stored, args.prompt.is_empty()) {
        (_, false) => args.prompt.clone(),
        (Some(p), true) => vec![p.prompt().to_string()],
        (None, true) => bail!("no prompt: pass --prompt TEXT (repeat it for several prompts)"),
    };
    ensure!(
        prompts.iter().all(|p| !p.trim().is_empty()) || stored.is_some(),
        "--prompt is empty"
    );
    let model_arg = global.model.clone().or_else(|| {
        stored
            .as_ref()
            .filter(|p| !p.model.is_empty())
            .map(|p| PathBuf::from(&p.model))
    });
    let root = crate::model::resolve_root(model_arg.as_deref(), global.quiet)?;
    let defaults = crate::model::defaults(&root)?;
    let pick = |flag: Option<usize>, from: fn(&GenerationParams) -> usize, default: usize| {
        flag.or(stored.as_ref().map(from)).unwrap_or(default)
    };
    let steps = pick(args.steps, |p| p.steps, defaults.t2i_steps);
    let width = pick(args.width, |p| p.width, defaults.width);
    let height = pick(args.height, |p| p.height, defaults.height);
    let images_per_prompt = args.batch.unwrap_or(1);
    let cfg = args
        .cfg
        .or(stored.as_ref().map(|p| p.cfg))
        .unwrap_or(defaults.cfg);
    let negative_prompt = args
        .negative_prompt
        .clone()
        .or(stored.as_ref().map(|p| p.negative_prompt.clone()))
        .unwrap_or_default();
    let greedy = args
        .draws
        .greedy(stored.as_ref().map_or(defaults.greedy, |p| p.greedy));
    let seed = match (args.seed, &stored) {
        (Some(Seed::Fixed(s)), _) => s,
        (None, Some(p)) => p.seed,
        (Some(Seed::Random), _) | (None, None) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let random_seed = !matches!(args.seed, Some(Seed::Fixed(_))) && stored.is_none();
    let png = args.from_png.as_deref();
    let temperature = pick_temperature(args.temperature.as_deref(), stored.as_ref().zip(png))?;
    let guidance =
        Guidance::from_scale(cfg).with_context(|| named("--cfg", args.cfg.is_some(), png, cfg))?;
    if !global.quiet {
        note_unused(&args, greedy, guidance, cfg);
    }
    // Without guidance no negative prompt is read: none is recorded.
    let negative_prompt = match guidance.needs_uncond() {
        true => negative_prompt,
        false => String::new(),
    };
    ensure!(images_per_prompt > 0, "--batch must be at least 1");
    let batch = prompts.len().saturating_mul(images_per_prompt);
    muddit_engine::limits::check_images("batch", batch)?;

    let pattern = args.output.clone().unwrap_or_else(|| {
        if batch == 1 {
            "out.png".into()
        } else {
            "out-%d.png".into()
        }
    });
    let wanted: Vec<usize> = (0..batch).collect();
    let outputs: Vec<PathBuf> = wanted
        .iter()
        .map(|&i| output_path(&pattern, i, wanted.len()))
        .collect::<Result<_>>()?;
    let mut targets = Outputs::new(args.overwrite);
    for path in &outputs {
        targets.plan("--output", path)?;
        ImageFormat::of("--output", path)?;
    }
    if let Some(path) = &args.output_ids {
        targets.plan("--output-ids", path)?;
        refuse_image_name(path)?;
    }

    let schedule = match args
        .schedule
        .as_deref()
        .or(stored.as_ref().map(|p| p.schedule.as_str()))
    {
        Some(name) => MaskSchedule::from_config_name(name)
            .with_context(|| named("--schedule", args.schedule.is_some(), png, name))?,
        None => muddit_engine::pipeline::read_schedule(&root)?,
    };
    let sampler = SamplerConfig {
        steps,
        schedule,
        temperature,
        guidance,
        draw: if greedy {
            DrawRule::Greedy
        } else {
            DrawRule::Sample
        },
        seed,
    };
    let mut request = TextToImage {
        prompts: prompts.clone(),
        negative_prompt: negative_prompt.clone(),
        images_per_prompt,
        width,
        height,
        sampler,
        edit: None,
    };
    // The PNG's edit applies with new prompts too; flags override its parts.
    let stored_edit = stored.as_ref().and_then(|p| p.edit.as_ref());
    let shape = ModelShape::read(&root)?;
    // An edit's size is known once its input is read, after the models load.
    if args.edit.init_image.is_none() && stored_edit.is_none() {
        stored_check(
            shape.check_text_to_image(&request),
            args.from_png.as_deref(),
        )?;
    }
    let models = crate::model::Models::load(&root, global)?;
    if !global.quiet {
        note_truncated(&models.folder().tokenizer, &request)?;
    }
    let size = match stored.as_ref().filter(|_| stored_edit.is_some()) {
        Some(p) => (args.width.or(Some(p.width)), args.height.or(Some(p.height))),
        None => (args.width, args.height),
    };
    let stored_edit = stored_edit.zip(args.from_png.as_deref());
    let given = (args.width.is_some(), args.height.is_some());
    let edit = crate::edit::prepare(&args.edit, stored_edit, (size, given), &models)?;
    if let Some(edit) = &edit {
        (request.width, request.height) = (edit.width, edit.height);
        request.edit = Some(edit.ids.clone());
        stored_check(
            shape.check_text_to_image(&request),
            args.from_png.as_deref(),
        )?;
    }
    let (width, height) = (request.width, request.height);
    if !global.quiet && random_seed && !greedy {
        eprintln!("seed: {seed}");
    }
    let bar = progress::steps_bar(steps, global.quiet, "t2i");
    let mut images = models.text_to_image(&request, &mut |e| {
        bar.set_message(format!(
            "t2i {:.2} s/step",
            e.transformer.as_secs_f64() + e.sampler.as_secs_f64()
        ));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    if let Some(edit) = &edit {
        edit.paste_into(&mut images.pixels);
    }

    let (h, w) = images.grid;
    let model = ModelRecord::of(&root, model_arg.as_deref())?;
    let mut written = Vec::new();
    for (&i, path) in wanted.iter().zip(&outputs) {
        let rgb = rgb8(&images.pixels, i, width, height);
        let mut params = GenerationParams {
            edit: edit.as_ref().map(|e| e.record.clone()),
            ..generation_params(&request, cfg, i, &model)
        };
        // A redone image keeps its batch's record: the same PNG again, byte for byte.
        if let Some(p) = stored.as_ref().filter(|_| redo) {
            (params.prompts, params.images_per_prompt, params.index) =
                (p.prompts.clone(), p.images_per_prompt, p.index);
        }
        output::write_image(path, args.overwrite, &rgb, width, height, Some(&params))
            .map_err(|e| partial_failure(e, &written))?;
        if !global.quiet {
            eprintln!("wrote {} (seed {})", path.display(), params.seed);
        }
        written.push(serde_json::json!({ "path": path.display().to_string(), "index": i, "prompt": prompts[i / images_per_prompt], "seed": params.seed }));
    }
    if let Some(path) = &args.output_ids {
        let ids = BTreeMap::from([(
            "ids".to_string(),
            HostTensor::i64(vec![images.batch, h, w], images.ids.clone()),
        )]);
        output::write_tensors(path, args.overwrite, &ids)
            .map_err(|e| partial_failure(e, &written))?;
    }
    if global.json {
        let report = serde_json::json!({ "images": written, "ids": args.output_ids.as_ref().map(|p| p.display().to_string()), "text_encode_ms": images.text_encode.as_secs_f64() * 1e3, "vq_decode_ms": images.vq_decode.as_secs_f64() * 1e3 });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Refuses an `--output-ids` name with an image's extension: the file holds a safetensors
/// tensor of ids, which no image viewer opens.
fn refuse_image_name(path: &Path) -> Result<()> {
    if ImageFormat::of("--output-ids", path).is_ok() {
        bail!(
            "--output-ids {}: writes the ids as a safetensors file, not an image; name it .safetensors",
            path.display()
        );
    }
    Ok(())
}

/// Image `i` of pixels `[B, 3, H, W]` in `[0, 1]` as 8-bit `[H, W, 3]`.
pub fn rgb8(pixels: &[f32], i: usize, width: usize, height: usize) -> Vec<u8> {
    let plane = width * height;
    let px = &pixels[i * 3 * plane..(i + 1) * 3 * plane];
    (0..plane)
        .flat_map(|p| (0..3).map(move |c| (px[c * plane + p] * 255.0).round() as u8))
        .collect()
}

/// What the PNGs of one model record about it.
#[derive(Clone, Debug)]
pub struct ModelRecord {
    /// `--model` as given, else empty.
    pub model: String,
    /// The model folder's name.
    pub name: String,
    /// [`crate::edit::model_hash`] of its weights.
    pub hash: String,
}

impl ModelRecord {
    /// The record of the model at `root`, named by `--model` `arg` if given.
    pub fn of(root: &Path, arg: Option<&Path>) -> Result<Self> {
        Ok(ModelRecord {
            model: arg.map(|p| p.display().to_string()).unwrap_or_default(),
            name: root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hash: crate::edit::model_hash(root)?,
        })
    }
}

/// What the PNG of image `index` of `request` stores: everything `--from-png` needs (`cfg` as
/// given: guidance at 1 or less is stored as off in the request), with the image's own seed
/// (the request's + `index`); no edit.
pub fn generation_params(
    request: &TextToImage,
    cfg: f32,
    index: usize,
    model: &ModelRecord,
) -> GenerationParams {
    let sampler = &request.sampler;
    let (start, end) = sampler.temperature.endpoints();
    GenerationParams {
        prompts: request.prompts.clone(),
        negative_prompt: request.negative_prompt.clone(),
        images_per_prompt: request.images_per_prompt,
        index,
        seed: sampler.seed.wrapping_add(index as u64),
        steps: sampler.steps,
        cfg,
        temperature: [start, end],
        schedule: sampler.schedule.config_name().to_string(),
        greedy: sampler.draw == DrawRule::Greedy,
        width: request.width,
        height: request.height,
        model: model.model.clone(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        model_name: model.name.clone(),
        model_hash: model.hash.clone(),
        edit: None,
    }
}

/// The batch `params` (read from `png`) records: within the limits, its index inside it.
fn check_stored_batch(params: &GenerationParams, png: &Path) -> Result<()> {
    let batch = params
        .prompts
        .len()
        .saturating_mul(params.images_per_prompt);
    stored_check(
        muddit_engine::limits::check_images("batch", batch),
        Some(png),
    )?;
    ensure!(
        params.index < batch,
        "{}: the stored index {} is outside its batch of {batch}",
        png.display(),
        params.index
    );
    Ok(())
}

/// A check of numbers that may come from the parameters stored in the PNG `png`: its error
/// names the PNG.
fn stored_check(checked: muddit_engine::Result<()>, png: Option<&std::path::Path>) -> Result<()> {
    match png {
        Some(png) => checked.with_context(|| format!("{}: stored parameters", png.display())),
        None => Ok(checked?),
    }
}

/// A write that failed after `written` images were: the error, and which files are there.
fn partial_failure(e: anyhow::Error, written: &[serde_json::Value]) -> anyhow::Error {
    let paths: Vec<&str> = written.iter().filter_map(|w| w["path"].as_str()).collect();
    if paths.is_empty() {
        return e;
    }
    anyhow::anyhow!("{e:#}; written before it: {}", paths.join(", "))
}

/// Exposed for `bench`: the same defaults.
pub fn default_request(
    prompt: &str,
    steps: usize,
    cfg: f32,
    width: usize,
    height: usize,
    schedule: MaskSchedule,
) -> Result<TextToImage> {
    Ok(TextToImage {
        prompts: vec![prompt.to_string()],
        negative_prompt: String::new(),
        images_per_prompt: 1,
        width,
        height,
        sampler: SamplerConfig {
            steps,
            schedule,
            temperature: Temperature::default(),
            guidance: Guidance::from_scale(cfg)?,
            draw: DrawRule::Sample,
            seed: 0,
        },
        edit: None,
    })
}
