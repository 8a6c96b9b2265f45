//! `muddit caption` and `muddit vqa`: image-to-text.

use crate::{progress, Global};
use anyhow::{ensure, Context, Result};
use clap::Args;
use muddit_engine::image_io::load_image;
use muddit_engine::limits::ModelShape;
use muddit_engine::pipeline::ImageToText;
use muddit_sampler::{DrawRule, Guidance, SamplerConfig, Temperature};
use std::path::PathBuf;

#[derive(Args)]
pub struct CaptionArgs {
    /// Image files (PNG, JPEG, WebP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Denoising steps [default: the model's `muddit.json`, else 32].
    #[arg(long)]
    steps: Option<usize>,
    /// Images are resized to this many pixels square [default: the model's, else 512].
    #[arg(long)]
    resolution: Option<usize>,
    #[command(flatten)]
    draws: crate::model::DrawFlags,
    /// Seed of the sampler's random draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Gumbel temperature: `START,END` or one value [default: 2,0].
    #[arg(long)]
    temperature: Option<String>,
    /// Print the decoded text as is, without upstream's clean-up (repeated words, text after
    /// the last period).
    #[arg(long)]
    raw: bool,
    /// Accepted for symmetry with `t2i`, but image-to-text runs without guidance.
    #[arg(long)]
    cfg: Option<f32>,
}

#[derive(Args)]
pub struct VqaArgs {
    /// The question, asked of every image.
    #[arg(long)]
    question: String,
    #[command(flatten)]
    common: CaptionArgs,
}

pub fn caption(args: CaptionArgs, global: &Global) -> Result<()> {
    run(args, None, global)
}

pub fn vqa(args: VqaArgs, global: &Global) -> Result<()> {
    ensure!(!args.question.trim().is_empty(), "--question is empty");
    run(args.common, Some(args.question), global)
}

fn run(args: CaptionArgs, question: Option<String>, global: &Global) -> Result<()> {
    if let Some(g) = args.cfg {
        if !global.quiet {
            eprintln!(
                "note: --cfg {g} has no effect: image-to-text runs without guidance (as upstream)"
            );
        }
    }
    let temperature = match &args.temperature {
        Some(t) => crate::generate::parse_temperature(t)?,
        None => Temperature::default(),
    };
    let root = crate::model::resolve_root(global.model.as_deref(), global.quiet)?;
    let defaults = crate::model::defaults(&root)?;
    let steps = args.steps.unwrap_or(defaults.i2t_steps);
    let r = args.resolution.unwrap_or(defaults.resolution);
    let greedy = args.draws.greedy(defaults.greedy);
    if !global.quiet {
        crate::generate::note_temperature(greedy, args.temperature.is_some());
    }
    let mut request = ImageToText {
        images: Vec::new(),
        batch: args.images.len(),
        resolution: r,
        questions: question.map(|q| vec![q]),
        sampler: SamplerConfig {
            steps,
            schedule: muddit_engine::pipeline::read_schedule(&root)?,
            temperature,
            guidance: Guidance::Off,
            draw: if greedy {
                DrawRule::Greedy
            } else {
                DrawRule::Sample
            },
            seed: args.seed,
        },
    };
    ModelShape::read(&root)?.check_image_to_text(&request)?;
    request.images.reserve_exact(args.images.len() * 3 * r * r);
    for path in &args.images {
        request.images.extend(load_image(path, r, r)?.data);
    }
    let mut models = crate::model::Models::load(&root, global)?;
    let bar = progress::steps_bar(steps, global.quiet, "i2t");
    // On `--device cuda` everything but the tokenizer runs on the GPU.
    let answers = models.image_to_text(&request, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    if global.json {
        let rows: Vec<serde_json::Value> = args
            .images
            .iter()
            .zip(&answers)
            .map(|(p, a)| serde_json::json!({ "image": p.display().to_string(), "text": a.text, "raw": a.raw }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).context("json")?);
    } else {
        for a in &answers {
            println!("{}", if args.raw { &a.raw } else { &a.text });
        }
    }
    Ok(())
}
