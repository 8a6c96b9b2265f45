//! `muddit eval`: the default model's held-out set (`models/shapes-eval/`, written by
//! `tools/shapes/make_eval.py`) through the engine's pipelines, scored without a human:
//! text-to-image by the pixel checker of [`crate::shapes`], captions by exact match and by the
//! attributes of the scene they describe, VQA by exact match of the answer.

use crate::output::{self, Outputs};
use crate::shapes::{Scene, World};
use crate::{progress, Global};
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use muddit_engine::image_io::load_image;
use muddit_engine::pipeline::{ImageToText, Pipeline, TextToImage};
use muddit_sampler::{DrawRule, Guidance, SamplerConfig, Temperature};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// The evaluation set: a folder holding `eval.json` and its images [default: the committed
    /// shapes-world set, built into the binary].
    #[arg(long)]
    set: Option<PathBuf>,
    /// Only the first N prompts, the first N images and their questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Text-to-image steps [default: the model's `muddit.json`].
    #[arg(long)]
    steps: Option<usize>,
    /// Image-to-text steps [default: the model's `muddit.json`].
    #[arg(long)]
    i2t_steps: Option<usize>,
    /// Guidance scale for text-to-image [default: the model's `muddit.json`].
    #[arg(long)]
    cfg: Option<f32>,
    #[command(flatten)]
    draws: crate::model::DrawFlags,
    /// Gumbel temperature of the re-masking confidence: `START,END` or one value [default: 2,0].
    #[arg(long)]
    temperature: Option<String>,
    /// Seed of the sampler's draws (the same seed gives the same numbers).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write each generated image here as `t2i-NNN.png` (`inpaint-`, `img2img-`,
    /// `outpaint-NNN.png` for the edit task).
    #[arg(long)]
    pub save_images: Option<PathBuf>,
    /// Replace images already in the --save-images folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Only these tasks, comma-separated [default: all four].
    #[arg(long, value_enum, value_delimiter = ',')]
    tasks: Vec<Task>,
}

#[derive(Deserialize)]
struct EvalSet {
    world: serde_json::Value,
    t2i: Vec<PromptItem>,
    images: Vec<ImageItem>,
}

#[derive(Deserialize)]
struct PromptItem {
    prompt: String,
    key: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct ImageItem {
    pub file: String,
    pub key: Vec<String>,
    caption: String,
    qa: Vec<QaItem>,
}

#[derive(Deserialize)]
struct QaItem {
    question: String,
    answer: String,
}

/// Fraction, as a number in [0, 1]; 0 for an empty set.
pub(crate) fn frac(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// `(matching, total)` attributes of `got` against `want`: shape and color of each object and,
/// for one shape, its position. A caption of the wrong count or outside the world's sentences
/// matches none.
fn attributes(got: Option<&Scene>, want: &Scene) -> (usize, usize) {
    let total = want.objects().len() * 2 + usize::from(want.position().is_some());
    let Some(got) = got.filter(|g| g.count() == want.count()) else {
        return (0, total);
    };
    let mut n = 0;
    for (g, w) in got.objects().iter().zip(want.objects()) {
        n += usize::from(g.0 == w.0) + usize::from(g.1 == w.1);
    }
    if want.position().is_some() {
        n += usize::from(got.position() == want.position());
    }
    (n, total)
}

/// One of the scored tasks.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Task {
    T2i,
    Caption,
    Vqa,
    /// Inpainting, img2img and outpainting of the two-object scenes (`crate::eval_edit`).
    Edit,
}

/// What every task needs: the loaded pipeline, the world, the sampler settings.
pub(crate) struct Ctx<'a> {
    pub pipeline: Pipeline,
    pub world: World,
    pub set_dir: PathBuf,
    pub args: &'a EvalArgs,
    greedy: bool,
    pub quiet: bool,
    temperature: Temperature,
}

impl Ctx<'_> {
    pub fn sampler(&self, steps: usize, guidance: Guidance) -> SamplerConfig {
        SamplerConfig {
            steps,
            schedule: self.pipeline.schedule,
            temperature: self.temperature,
            guidance,
            draw: if self.greedy {
                DrawRule::Greedy
            } else {
                DrawRule::Sample
            },
            seed: self.args.seed,
        }
    }
}

pub fn run(args: EvalArgs, global: &Global) -> Result<()> {
    let total_start = Instant::now();
    let set_dir = match &args.set {
        Some(dir) => dir.clone(),
        None => crate::embedded::DEFAULT_SET.folder(global.quiet)?,
    };
    let json_path = set_dir.join("eval.json");
    muddit_engine::limits::regular_file(&json_path).context("--set")?;
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("--set: reading {}", json_path.display()))?;
    let set: EvalSet =
        serde_json::from_str(&text).with_context(|| format!("{}", json_path.display()))?;
    let world = World::from_json(&set.world).with_context(|| format!("{}", json_path.display()))?;
    let limit = args.limit.unwrap_or(usize::MAX);
    ensure!(limit > 0, "--limit must be at least 1");
    let prompts: Vec<&PromptItem> = set.t2i.iter().take(limit).collect();
    let images: Vec<&ImageItem> = set.images.iter().take(limit).collect();
    ensure!(
        !prompts.is_empty() && !images.is_empty(),
        "{}: no prompts or no images",
        json_path.display()
    );
    let want_t2i: Vec<Scene> = prompts
        .iter()
        .map(|p| Scene::from_key(&p.key))
        .collect::<Result<_>>()
        .with_context(|| format!("{}", json_path.display()))?;
    let want_img: Vec<Scene> = images
        .iter()
        .map(|p| Scene::from_key(&p.key))
        .collect::<Result<_>>()
        .with_context(|| format!("{}", json_path.display()))?;
    let pairs = want_img.iter().any(|s| matches!(s, Scene::Pair { .. }));
    let tasks = if !args.tasks.is_empty() {
        args.tasks.clone()
    } else if pairs {
        vec![Task::T2i, Task::Caption, Task::Vqa, Task::Edit]
    } else {
        if !global.quiet {
            eprintln!(
                "eval: no edit scores: none of the {} images is a two-object scene (a larger --limit takes some in)",
                images.len()
            );
        }
        vec![Task::T2i, Task::Caption, Task::Vqa]
    };
    if tasks.contains(&Task::Edit) && !pairs {
        bail!(
            "--tasks edit: none of the {} images is a two-object scene to edit (a larger --limit takes some in)",
            images.len()
        );
    }
    if tasks.contains(&Task::Vqa) && images.iter().all(|i| i.qa.is_empty()) {
        bail!("{}: no questions", json_path.display());
    }

    let root = crate::model::resolve_root(global.model.as_deref(), global.quiet)?;
    let defaults = crate::model::defaults(&root)?;
    let t2i_steps = args.steps.unwrap_or(defaults.t2i_steps);
    let i2t_steps = args.i2t_steps.unwrap_or(defaults.i2t_steps);
    let cfg = args.cfg.unwrap_or(defaults.cfg);
    muddit_engine::limits::check_steps(t2i_steps).context("--steps")?;
    muddit_engine::limits::check_steps(i2t_steps).context("--i2t-steps")?;
    let pair_count = want_img
        .iter()
        .filter(|s| matches!(s, Scene::Pair { .. }))
        .count();
    plan_saved_images(&args, &tasks, prompts.len(), pair_count, global.quiet)?;
    let load_start = Instant::now();
    let mut ctx = Ctx {
        pipeline: Pipeline::load_with(&root, global.compute())?,
        world,
        set_dir,
        args: &args,
        greedy: args.draws.greedy(defaults.greedy),
        quiet: global.quiet,
        temperature: match &args.temperature {
            Some(t) => crate::generate::parse_temperature(t)?,
            None => Temperature::default(),
        },
    };
    let load_s = load_start.elapsed().as_secs_f64();

    let (dtype, isa, instruction) = arithmetic(global);
    let mut report = serde_json::json!({
        "model": root.display().to_string(),
        "set": ctx.set_dir.display().to_string(),
        "seed": args.seed,
        "greedy": ctx.greedy,
        "dtype": dtype,
        "cpu_kernels": { "isa": isa, "instruction": instruction },
    });
    let mut seconds = serde_json::json!({ "load": load_s });
    let mut lines = vec![
        format!("model    {}", root.display()),
        format!("dtype    {dtype} ({isa}, {instruction})"),
    ];
    let mut record = |task: &str, start: Instant, (section, line): (serde_json::Value, String)| {
        report[task] = section;
        seconds[task] = start.elapsed().as_secs_f64().into();
        lines.push(line);
    };
    if tasks.contains(&Task::T2i) {
        let start = Instant::now();
        let done = text_to_image(&mut ctx, &prompts, &want_t2i, t2i_steps, cfg)?;
        record("t2i", start, done);
    }
    let r = defaults.resolution;
    let mut pixels = Vec::with_capacity(images.len() * 3 * r * r);
    if tasks.contains(&Task::Caption) || tasks.contains(&Task::Vqa) {
        for item in &images {
            let path = ctx.set_dir.join(&item.file);
            pixels.extend(load_image(&path, r, r)?.data);
        }
    }
    let set = EvalImages {
        items: &images,
        pixels: &pixels,
        resolution: r,
    };
    if tasks.contains(&Task::Caption) {
        let start = Instant::now();
        let done = captions(&mut ctx, &set, &want_img, i2t_steps)?;
        record("caption", start, done);
    }
    if tasks.contains(&Task::Vqa) {
        let start = Instant::now();
        let done = answers(&mut ctx, &set, i2t_steps)?;
        record("vqa", start, done);
    }
    if tasks.contains(&Task::Edit) {
        let start = Instant::now();
        let (section, line) = crate::eval_edit::edits(&mut ctx, &images, t2i_steps, cfg)?;
        report["edit"] = section;
        seconds["edit"] = start.elapsed().as_secs_f64().into();
        lines.push(line);
    }
    let total_s = total_start.elapsed().as_secs_f64();
    seconds["total"] = total_s.into();
    if global.json {
        report["seconds"] = seconds;
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let parts: Vec<String> = ["t2i", "caption", "vqa", "edit"]
            .iter()
            .filter_map(|k| seconds[k].as_f64().map(|s| format!("{k} {s:.1}")))
            .collect();
        lines.push(format!(
            "time     {total_s:.1} s (load {load_s:.1}, {})",
            parts.join(", ")
        ));
        println!("{}", lines.join("\n"));
    }
    Ok(())
}

/// The arithmetic of the run's matrix products: `(dtype, level, instruction)` of `--dtype` on
/// this CPU.
fn arithmetic(global: &Global) -> (&'static str, &'static str, &'static str) {
    let dtype = global.dtype.name();
    let kernels = muddit_engine::isa::kernels();
    kernels
        .into_iter()
        .find(|(d, _, _)| *d == dtype)
        .unwrap_or(kernels[0])
}

/// Where `--save-images` puts image `i` of `task` (`t2i`, or a part of the edit task).
pub(crate) fn saved_image(dir: &std::path::Path, task: &str, i: usize) -> PathBuf {
    dir.join(format!("{task}-{i:03}.png"))
}

/// Creates the `--save-images` folder and checks every image the run will write there before
/// any model work: `prompts` t2i images, `pairs` images per edit part. Says so when the tasks
/// asked for write no image.
fn plan_saved_images(
    args: &EvalArgs,
    tasks: &[Task],
    prompts: usize,
    pairs: usize,
    quiet: bool,
) -> Result<()> {
    let Some(dir) = &args.save_images else {
        return Ok(());
    };
    let mut names: Vec<(&str, usize)> = Vec::new();
    if tasks.contains(&Task::T2i) {
        names.push(("t2i", prompts));
    }
    if tasks.contains(&Task::Edit) {
        names.extend(crate::eval_edit::PARTS.iter().map(|part| (*part, pairs)));
    }
    if names.is_empty() {
        if !quiet {
            eprintln!(
                "eval: --save-images {}: nothing saved: only the t2i and edit tasks make images",
                dir.display()
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--save-images {}", dir.display()))?;
    let mut outputs = Outputs::new(args.overwrite);
    for (task, count) in names {
        for i in 0..count {
            outputs.plan("--save-images", &saved_image(dir, task, i))?;
        }
    }
    Ok(())
}

/// Text to image, judged by the checker: the report's `t2i` section and its summary line.
fn text_to_image(
    ctx: &mut Ctx,
    prompts: &[&PromptItem],
    want: &[Scene],
    steps: usize,
    cfg: f32,
) -> Result<(serde_json::Value, String)> {
    let (width, height) = (ctx.world.size, ctx.world.size);
    let request = TextToImage {
        prompts: prompts.iter().map(|p| p.prompt.clone()).collect(),
        negative_prompt: String::new(),
        images_per_prompt: 1,
        width,
        height,
        sampler: ctx.sampler(
            steps,
            Guidance::from_scale(cfg).with_context(|| format!("--cfg {cfg}"))?,
        ),
        edit: None,
    };
    let bar = progress::steps_bar(steps, ctx.quiet, "eval t2i");
    let generated = ctx.pipeline.text_to_image(&request, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let plane = width * height;
    let mut t2i = [0usize; 5]; // full, count, colors, shapes, position
    let mut failures = Vec::new();
    for (i, want) in want.iter().enumerate() {
        let px = &generated.pixels[i * 3 * plane..(i + 1) * 3 * plane];
        let rgb: Vec<u8> = (0..plane)
            .flat_map(|p| {
                (0..3).map(move |c| (px[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8)
            })
            .collect();
        let judged = ctx.world.judge(&rgb, height, width);
        let a = judged.agreement(want);
        for (slot, ok) in t2i
            .iter_mut()
            .zip([a.full, a.count, a.colors, a.kinds, a.position])
        {
            *slot += usize::from(ok);
        }
        if !a.full {
            let seen = judged.describe();
            failures
                .push(serde_json::json!({ "index": i, "prompt": prompts[i].prompt, "seen": seen }));
        }
        if let Some(dir) = &ctx.args.save_images {
            let path = saved_image(dir, "t2i", i);
            output::write_image(&path, ctx.args.overwrite, &rgb, width, height, None)?;
        }
    }
    let n = want.len();
    let section = serde_json::json!({
        "n": n, "steps": steps, "cfg": cfg,
        "full": frac(t2i[0], n), "count": frac(t2i[1], n), "colors": frac(t2i[2], n),
        "shapes": frac(t2i[3], n), "position": frac(t2i[4], n),
        "failures": failures,
    });
    let line = format!(
        "t2i      {n} prompts, {steps} steps, cfg {cfg}: {:.1}% fully correct (count {:.1}%, colors {:.1}%, shapes {:.1}%, position {:.1}%)",
        100.0 * frac(t2i[0], n),
        100.0 * frac(t2i[1], n),
        100.0 * frac(t2i[2], n),
        100.0 * frac(t2i[3], n),
        100.0 * frac(t2i[4], n)
    );
    Ok((section, line))
}

/// The eval images of the captioning and VQA tasks: `pixels [N, 3, r, r]` of `items` at
/// `resolution` r.
#[derive(Clone, Copy)]
struct EvalImages<'a> {
    items: &'a [&'a ImageItem],
    pixels: &'a [f32],
    resolution: usize,
}

/// Captions, by exact match and by attributes: the `caption` section and its summary line.
fn captions(
    ctx: &mut Ctx,
    set: &EvalImages,
    want: &[Scene],
    steps: usize,
) -> Result<(serde_json::Value, String)> {
    let EvalImages {
        items: images,
        pixels,
        resolution,
    } = *set;
    let bar = progress::steps_bar(steps, ctx.quiet, "eval caption");
    let request = ImageToText {
        images: pixels.to_vec(),
        batch: images.len(),
        resolution,
        questions: None,
        sampler: ctx.sampler(steps, Guidance::Off),
    };
    let captions = ctx.pipeline.image_to_text(&request, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let mut exact = 0;
    let (mut attr_ok, mut attr_all) = (0, 0);
    let mut failures = Vec::new();
    for (i, (item, want)) in images.iter().zip(want).enumerate() {
        let got = captions[i].text.trim();
        if got == item.caption {
            exact += 1;
        } else {
            failures
                .push(serde_json::json!({ "file": item.file, "want": item.caption, "got": got }));
        }
        let (n, of) = attributes(ctx.world.parse_caption(got).as_ref(), want);
        attr_ok += n;
        attr_all += of;
    }
    let section = serde_json::json!({
        "n": images.len(), "steps": steps,
        "exact": frac(exact, images.len()), "attributes": frac(attr_ok, attr_all),
        "failures": failures,
    });
    let line = format!(
        "caption  {} images, {steps} steps: {:.1}% exact, {:.1}% of attributes right",
        images.len(),
        100.0 * frac(exact, images.len()),
        100.0 * frac(attr_ok, attr_all)
    );
    Ok((section, line))
}

/// Answers, by exact match: the `vqa` section and its summary line.
fn answers(ctx: &mut Ctx, set: &EvalImages, steps: usize) -> Result<(serde_json::Value, String)> {
    let EvalImages {
        items: images,
        pixels,
        resolution,
    } = *set;
    let plane = 3 * resolution * resolution;
    let qa: Vec<(usize, &QaItem)> = images
        .iter()
        .enumerate()
        .flat_map(|(i, item)| item.qa.iter().map(move |q| (i, q)))
        .collect();
    let mut qa_pixels = Vec::with_capacity(qa.len() * plane);
    for (i, _) in &qa {
        qa_pixels.extend_from_slice(&pixels[i * plane..(i + 1) * plane]);
    }
    let bar = progress::steps_bar(steps, ctx.quiet, "eval vqa");
    let request = ImageToText {
        images: qa_pixels,
        batch: qa.len(),
        resolution,
        questions: Some(qa.iter().map(|(_, q)| q.question.clone()).collect()),
        sampler: ctx.sampler(steps, Guidance::Off),
    };
    let answers = ctx.pipeline.image_to_text(&request, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let mut right = 0;
    let mut failures = Vec::new();
    for ((i, q), a) in qa.iter().zip(&answers) {
        if a.text.trim() == q.answer {
            right += 1;
        } else {
            failures.push(serde_json::json!({ "file": images[*i].file, "question": q.question, "want": q.answer, "got": a.text.trim() }));
        }
    }
    let section = serde_json::json!({
        "n": qa.len(), "steps": steps, "accuracy": frac(right, qa.len()), "failures": failures,
    });
    let line = format!(
        "vqa      {} questions: {:.1}% right",
        qa.len(),
        100.0 * frac(right, qa.len())
    );
    Ok((section, line))
}
