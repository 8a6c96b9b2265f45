//! `muddit debug ...`: inspection forwards and random checkpoints.

use crate::output::Outputs;
use crate::{Dtype, Global};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use muddit_engine::config::TransformerConfig;
use muddit_engine::random::{write_random_transformer, WeightDtype};
use muddit_engine::tensor_io::TensorFile;
use muddit_engine::tokenizer::clip_vocab_from_bpe_file;
use muddit_engine::{debug, limits, model_dir, Compute};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "debug_sides.rs"]
mod debug_sides;

/// The tensor files of a debug forward (their tensors are the command's).
#[derive(Args)]
pub struct TensorFiles {
    /// The input tensors.
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the output tensors.
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Run the transformer on named input tensors (`image_tokens` i64 [B,h,w],
    /// `encoder_hidden_states` f32 [B,L,J], `pooled_projections` f32 [B,P], `timestep` f32 [1],
    /// `micro_conds` f32 [B,5]) and write its logits (`image_logits` [B,V,h,w] and
    /// `text_logits` [B,L,Vt]).
    Forward(TensorFiles),
    /// Run the CLIP text encoder (`--model`: the root or `text_encoder/`) on `input_ids` i64
    /// [B,77]; writes `text_embeds` [B,P], `penultimate` [B,77,D], `last_hidden_state` [B,77,D].
    Text(TensorFiles),
    /// VQ-encode `image` f32 [B,3,H,W] in [0,1] (`--model`: the root or `vqvae/`); writes
    /// `tokens` i64 [B,H/16,W/16].
    VqEncode(TensorFiles),
    /// VQ-decode `tokens` i64 [B,h,w]; writes `image` f32 [B,3,16h,16w], not clipped.
    VqDecode(TensorFiles),
    /// Write random inputs for `debug forward` that fit a model: a masked id grid, random text
    /// features and pooled vector, timestep 0.5, micro-conditions of the grid's pixel size.
    RandomInputs {
        /// Batch size (2 for one guided step).
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Id grid rows and columns (32 for 512 px).
        #[arg(long, default_value_t = 32)]
        grid: usize,
        /// Text tokens.
        #[arg(long, default_value_t = 77)]
        text_len: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        overwrite: bool,
    },
    /// Write a random model folder in the public layout (for tests and benches).
    RandomCheckpoint {
        /// A named shape: muddit-512 (the public 1B model), tiny, meissonic-tiny.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        preset: Option<String>,
        /// A transformer `config.json` to take the shape from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The model folder to create (its `transformer/` is written).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random values.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Split the weights into shards of at most this many MiB, with an index (0: each
        /// tensor in a shard of its own; a tensor larger than the limit always is).
        #[arg(long)]
        shard_mib: Option<usize>,
        /// Write into `--out` even if it already holds a model.
        #[arg(long)]
        overwrite: bool,
        /// OpenCLIP's `bpe_simple_vocab_16e6.txt.gz`, for the real CLIP vocabulary in
        /// `tokenizer/` (default: a made-up BPE of the same size).
        #[arg(long)]
        clip_bpe: Option<PathBuf>,
    },
}

pub fn run(cmd: DebugCommand, global: &Global) -> Result<()> {
    match cmd {
        DebugCommand::Text(files) => side(global, &files, debug_sides::text),
        DebugCommand::VqEncode(files) => side(global, &files, debug_sides::vq_encode),
        DebugCommand::VqDecode(files) => side(global, &files, debug_sides::vq_decode),
        DebugCommand::Forward(files) => forward(global, &files),
        DebugCommand::RandomInputs {
            batch,
            grid,
            text_len,
            seed,
            out,
            overwrite,
        } => {
            Outputs::new(overwrite).plan("--out", &out)?;
            let dir = model_dir::transformer_dir(&model_arg(global)?)?;
            let cfg = TransformerConfig::from_file(&dir.join("config.json"))?;
            check_random_inputs(&cfg, batch, grid, text_len)?;
            let inputs = muddit_engine::random::random_inputs(&cfg, batch, grid, text_len, seed);
            crate::output::write_tensors(&out, overwrite, &inputs)?;
            Ok(())
        }
        DebugCommand::RandomCheckpoint {
            preset,
            config,
            out,
            seed,
            shard_mib,
            overwrite,
            clip_bpe,
        } => {
            let cfg = match (preset, config) {
                (Some(name), _) => TransformerConfig::preset(&name).with_context(|| {
                    format!(
                        "--preset {name}: unknown; choose one of {}",
                        TransformerConfig::PRESETS.join(", ")
                    )
                })?,
                (None, Some(path)) => TransformerConfig::from_file(&path)?,
                (None, None) => bail!("give --preset or --config"),
            };
            let checkpoint = Checkpoint {
                out,
                seed,
                max_shard_bytes: shard_bytes(shard_mib)?,
                clip_bpe,
            };
            random_checkpoint(global, &cfg, &checkpoint, overwrite)
        }
    }
}

/// Most text tokens `debug random-inputs` writes (CLIP gives 77).
const MAX_TEXT_LEN: usize = 4096;

/// The sizes of `debug random-inputs` for the transformer `cfg`: each within its range, and
/// the tensors (twice: the values and the file's bytes) within the memory available.
fn check_random_inputs(
    cfg: &TransformerConfig,
    batch: usize,
    grid: usize,
    text_len: usize,
) -> Result<()> {
    limits::check_count("--batch", batch, limits::MAX_IMAGES)?;
    limits::check_count("--grid", grid, limits::MAX_SIDE / 16)?;
    limits::check_count("--text-len", text_len, MAX_TEXT_LEN)?;
    let per_item = grid * grid * 8
        + text_len * cfg.joint_attention_dim * 4
        + (cfg.pooled_projection_dim + 5) * 4;
    Ok(limits::check_memory(2.0 * (batch * per_item) as f64)?)
}

/// Refuses NaN or infinite values in the float tensors `names` of `inputs`, read from `path`.
pub(crate) fn refuse_non_finite(inputs: &TensorFile, path: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let Some(values) = inputs.get(name).and_then(|t| t.values.as_f32()) else {
            continue;
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: input `{name}`: element {i} is {}; the inputs must be finite numbers",
                path.display(),
                values[i]
            );
        }
    }
    Ok(())
}

/// What `debug random-checkpoint` writes, its flags checked.
struct Checkpoint {
    out: PathBuf,
    seed: u64,
    max_shard_bytes: Option<usize>,
    clip_bpe: Option<PathBuf>,
}

/// What a random model folder holds: `debug random-checkpoint` replaces none of them without
/// `--overwrite`.
const CHECKPOINT_ENTRIES: [&str; 6] = [
    "transformer",
    "text_encoder",
    "vqvae",
    "tokenizer",
    "scheduler",
    "mask_token_embedding.pth",
];

/// `--shard-mib` in bytes; 0 puts each tensor in a shard of its own.
fn shard_bytes(shard_mib: Option<usize>) -> Result<Option<usize>> {
    shard_mib
        .map(|m| {
            m.checked_mul(1 << 20).with_context(|| {
                format!(
                    "--shard-mib {m}: too large (at most {} MiB)",
                    usize::MAX >> 20
                )
            })
        })
        .transpose()
}

/// Writes the random model folder of `cfg`, its inputs (an existing folder's entries, the
/// `--clip-bpe` file) all checked before anything is written.
fn random_checkpoint(
    global: &Global,
    cfg: &TransformerConfig,
    c: &Checkpoint,
    overwrite: bool,
) -> Result<()> {
    if !overwrite {
        let existing: Vec<String> = CHECKPOINT_ENTRIES
            .iter()
            .map(|entry| c.out.join(entry))
            .filter(|path| path.symlink_metadata().is_ok())
            .map(|path| path.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "--out {}: already exists: {}; pass --overwrite to replace it",
                c.out.display(),
                existing.join(", ")
            );
        }
    }
    if let Some(path) = &c.clip_bpe {
        let (text, _, _) = muddit_engine::random_sides::side_configs(cfg);
        clip_vocab_from_bpe_file(path, text.vocab_size).context("--clip-bpe")?;
    }
    let dtype = match global.dtype {
        Dtype::F32 => WeightDtype::F32,
        Dtype::Bf16 => WeightDtype::Bf16,
    };
    let dir = c.out.join("transformer");
    let start = Instant::now();
    write_random_transformer(cfg, &dir, dtype, c.seed, c.max_shard_bytes)?;
    if !global.quiet {
        eprintln!(
            "wrote {} in {:.1} s",
            dir.display(),
            start.elapsed().as_secs_f64()
        );
    }
    let bpe = c.clip_bpe.as_deref();
    debug_sides::random_sides(&c.out, cfg, dtype, c.seed, bpe, global.quiet)
}

/// One side's `debug` command: `--out` checked, the tensors computed by `run` (model, `--dtype`,
/// inputs, quiet), then written.
fn side(
    global: &Global,
    files: &TensorFiles,
    run: fn(&Path, Compute, &Path, bool) -> Result<debug_sides::Tensors>,
) -> Result<()> {
    Outputs::new(files.overwrite).plan("--out", &files.out)?;
    let model = model_arg(global)?;
    let tensors = run(&model, global.compute(), &files.inputs, global.quiet)?;
    crate::output::write_tensors(&files.out, files.overwrite, &tensors)
}

/// The model folder from `--model` or `MUDDIT_MODEL`, resolved as for every other command.
fn model_arg(global: &Global) -> Result<std::path::PathBuf> {
    crate::model::resolve(global.model.as_deref(), global.quiet)
}

/// The float inputs of `debug forward`.
const FORWARD_FLOAT_INPUTS: [&str; 4] = [
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
    "micro_conds",
];

fn forward(global: &Global, files: &TensorFiles) -> Result<()> {
    Outputs::new(files.overwrite).plan("--out", &files.out)?;
    let model = model_dir::load_transformer_with(&model_arg(global)?, global.compute())?;
    let inputs = TensorFile::read(&files.inputs)?;
    refuse_non_finite(&inputs, &files.inputs, &FORWARD_FLOAT_INPUTS)?;
    let start = Instant::now();
    let outputs = debug::transformer_forward(&model, &inputs)?;
    if !global.quiet {
        eprintln!("forward: {:.3} s", start.elapsed().as_secs_f64());
    }
    crate::output::write_tensors(&files.out, files.overwrite, &outputs)?;
    Ok(())
}
