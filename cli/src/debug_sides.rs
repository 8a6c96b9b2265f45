//! `muddit debug text | vq-encode | vq-decode`: the text encoder and the VQ-VAE on named tensors,
//! in the reference's layouts, and the sides of `debug random-checkpoint`.

use anyhow::{bail, Context, Result};
use muddit_engine::clip_text::load_text_encoder_with;
use muddit_engine::limits::check_vq_images;
use muddit_engine::pth::{mask_embedding_path, read_mask_embedding};
use muddit_engine::tensor_io::{HostTensor, TensorFile};
use muddit_engine::vqvae::load_vqvae_with;
use muddit_engine::Compute;
use std::collections::BTreeMap;

/// Named output tensors of a `debug` command.
pub type Tensors = BTreeMap<String, HostTensor>;
use std::path::Path;
use std::time::Instant;

/// The model root of `--model`, which may be a component folder (`text_encoder/`, `vqvae/`).
fn model_root(model: &Path, component: &str) -> std::path::PathBuf {
    let is_component =
        model.file_name().is_some_and(|n| n == component) && !model.join(component).is_dir();
    match (is_component, model.parent()) {
        (true, Some(parent)) => parent.to_path_buf(),
        _ => model.to_path_buf(),
    }
}

/// `input_ids` i64 `[B, L]` -> `text_embeds [B, P]`, `penultimate [B, L, D]`,
/// `last_hidden_state [B, L, D]`, the products in `compute` arithmetic. Ids one past the
/// vocabulary are `<mask>`: its row is then read from the model root's `mask_token_embedding.pth`.
pub fn text(model: &Path, compute: Compute, inputs: &Path, quiet: bool) -> Result<Tensors> {
    let mut encoder = load_text_encoder_with(model, compute)?;
    let inputs = TensorFile::read(inputs)?;
    let (shape, ids) = inputs.i64("input_ids", 2, "[B,L]")?;
    let (b, l) = (shape[0], shape[1]);
    let mask_id = encoder.vocab_rows() as i64;
    if ids.contains(&mask_id) {
        let path = mask_embedding_path(&model_root(model, "text_encoder"))?;
        let row = read_mask_embedding(&path, encoder.cfg.hidden_size)?;
        encoder.set_token_embedding(mask_id as usize, &row)?;
    }
    let start = Instant::now();
    let o = encoder.forward(ids, b)?;
    if !quiet {
        eprintln!("text encoder: {:.3} s", start.elapsed().as_secs_f64());
    }
    let (d, p) = (encoder.cfg.hidden_size, encoder.cfg.projection_dim);
    let tensors = BTreeMap::from([
        (
            "text_embeds".to_string(),
            HostTensor::f32(vec![b, p], o.text_embeds),
        ),
        (
            "penultimate".to_string(),
            HostTensor::f32(vec![b, l, d], o.penultimate),
        ),
        (
            "last_hidden_state".to_string(),
            HostTensor::f32(vec![b, l, d], o.last_hidden_state),
        ),
    ]);
    Ok(tensors)
}

/// `image` f32 `[B, 3, H, W]` in `[0, 1]` -> `tokens` i64 `[B, H/f, W/f]`, the convolutions in
/// `compute` arithmetic.
pub fn vq_encode(model: &Path, compute: Compute, path: &Path, quiet: bool) -> Result<Tensors> {
    let vq = load_vqvae_with(model, compute)?;
    let inputs = TensorFile::read(path)?;
    let (shape, image) = inputs.f32("image", 4, "[B,3,H,W]")?;
    let (b, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    super::refuse_non_finite(&inputs, path, &["image"])?;
    check_vq_images(&vq.cfg, "image", b, w, h).with_context(|| format!("{}", path.display()))?;
    if c != vq.cfg.in_channels {
        bail!(
            "input `image`: {c} channels, the VQ-VAE takes {}",
            vq.cfg.in_channels
        );
    }
    let (gh, gw) = vq.grid(h, w)?;
    let start = Instant::now();
    let ids = vq.encode(image, b, h, w)?;
    if !quiet {
        eprintln!("vq encode: {:.3} s", start.elapsed().as_secs_f64());
    }
    let tensors = BTreeMap::from([("tokens".to_string(), HostTensor::i64(vec![b, gh, gw], ids))]);
    Ok(tensors)
}

/// `tokens` i64 `[B, h, w]` -> `image` f32 `[B, 3, h f, w f]`, not clipped, the convolutions in
/// `compute` arithmetic.
pub fn vq_decode(model: &Path, compute: Compute, path: &Path, quiet: bool) -> Result<Tensors> {
    let vq = load_vqvae_with(model, compute)?;
    let inputs = TensorFile::read(path)?;
    let (shape, ids) = inputs.i64("tokens", 3, "[B,h,w]")?;
    let (b, h, w) = (shape[0], shape[1], shape[2]);
    let f = vq.cfg.scale_factor();
    let (width, height) = (w.saturating_mul(f), h.saturating_mul(f));
    check_vq_images(&vq.cfg, "tokens", b, width, height)
        .with_context(|| format!("{}: {b} grids of {h} x {w} ids", path.display()))?;
    let start = Instant::now();
    let image = vq.decode(ids, b, h, w)?;
    if !quiet {
        eprintln!("vq decode: {:.3} s", start.elapsed().as_secs_f64());
    }
    let tensors = BTreeMap::from([(
        "image".to_string(),
        HostTensor::f32(vec![b, vq.cfg.out_channels, h * f, w * f], image),
    )]);
    Ok(tensors)
}

/// The text encoder, VQ-VAE, tokenizer, scheduler config and `<mask>` embedding of a random
/// model folder, beside its transformer.
pub fn random_sides(
    root: &Path,
    cfg: &muddit_engine::TransformerConfig,
    dtype: muddit_engine::random::WeightDtype,
    seed: u64,
    clip_bpe: Option<&Path>,
    quiet: bool,
) -> Result<()> {
    let start = Instant::now();
    let summary = muddit_engine::random_sides::write_random_sides(root, cfg, dtype, seed, clip_bpe)
        .with_context(|| format!("writing the text and image sides into {}", root.display()))?;
    if !quiet {
        eprintln!(
            "wrote text_encoder/ ({} layers x {}), vqvae/ ({} levels, {} codes), tokenizer/ ({} tokens, {}), scheduler/ and mask_token_embedding.pth in {:.1} s",
            summary.text.num_hidden_layers,
            summary.text.hidden_size,
            summary.vq.block_out_channels.len(),
            summary.vq.num_vq_embeddings,
            summary.text.vocab_size,
            summary.vocab_kind,
            start.elapsed().as_secs_f64()
        );
        for note in &summary.notes {
            eprintln!("note: {note}");
        }
    }
    Ok(())
}
