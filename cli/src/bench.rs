//! `muddit bench`: where the time of one text-to-image run goes.

use crate::Global;
use anyhow::Result;
use clap::Args;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 16)]
    steps: usize,
    #[arg(long, default_value_t = 9.0)]
    cfg: f32,
    #[arg(long, default_value = "a photo of a cat")]
    prompt: String,
    /// With --device cuda: time every kernel with CUDA events and print the GPU time per kernel.
    #[arg(long)]
    kernel_timings: bool,
    /// Load a running `muddit serve` at this URL (http://HOST:PORT) instead: images/s and
    /// latency percentiles per concurrency level, with this size, steps, cfg and prompt.
    #[arg(long)]
    serve: Option<String>,
    /// With --serve: the concurrency levels (clients sending at once).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// With --serve: requests answered per concurrency level.
    #[arg(long, default_value_t = 32)]
    requests: usize,
}

/// `--serve URL`: the server under load, one line (or JSON object) per concurrency level.
fn serve(args: &BenchArgs, url: &str, global: &Global) -> Result<()> {
    let load = crate::serve::load::Load {
        url: url.to_string(),
        concurrency: args.concurrency.clone(),
        requests: args.requests,
        body: serde_json::json!({
            "prompt": args.prompt, "size": format!("{}x{}", args.width, args.height),
            "steps": args.steps, "cfg": args.cfg,
        }),
        images: 1,
    };
    let results = crate::serve::load::run(&load)?;
    if global.json {
        let rows: Vec<_> = results.iter().map(|m| m.json()).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("concurrency  requests  images/s   p50 ms   p99 ms");
    for m in &results {
        println!(
            "{:>11}  {:>8}  {:>8.2}  {:>7.1}  {:>7.1}",
            m.concurrency, m.requests, m.images_per_s, m.p50_ms, m.p99_ms
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: BenchArgs, global: &Global) -> Result<()> {
    anyhow::ensure!(!args.prompt.trim().is_empty(), "--prompt is empty");
    if let Some(url) = &args.serve {
        return serve(&args, url, global);
    }
    let total = Instant::now();
    let root = crate::model::resolve_root(global.model.as_deref(), global.quiet)?;
    let request = crate::generate::default_request(
        &args.prompt,
        args.steps,
        args.cfg,
        args.width,
        args.height,
        muddit_engine::pipeline::read_schedule(&root)?,
    )?;
    muddit_engine::limits::ModelShape::read(&root)?.check_text_to_image(&request)?;
    let start = Instant::now();
    let models = crate::model::Models::load(&root, global)?;
    let load = start.elapsed();
    if args.kernel_timings {
        match &global.cuda {
            Some(dev) => dev.start_kernel_timing(),
            None => anyhow::bail!("--kernel-timings needs --device cuda"),
        }
    }
    let mut step_ms = Vec::new();
    let mut sampler_ms = Vec::new();
    let bar = crate::progress::steps_bar(args.steps, global.quiet, "bench");
    let images = models.text_to_image(&request, &mut |e| {
        step_ms.push(ms(e.transformer));
        sampler_ms.push(ms(e.sampler));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let kernels = match &global.cuda {
        Some(dev) if args.kernel_timings => dev.kernel_times()?,
        _ => Vec::new(),
    };
    let total = total.elapsed();
    step_ms.sort_by(f64::total_cmp);
    sampler_ms.sort_by(f64::total_cmp);
    let median = |v: &[f64]| if v.is_empty() { 0.0 } else { v[v.len() / 2] };
    let threads = rayon::current_num_threads();
    let dtype = global.dtype.name();
    let report = serde_json::json!({
        "model": root.display().to_string(),
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "cfg": args.cfg,
        "load_s": load.as_secs_f64(),
        "text_encode_ms": ms(images.text_encode),
        "step_ms": { "median": median(&step_ms), "min": step_ms.first().copied().unwrap_or(0.0), "max": step_ms.last().copied().unwrap_or(0.0) },
        "sampler_ms": median(&sampler_ms),
        "vq_decode_ms": ms(images.vq_decode),
        "total_s": total.as_secs_f64(),
        "device": global.device,
        "dtype": dtype,
        "threads": threads,
        "cpu_kernels": muddit_engine::isa::kernels().iter().map(|(dtype, level, instruction)| {
            (dtype.to_string(), serde_json::json!({ "isa": level, "instruction": instruction }))
        }).collect::<serde_json::Map<_, _>>(),
        "kernels": kernels.iter().map(|k| serde_json::json!({
            "kernel": k.kernel, "launches": k.launches, "total_ms": k.total_ms,
        })).collect::<Vec<_>>(),
    });
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("model        {}", root.display());
        println!(
            "size, steps  {}x{} px, {} steps, cfg {}",
            args.width, args.height, args.steps, args.cfg
        );
        println!("load         {:.2} s", load.as_secs_f64());
        println!("text encode  {:.1} ms", ms(images.text_encode));
        println!(
            "step         median {:.1} ms (min {:.1}, max {:.1})",
            median(&step_ms),
            step_ms.first().copied().unwrap_or(0.0),
            step_ms.last().copied().unwrap_or(0.0)
        );
        println!("sampler      median {:.2} ms per step", median(&sampler_ms));
        println!("VQ decode    {:.1} ms", ms(images.vq_decode));
        println!(
            "total        {:.2} s ({} threads, {dtype}, {})",
            total.as_secs_f64(),
            threads,
            global.device
        );
        if global.device == "cpu" {
            println!("cpu kernels  {}", muddit_engine::isa::describe());
        }
        for k in &kernels {
            println!(
                "  {:<24} {:>6} launches {:>10.3} ms ({:.1} us each)",
                k.kernel,
                k.launches,
                k.total_ms,
                1e3 * k.total_ms / k.launches as f64
            );
        }
    }
    Ok(())
}
