//! The CLIP text encoder on the CUDA kernels: the layers of [`ClipTextModel`] with [`Cuda`]
//! weights (loaded once by [`ClipTextModel::load`]), run by the one forward (`forward.rs`) with
//! [`Cuda`]'s operations (`crate::cuda::ops`).
//!
//! Storage on the device (`cuda::backend`): weight matrices and the embedding tables bf16,
//! biases and norm weights f32; the residual stream `X [B, L, D]` f32, normalised rows and the
//! MLP hidden bf16. Heads of `Dh < 64` (the test fixtures, the default model's 12) are stored
//! zero-padded to `Dp = 64` inside q, k, v and the attention output `[B, L, H, Dp]`, as in
//! [`crate::cuda::CudaMmdit`]. The MLP's activation is fused into `fc1`'s epilogue, both
//! residual adds into the epilogues of `out_proj` and `fc2`. Only ids go up; the outputs stay on
//! the device for the transformer.

use std::path::Path;
use std::sync::Arc;

use super::{
    ensure_all_used, token_row_place, ClipOutputs, ClipTextConfig, ClipTextModel, ClipTextOutput,
};
use crate::cuda::backend::Cuda;
use crate::cuda::Device;
use crate::error::{Error, Result};
use crate::model_dir::{build_from, open_config};
use crate::weights::Vb;
use crate::Compute;
use muddit_kernels::cuda::to_bf16;

/// The outputs the pipeline reads, on the device: `penultimate` and `text_embeds` f32,
/// `last_hidden_state` bf16.
pub type ClipEncoding = ClipOutputs<Cuda>;

/// `CLIPTextModelWithProjection` on a CUDA device (or its emulator).
pub struct CudaClipText {
    /// The model's config (as `model.cfg`).
    pub cfg: ClipTextConfig,
    model: ClipTextModel<Cuda>,
    /// The device and the head layout the weights were loaded with: the forward's operations.
    ops: Cuda,
}

impl CudaClipText {
    /// Loads `text_encoder/` of a model folder (or that folder) onto `dev`, with the checks of
    /// [`crate::clip_text::load_text_encoder`].
    pub fn load(dev: &Arc<Device>, dir: &Path) -> Result<Self> {
        let (dir, cfg) = open_config(dir, "text_encoder", ClipTextConfig::from_file)?;
        let build = |vb: &Vb| Self::new(dev, &cfg, vb);
        build_from(&dir, Compute::F32, build, ensure_all_used)
    }

    /// Builds the model from the same tensors [`ClipTextModel::new`] reads.
    pub fn new(dev: &Arc<Device>, cfg: &ClipTextConfig, vb: &Vb) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let bad = |message: String| Error::Config {
            path: "text_encoder/config.json".into(),
            message,
        };
        cfg.activation().map_err(bad)?;
        if d % 8 != 0 || i % 8 != 0 {
            return Err(bad(format!(
                "`hidden_size` {d} and `intermediate_size` {i}: the CUDA matrix products need multiples of 8"
            )));
        }
        let heads = (cfg.num_attention_heads, d / cfg.num_attention_heads);
        let ops = Cuda::with_heads(dev, heads, "num_attention_heads")?;
        Ok(CudaClipText {
            cfg: cfg.clone(),
            model: ClipTextModel::load(&ops, cfg, vb)?,
            ops,
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.ops.dev
    }

    /// `ids [B, L]` -> the outputs on the device (see [`ClipEncoding`]); bad ids are errors.
    pub fn encode(&self, ids: &[i64], batch: usize) -> Result<ClipEncoding> {
        self.model.run(&self.ops, ids, batch)
    }

    /// The forward with host inputs and outputs, as [`ClipTextModel::forward`].
    pub fn forward(&self, ids: &[i64], batch: usize) -> Result<ClipTextOutput> {
        let out = self.encode(ids, batch)?;
        let dev = &self.ops.dev;
        let last = dev.read(&out.last_hidden_state, 0, out.last_hidden_state.len())?;
        Ok(ClipTextOutput {
            text_embeds: dev.read(&out.text_embeds, 0, out.text_embeds.len())?,
            penultimate: dev.read(&out.penultimate, 0, out.penultimate.len())?,
            last_hidden_state: last
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect(),
        })
    }

    /// Rows of the token embedding: `vocab_size`, plus one once `<mask>` is added.
    pub fn vocab_rows(&self) -> usize {
        self.model.text_model.embeddings.token_embedding.len() / self.cfg.hidden_size
    }

    /// Sets the embedding row of token `id` (the `<mask>` row from `mask_token_embedding.pth`),
    /// appending a row when `id` is one past the table, as
    /// [`ClipTextModel::set_token_embedding`].
    pub fn set_token_embedding(&mut self, id: usize, row: &[f32]) -> Result<()> {
        let (d, rows) = (self.cfg.hidden_size, self.vocab_rows());
        let place = token_row_place(d, rows, id, row)?;
        let row = to_bf16(row);
        let table = &mut self.model.text_model.embeddings.token_embedding;
        match place {
            std::cmp::Ordering::Less => Ok(self.ops.dev.write(table, id * d, &row)?),
            _ => {
                let mut values = self.ops.dev.read(table, 0, rows * d)?;
                values.extend_from_slice(&row);
                *table = self.ops.dev.upload(&values)?;
                Ok(())
            }
        }
    }
}
