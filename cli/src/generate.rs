//! `muddit t2i`: text-to-image.

use crate::output::{self, ImageFormat, Outputs};
use crate::png_meta::{self, GenerationParams};
use crate::{progress, Global};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use muddit_engine::limits::ModelShape;
use muddit_engine::pipeline::TextToImage;
use muddit_engine::tensor_io::HostTensor;
use muddit_sampler::{DrawRule, Guidance, MaskSchedule, SamplerConfig, Temperature};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// Seed of the sampler's random draws [default: a new one, printed and stored in the PNG].
    #[arg(long)]
    seed: Option<u64>,
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
    /// Regenerate the image a PNG from `muddit t2i` was made from (its stored parameters; flags
    /// given here override them).
    #[arg(long)]
    from_png: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
}

pub fn parse_temperature(text: &str) -> Result<Temperature> {
    let parse = |s: &str| {
        s.trim()
            .parse::<f32>()
            .with_context(|| format!("--temperature {text}: `{s}` is not a number"))
    };
    match text.split_once(',') {
        Some((a, b)) => Ok(Temperature::Anneal {
            start: parse(a)?,
            end: parse(b)?,
        }),
        None => Ok(Temperature::Scalar(parse(text)?)),
    }
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
    let prompts = match (&stored, args.prompt.is_empty()) {
        (_, false) => args.prompt.clone(),
        (Some(p), true) => p.prompts.clone(),
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
    let root = crate::model::resolve_root(model_arg.as_deref())?;
    let defaults = crate::model::defaults(&root)?;
    let pick = |flag: Option<usize>, from: fn(&GenerationParams) -> usize, default: usize| {
        flag.or(stored.as_ref().map(from)).unwrap_or(default)
    };
    let steps = pick(args.steps, |p| p.steps, defaults.t2i_steps);
    let width = pick(args.width, |p| p.width, defaults.width);
    let height = pick(args.height, |p| p.height, defaults.height);
    let images_per_prompt = pick(args.batch, |p| p.images_per_prompt, 1);
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
    let seed = args
        .seed
        .or(stored.as_ref().map(|p| p.seed))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    let temperature = match (&args.temperature, &stored) {
        (Some(t), _) => parse_temperature(t)?,
        (None, Some(p)) => Temperature::Anneal {
            start: p.temperature[0],
            end: p.temperature[1],
        },
        (None, None) => Temperature::default(),
    };
    if greedy && args.temperature.is_some() && !global.quiet {
        eprintln!("note: --temperature has no effect with --greedy (no noise is added)");
    }
    if greedy && args.seed.is_some() && !global.quiet {
        eprintln!("note: --seed has no effect with --greedy (no random draws)");
    }
    ensure!(images_per_prompt > 0, "--batch must be at least 1");
    let batch = prompts.len().saturating_mul(images_per_prompt);
    let stored_batch = args.from_png.as_deref().filter(|_| args.batch.is_none());
    stored_check(
        muddit_engine::limits::check_images("batch", batch),
        stored_batch,
    )?;

    let pattern = args.output.clone().unwrap_or_else(|| {
        if batch == 1 {
            "out.png".into()
        } else {
            "out-%d.png".into()
        }
    });
    // With --from-png, only the stored image is written; the rest of its batch is recomputed.
    let wanted: Vec<usize> = match (&stored, args.prompt.is_empty() && args.batch.is_none()) {
        (Some(p), true) => vec![p.index],
        _ => (0..batch).collect(),
    };
    ensure!(
        wanted.iter().all(|&i| i < batch),
        "the PNG's stored index is outside its batch"
    );
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
    }

    let schedule = match args
        .schedule
        .as_deref()
        .or(stored.as_ref().map(|p| p.schedule.as_str()))
    {
        Some(name) => {
            MaskSchedule::from_config_name(name).with_context(|| format!("--schedule {name}"))?
        }
        None => muddit_engine::pipeline::read_schedule(&root)?,
    };
    let sampler = SamplerConfig {
        steps,
        schedule,
        temperature,
        guidance: Guidance::from_scale(cfg).with_context(|| format!("--cfg {cfg}"))?,
        draw: if greedy {
            DrawRule::Greedy
        } else {
            DrawRule::Sample
        },
        seed,
    };
    let request = TextToImage {
        prompts: prompts.clone(),
        negative_prompt: negative_prompt.clone(),
        images_per_prompt,
        width,
        height,
        sampler,
    };
    stored_check(
        ModelShape::read(&root)?.check_text_to_image(&request),
        args.from_png.as_deref(),
    )?;
    let models = crate::model::Models::load(&root, global)?;
    if !global.quiet && args.seed.is_none() && stored.is_none() && !greedy {
        eprintln!("seed: {seed}");
    }
    let bar = progress::steps_bar(steps, global.quiet, "t2i");
    let images = models.text_to_image(&request, &mut |e| {
        bar.set_message(format!(
            "t2i {:.2} s/step",
            e.transformer.as_secs_f64() + e.sampler.as_secs_f64()
        ));
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    let (h, w) = images.grid;
    let model_name = model_arg
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut written = Vec::new();
    for (&i, path) in wanted.iter().zip(&outputs) {
        let rgb = rgb8(&images.pixels, i, width, height);
        let params = generation_params(&request, cfg, i, &model_name);
        output::write_image(path, args.overwrite, &rgb, width, height, Some(&params))
            .map_err(|e| partial_failure(e, &written))?;
        if !global.quiet {
            eprintln!("wrote {}", path.display());
        }
        written.push(serde_json::json!({ "path": path.display().to_string(), "index": i, "prompt": prompts[i / images_per_prompt], "seed": seed }));
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

/// Image `i` of pixels `[B, 3, H, W]` in `[0, 1]` as 8-bit `[H, W, 3]`.
pub fn rgb8(pixels: &[f32], i: usize, width: usize, height: usize) -> Vec<u8> {
    let plane = width * height;
    let px = &pixels[i * 3 * plane..(i + 1) * 3 * plane];
    (0..plane)
        .flat_map(|p| (0..3).map(move |c| (px[c * plane + p] * 255.0).round() as u8))
        .collect()
}

/// What the PNG of image `index` of `request` stores: everything `--from-png` needs (`cfg` as
/// given: guidance at 1 or less is stored as off in the request).
pub fn generation_params(
    request: &TextToImage,
    cfg: f32,
    index: usize,
    model: &str,
) -> GenerationParams {
    let sampler = &request.sampler;
    let (start, end) = sampler.temperature.endpoints();
    GenerationParams {
        prompts: request.prompts.clone(),
        negative_prompt: request.negative_prompt.clone(),
        images_per_prompt: request.images_per_prompt,
        index,
        seed: sampler.seed,
        steps: sampler.steps,
        cfg,
        temperature: [start, end],
        schedule: sampler.schedule.config_name().to_string(),
        greedy: sampler.draw == DrawRule::Greedy,
        width: request.width,
        height: request.height,
        model: model.to_string(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
    }
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
    })
}
