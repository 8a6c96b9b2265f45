//! Random text and image sides beside a random transformer, so that a written model folder is
//! complete: `text_encoder/`, `vqvae/`, `tokenizer/`, `scheduler/scheduler_config.json` and
//! `mask_token_embedding.pth`, in the public layout.
//!
//! Shapes follow the transformer: the text encoder's width is `joint_attention_dim`, its
//! projection `pooled_projection_dim`, its vocabulary `tokenizer_vocab_size - 1` (the text head
//! also predicts `<mask>`); the VQ-VAE's codebook has `codebook_size` entries. For the public
//! shapes (`muddit-512`) that is the OpenCLIP ViT-H/14 text tower (24 layers, 16 heads, 4096-wide
//! MLP, gelu, `eos_token_id` 2) and the 5-level VQ-VAE 128-256-256-512-768; smaller transformers
//! get a 2-layer text encoder and a 5-level VQ-VAE of 8-16 channels (same 16x scale factor).
//!
//! Tokenizer: the real CLIP vocabulary when an OpenCLIP `bpe_simple_vocab_16e6.txt(.gz)` is
//! given and the sizes agree, else a made-up byte-level BPE of exactly the text encoder's
//! vocabulary size (`tokenizer::synthetic_vocab`: valid, tokenizes anything, not CLIP's merges).
//! A CLIP-style BPE needs at least 514 tokens (512 byte tokens and two special ones): a
//! transformer whose `tokenizer_vocab_size - 1` is smaller gets a 1,000-token vocabulary and a
//! note saying that its text head and the tokenizer disagree.

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::pth::write_pth_vector;
use crate::random::{write_random_tensors, WeightDtype};
use crate::tokenizer::{clip_vocab_from_bpe_file, synthetic_vocab, write_tokenizer_files};
use crate::vqvae::{VqConfig, VqModel};
use crate::weights::Vb;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::path::Path;
use std::sync::Mutex;

/// Smallest vocabulary a byte-level CLIP BPE can have.
const MIN_VOCAB: usize = 514;
/// Vocabulary of the text side when the transformer's text head cannot fix it.
const FALLBACK_VOCAB: usize = 1000;
/// The public pad token (OpenCLIP pads with id 0, `!`).
const PAD_TOKEN: &str = "!";

/// What `write_random_sides` chose.
#[derive(Debug, Clone)]
pub struct SidesSummary {
    pub text: ClipTextConfig,
    pub vq: VqConfig,
    /// `real CLIP` or `synthetic`.
    pub vocab_kind: &'static str,
    /// Caveats worth printing (e.g. a text head that does not fit the tokenizer).
    pub notes: Vec<String>,
}

/// The text encoder and VQ-VAE configs that go with a transformer config.
pub fn side_configs(cfg: &TransformerConfig) -> (ClipTextConfig, VqConfig, Vec<String>) {
    let mut notes = Vec::new();
    let vocab = match cfg.tokenizer_vocab_size {
        Some(vt) if vt > MIN_VOCAB => vt - 1,
        Some(vt) => {
            notes.push(format!(
                "the transformer's text head has {vt} logits, fewer than a CLIP byte-level BPE needs ({} tokens + <mask>); the tokenizer and text encoder get {FALLBACK_VOCAB} tokens, so captioning with this folder is not meaningful",
                MIN_VOCAB
            ));
            FALLBACK_VOCAB
        }
        None => FALLBACK_VOCAB,
    };
    let public = ClipTextConfig::vit_h14();
    let text = if cfg.joint_attention_dim == public.hidden_size
        && cfg.pooled_projection_dim == public.projection_dim
    {
        ClipTextConfig {
            vocab_size: vocab,
            ..public
        }
    } else {
        let d = cfg.joint_attention_dim;
        let heads = [4, 2, 1].into_iter().find(|h| d % h == 0).unwrap_or(1);
        ClipTextConfig {
            vocab_size: vocab,
            hidden_size: d,
            intermediate_size: 4 * d,
            projection_dim: cfg.pooled_projection_dim,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            ..public
        }
    };
    let public_vq = VqConfig::muddit();
    let vq = if text.hidden_size == public.hidden_size {
        VqConfig {
            num_vq_embeddings: cfg.codebook_size,
            ..public_vq
        }
    } else {
        VqConfig {
            block_out_channels: vec![8, 8, 16, 16, 16],
            layers_per_block: 1,
            norm_num_groups: 4,
            latent_channels: 4,
            num_vq_embeddings: cfg.codebook_size,
            ..public_vq
        }
    };
    (text, vq, notes)
}

/// Every tensor the text encoder of `cfg` reads, with its shape.
pub fn text_encoder_tensors(cfg: &ClipTextConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let log = Mutex::new(Vec::new());
    ClipTextModel::new(cfg, &Vb::recorder(&log))?;
    Ok(log.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Every tensor the VQ-VAE of `cfg` reads, with its shape.
pub fn vqvae_tensors(cfg: &VqConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let log = Mutex::new(Vec::new());
    VqModel::new(cfg, &Vb::recorder(&log))?;
    Ok(log.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Writes the sides of a model folder `root` for the transformer `cfg` (see the module comment):
/// random weights from `seed` in `dtype`, the tokenizer files, the scheduler config and the
/// `<mask>` embedding.
pub fn write_random_sides(
    root: &Path,
    cfg: &TransformerConfig,
    dtype: WeightDtype,
    seed: u64,
    clip_bpe: Option<&Path>,
) -> Result<SidesSummary> {
    let (text, vq, mut notes) = side_configs(cfg);

    let dir = root.join("text_encoder");
    write_random_tensors(
        &dir,
        "model",
        &text_encoder_tensors(&text)?,
        dtype,
        seed ^ 0x7e47,
        None,
    )?;
    write_text(&dir.join("config.json"), &text.to_json())?;

    let dir = root.join("vqvae");
    let tensors = vqvae_tensors(&vq)?;
    write_random_tensors(
        &dir,
        "diffusion_pytorch_model",
        &tensors,
        dtype,
        seed ^ 0x0a0e,
        None,
    )?;
    write_text(&dir.join("config.json"), &vq.to_json())?;

    let (vocab, merges, vocab_kind) = match clip_bpe {
        Some(path) => {
            let (vocab, merges) = clip_vocab_from_bpe_file(path, text.vocab_size)?;
            (vocab, merges, "real CLIP")
        }
        None => {
            let (vocab, merges) = synthetic_vocab(text.vocab_size);
            (vocab, merges, "synthetic")
        }
    };
    write_tokenizer_files(&root.join("tokenizer"), &vocab, &merges, PAD_TOKEN)?;

    let scheduler = serde_json::json!({
        "_class_name": "Scheduler",
        "_diffusers_version": "0.34.0",
        "mask_token_id": cfg.vocab_size - 1,
        "masking_schedule": "cosine",
    });
    write_text(
        &root.join("scheduler").join("scheduler_config.json"),
        &serde_json::to_string_pretty(&scheduler).unwrap_or_default(),
    )?;

    let mut rng = SmallRng::seed_from_u64(seed ^ 0x3a5c);
    let mask: Vec<f32> = (0..text.hidden_size)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    write_pth_vector(&root.join("mask_token_embedding.pth"), &mask)?;
    if vocab_kind == "synthetic" && text.vocab_size == 49408 {
        notes.push("the tokenizer is a made-up BPE of CLIP's size (pass an OpenCLIP bpe_simple_vocab_16e6.txt.gz for the real one)".into());
    }
    Ok(SidesSummary {
        text,
        vq,
        vocab_kind,
        notes,
    })
}
