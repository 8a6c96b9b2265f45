//! `muddit`: the command-line tool.

mod bench;
mod caption;
mod debug;
mod edit;
mod embedded;
mod eval;
mod eval_edit;
mod generate;
mod model;
mod output;
mod png_meta;
mod progress;
mod serve;
mod shapes;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "muddit",
    version,
    about = "Muddit unified discrete-diffusion inference"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(clap::Args)]
pub struct Global {
    /// Model folder (the root of the public layout or its `transformer/` folder).
    #[arg(long, global = true, env = "MUDDIT_MODEL", value_parser = any_path)]
    pub model: Option<PathBuf>,
    /// Where to run: `cpu` (default) or `cuda[:N]` (builds with the `emulate` feature also take
    /// `emulated`: the CUDA backend on the CPU emulator of its kernels, for tests).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// Arithmetic of the matrix products: `f32`, or `bf16` (weights and activations rounded to
    /// bf16 into the products, f32 accumulation, AVX-512 BF16 where the CPU has it). For
    /// `debug random-checkpoint`: the number type of the written weights.
    #[arg(long, global = true, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Machine-readable results on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress or informational messages on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More on stderr: the instruction set the CPU products use for each dtype.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// The GPU opened for `--device cuda[:N]`.
    #[arg(skip)]
    pub cuda: Option<std::sync::Arc<muddit_engine::cuda::Device>>,
}

/// A path as given, empty included: `model::resolve` says what an empty `--model` means.
fn any_path(text: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(text))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    /// The name `--dtype` takes, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl Global {
    /// The arithmetic `--dtype` asks for.
    pub fn compute(&self) -> muddit_engine::Compute {
        match self.dtype {
            Dtype::F32 => muddit_engine::Compute::F32,
            Dtype::Bf16 => muddit_engine::Compute::Bf16,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from text.
    T2i(generate::T2iArgs),
    /// Describe images, one caption per image on stdout.
    Caption(caption::CaptionArgs),
    /// Answer a question about images, one answer per image on stdout.
    Vqa(caption::VqaArgs),
    /// Score a model on the shapes world's held-out set: text-to-image judged by a pixel
    /// checker, caption exact match and attributes, VQA accuracy, and editing (inpainting,
    /// img2img, outpainting) judged by the checker.
    Eval(eval::EvalArgs),
    /// Time one text-to-image run: load, text encoding, steps, sampler, VQ decoding.
    Bench(bench::BenchArgs),
    /// Load the model once and serve it over HTTP (OpenAI's images API, captions, VQA).
    Serve(serve::ServeArgs),
    /// Tools for people converting or checking checkpoints.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

/// `cpu` -> None, `cuda` -> Some(0), `cuda:N` -> Some(N).
fn cuda_ordinal(device: &str) -> Result<Option<usize>> {
    match device {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => anyhow::bail!("--device {other}: expected cpu, cuda or cuda:N"),
        },
    }
}

/// The device `--device` names, opened; None for the CPU.
fn open_device(device: &str) -> Result<Option<std::sync::Arc<muddit_engine::cuda::Device>>> {
    #[cfg(feature = "emulate")]
    if device == "emulated" {
        return Ok(Some(std::sync::Arc::new(
            muddit_engine::cuda::Device::emulated(),
        )));
    }
    match cuda_ordinal(device)? {
        None => Ok(None),
        Some(ordinal) => Ok(Some(
            muddit_engine::cuda::open(ordinal)
                .map_err(|e| anyhow::anyhow!("--device {device}: {e}"))?,
        )),
    }
}

fn run(mut cli: Cli) -> Result<()> {
    muddit_engine::isa::check_env().map_err(anyhow::Error::msg)?;
    if cli.global.verbose {
        eprintln!("cpu kernels: {}", muddit_engine::isa::describe());
    }
    if let Some(n) = cli.global.threads {
        muddit_engine::limits::check_threads(n)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    if let Some(device) = open_device(&cli.global.device)? {
        if !matches!(
            cli.command,
            Command::T2i(_)
                | Command::Caption(_)
                | Command::Vqa(_)
                | Command::Bench(_)
                | Command::Serve(_)
        ) {
            anyhow::bail!("--device {}: only `t2i`, `caption`, `vqa`, `bench` and `serve` run on the CUDA backend so far; use --device cpu", cli.global.device);
        }
        if !cli.global.quiet {
            eprintln!("device: {}", device.describe());
        }
        cli.global.cuda = Some(device);
    }
    match cli.command {
        Command::T2i(args) => generate::run(args, &cli.global),
        Command::Caption(args) => caption::caption(args, &cli.global),
        Command::Vqa(args) => caption::vqa(args, &cli.global),
        Command::Bench(args) => bench::run(args, &cli.global),
        Command::Serve(args) => serve::run(args, &cli.global),
        Command::Eval(args) => eval::run(args, &cli.global),
        Command::Debug(cmd) => debug::run(cmd, &cli.global),
    }
}

/// Keeps freed memory in the process for the next allocation. The VQ decoder's feature maps
/// (up to 256 MiB each) are above glibc's largest mmap threshold (32 MiB), so by default each one
/// is a fresh `mmap` whose every page faults and is zeroed by the kernel; from the heap they
/// are reused instead (a 512 px bf16 bench run, with the other changes of the same series:
/// 1.26 M page faults instead of 1.68 M, 8 munmap calls instead of 46). A CLI process is
/// short-lived, so holding on to its peak is harmless.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_MAX: std::ffi::c_int = -4;
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: mallopt only changes glibc's allocation policy; called before any thread starts.
    // Allocations the heap cannot serve still fall back to mmap inside glibc. glibc stores the
    // trim threshold as a size_t converted from the int: -1 means never trim.
    unsafe {
        mallopt(M_MMAP_MAX, 0);
        mallopt(M_TRIM_THRESHOLD, -1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// An error and its causes on one line, each cause once: a cause whose text its parent's
/// message already holds (`path: {source}` over `source`) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}
