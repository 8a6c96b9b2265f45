//! The CLIP text encoder on the CUDA kernels: the layers of [`ClipTextModel`] with [`Cuda`]
//! weights (loaded once by [`ClipTextModel::load`]), the same forward as `cpu.rs` (reference
//! section 3).
//!
//! Storage on the device (`cuda::backend`): weight matrices and the embedding tables bf16,
//! biases and norm weights f32; the residual stream `X [B, L, D]` f32, normalised rows and the MLP hidden bf16. Heads of
//! `Dh < 64` (the test fixtures, the default model's 12) are stored zero-padded to `Dp = 64`
//! inside q, k, v and the attention output `[B, L, H, Dp]`, as in [`crate::cuda::CudaMmdit`].
//!
//! One forward over ids `[B, L]`: `X = token_embedding[ids] + position_embedding[s]`; per layer
//! `X += out_proj(attention(q, k, v of layer_norm1(X), causal))`, then
//! `X += fc2(act(fc1(layer_norm2(X))))` (act fused into fc1's epilogue); after layer `n - 2` `X`
//! is copied out as the penultimate hidden state; `final_layer_norm(X)`, the row of each item at
//! the end-of-text position (chosen on the host from the ids, as the CPU does), then
//! `text_projection`. Only ids go up; the outputs stay on the device for the transformer.

use muddit_kernels::cuda::gemm::{GemmOpts, GemmOut};
use std::path::Path;
use std::sync::Arc;

use muddit_kernels::cuda::common::Act;

use super::{
    ensure_all_used, token_row_place, Activation, ClipMlp, ClipTextConfig, ClipTextModel,
    ClipTextOutput,
};
use crate::cuda::backend::{Cuda, Heads};
use crate::cuda::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model_dir::{build_from, open_config};
use crate::weights::Vb;
use crate::Compute;
use muddit_kernels::cuda::to_bf16;

/// The outputs the pipeline reads, on the device.
pub struct ClipEncoding {
    /// `[B, L, D]` f32: output of layer `n - 1` of `n`, before the final norm.
    pub penultimate: Buffer<f32>,
    /// `[B, L, D]` bf16: the last layer's output after `final_layer_norm`.
    pub last_hidden_state: Buffer<u16>,
    /// `[B, projection_dim]` f32.
    pub text_embeds: Buffer<f32>,
}

/// `CLIPTextModelWithProjection` on a CUDA device (or its emulator).
pub struct CudaClipText {
    /// The model's config (as `model.cfg`).
    pub cfg: ClipTextConfig,
    model: ClipTextModel<Cuda>,
    dev: Arc<Device>,
    heads: Heads,
    act: Act,
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
        let act = match cfg.activation().map_err(bad)? {
            Activation::GeluErf => Act::GeluErf,
            Activation::QuickGelu => Act::QuickGelu,
            Activation::GeluTanh => Act::GeluTanh,
        };
        if d % 8 != 0 || i % 8 != 0 {
            return Err(bad(format!(
                "`hidden_size` {d} and `intermediate_size` {i}: the CUDA matrix products need multiples of 8"
            )));
        }
        let heads = Heads::new(
            cfg.num_attention_heads,
            d / cfg.num_attention_heads,
            "num_attention_heads",
        )?;
        let backend = Cuda::new(dev, Some(heads));
        Ok(CudaClipText {
            cfg: cfg.clone(),
            model: ClipTextModel::load(&backend, cfg, vb)?,
            dev: dev.clone(),
            heads,
            act,
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// `ids [B, L]` -> the outputs on the device (see [`ClipEncoding`]); bad ids are errors.
    pub fn encode(&self, ids: &[i64], batch: usize) -> Result<ClipEncoding> {
        let dev = &self.dev;
        let cfg = &self.cfg;
        let len = cfg.check_ids(ids, batch, self.vocab_rows())?;
        let (d, rows, hd) = (cfg.hidden_size, batch * len, self.heads.width());
        let plain = GemmOpts::default();
        let ids32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let out = ClipEncoding {
            penultimate: dev.zeros(rows * d)?,
            last_hidden_state: dev.zeros(rows * d)?,
            text_embeds: dev.zeros(batch * cfg.projection_dim)?,
        };
        let x = dev.zeros::<f32>(rows * d)?; // [B, L, D]
        let y = dev.zeros::<u16>(rows * d)?; // [B, L, D]
        let (q, k, v, o) = (
            dev.zeros::<u16>(rows * hd)?, // [B, L, H, Dp] each
            dev.zeros::<u16>(rows * hd)?,
            dev.zeros::<u16>(rows * hd)?,
            dev.zeros::<u16>(rows * hd)?,
        );
        let hid = dev.zeros::<u16>(rows * cfg.intermediate_size)?; // [B, L, I]
        self.embed(&dev.upload(&ids32)?, len, &x)?;
        let n = self.model.text_model.layers.len();
        for (i, layer) in self.model.text_model.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let ln1 = (layer.layer_norm1.weight.ptr(), layer.layer_norm1.bias.ptr());
            dev.layer_norm_affine(x.ptr(), y.ptr(), rows, d, ln1, self.eps())?;
            for (lin, buf) in [(&attn.q_proj, &q), (&attn.k_proj, &k), (&attn.v_proj, &v)] {
                dev.gemm(GemmOut::Bf16, lin.mat(), y.ptr(), rows, buf.ptr(), plain)?;
            }
            let shape = (batch, len, self.heads.h);
            let qkv = (q.ptr(), k.ptr(), v.ptr());
            let (dh, dp) = (self.heads.dh, self.heads.dp);
            dev.attention(qkv, (o.ptr(), hd), shape, (dh, dp), true)?;
            let out_proj = attn.out_proj.mat();
            dev.gemm(GemmOut::Residual, out_proj, o.ptr(), rows, x.ptr(), plain)?;
            let ln2 = (layer.layer_norm2.weight.ptr(), layer.layer_norm2.bias.ptr());
            dev.layer_norm_affine(x.ptr(), y.ptr(), rows, d, ln2, self.eps())?;
            let with_act = GemmOpts {
                act: self.act,
                ..GemmOpts::default()
            };
            let ClipMlp { fc1, fc2 } = &layer.mlp;
            dev.gemm(GemmOut::Bf16, fc1.mat(), y.ptr(), rows, hid.ptr(), with_act)?;
            dev.gemm(
                GemmOut::Residual,
                fc2.mat(),
                hid.ptr(),
                rows,
                x.ptr(),
                plain,
            )?;
            if i + 2 == n {
                dev.copy(x.ptr(), out.penultimate.ptr(), rows * d)?;
            }
        }
        let fln = &self.model.text_model.final_layer_norm;
        let last = out.last_hidden_state.ptr();
        dev.layer_norm_affine(
            x.ptr(),
            last,
            rows,
            d,
            (fln.weight.ptr(), fln.bias.ptr()),
            self.eps(),
        )?;
        // The end-of-text row of each item: [B, D].
        for (b, row) in ids.chunks_exact(len).enumerate() {
            let at = (b * len + cfg.eos_position(row)) * d;
            dev.copy(last.at(at)?, y.at(b * d)?, d)?;
        }
        let proj = self.model.text_projection.mat();
        dev.gemm(
            GemmOut::F32,
            proj,
            y.ptr(),
            batch,
            out.text_embeds.ptr(),
            plain,
        )?;
        Ok(out)
    }

    /// The forward with host inputs and outputs, as [`ClipTextModel::forward`].
    pub fn forward(&self, ids: &[i64], batch: usize) -> Result<ClipTextOutput> {
        let out = self.encode(ids, batch)?;
        let dev = &self.dev;
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
            std::cmp::Ordering::Less => Ok(self.dev.write(table, id * d, &row)?),
            _ => {
                let mut values = self.dev.read(table, 0, rows * d)?;
                values.extend_from_slice(&row);
                *table = self.dev.upload(&values)?;
                Ok(())
            }
        }
    }

    fn eps(&self) -> f32 {
        self.cfg.layer_norm_eps as f32
    }

    /// `x [B, L, D]` f32 `= token_embedding[ids] + position_embedding[s]`.
    fn embed(&self, ids: &Buffer<u32>, len: usize, x: &Buffer<f32>) -> Result<()> {
        let embeddings = &self.model.text_model.embeddings;
        let table = (embeddings.token_embedding.ptr(), self.vocab_rows());
        let pos = (embeddings.position_embedding.ptr(), len);
        let (rows, d) = (ids.len(), self.cfg.hidden_size);
        Ok(self
            .dev
            .embedding(ids.ptr(), table, Some(pos), x.ptr(), rows, d)?)
    }
}
