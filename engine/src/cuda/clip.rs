//! The CLIP text encoder on the CUDA kernels: the same checkpoint names and the same forward as
//! [`crate::clip_text::ClipTextModel`] (reference section 3), with weights uploaded once.
//!
//! Storage on the device: weight matrices and the embedding tables bf16, biases and norm weights
//! f32; the residual stream `X [B, L, D]` f32, normalised rows and the MLP hidden bf16. Heads of
//! `Dh < 64` (the test fixtures, the default model's 12) are stored zero-padded to `Dp = 64`
//! inside q, k, v and the attention output `[B, L, H, Dp]`, as in [`super::CudaMmdit`].
//!
//! One forward over ids `[B, L]`: `X = token_embedding[ids] + position_embedding[s]`; per layer
//! `X += out_proj(causal_attention(q, k, v of layer_norm1(X)))`, then
//! `X += fc2(act(fc1(layer_norm2(X))))` (act fused into fc1's epilogue); after layer `n - 2` `X`
//! is copied out as the penultimate hidden state; `final_layer_norm(X)`, the row of each item at
//! the end-of-text position (chosen on the host from the ids, as the CPU does), then
//! `text_projection`. Only ids go up; the outputs stay on the device for the transformer.

use std::path::Path;
use std::sync::Arc;

use muddit_kernels::cuda::ops::GemmOut;
use muddit_kernels::cuda::params::Act;

use super::device::{to_bf16, Buffer, Device};
use super::mmdit::{DLinear, Heads};
use super::ops::GemmOpts;
use crate::clip_text::{
    ensure_all_used, text_encoder_dir, Activation, ClipTextConfig, ClipTextOutput,
};
use crate::error::{Error, Result};
use crate::nn::Linear;
use crate::weights::{Vb, Weights};

/// `nn.LayerNorm`: f32 weight and bias `[D]`.
struct DLayerNorm {
    weight: Buffer<f32>,
    bias: Buffer<f32>,
}

impl DLayerNorm {
    fn new(dev: &Device, vb: &Vb, d: usize) -> Result<Self> {
        Ok(DLayerNorm {
            weight: dev.upload(&vb.get("weight", &[d])?)?,
            bias: dev.upload(&vb.get("bias", &[d])?)?,
        })
    }
}

/// `self_attn`: q, k, v padded to `Dp` per head, `out_proj` reading the padded heads.
struct DSelfAttention {
    q_proj: DLinear,
    k_proj: DLinear,
    v_proj: DLinear,
    out_proj: DLinear,
}

struct DClipMlp {
    fc1: DLinear,
    fc2: DLinear,
}

/// `text_model.encoder.layers.i`.
struct DEncoderLayer {
    self_attn: DSelfAttention,
    layer_norm1: DLayerNorm,
    mlp: DClipMlp,
    layer_norm2: DLayerNorm,
}

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
    pub cfg: ClipTextConfig,
    dev: Arc<Device>,
    heads: Heads,
    act: Act,
    /// `text_model.embeddings.token_embedding.weight` `[V, D]` bf16.
    token_embedding: Buffer<u16>,
    /// `text_model.embeddings.position_embedding.weight` `[max_position_embeddings, D]` bf16.
    position_embedding: Buffer<u16>,
    layers: Vec<DEncoderLayer>,
    final_layer_norm: DLayerNorm,
    /// `[projection_dim, D]`, no bias.
    text_projection: DLinear,
}

impl CudaClipText {
    /// Loads `text_encoder/` of a model folder (or that folder) onto `dev`, with the checks of
    /// [`crate::clip_text::load_text_encoder`].
    pub fn load(dev: &Arc<Device>, dir: &Path) -> Result<Self> {
        let dir = text_encoder_dir(dir)?;
        let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_dir(&dir)?;
        let model = Self::new(dev, &cfg, &Vb::new(&weights))?;
        ensure_all_used(&weights)?;
        Ok(model)
    }

    /// Builds the model from the same tensors [`crate::clip_text::ClipTextModel::new`] reads.
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
        let dev_ref: &Device = dev;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let linear = |vb: &Vb, i, o, bias| DLinear::upload(dev_ref, &Linear::new(vb, i, o, bias)?);
        let layer = |n: usize| -> Result<DEncoderLayer> {
            let vb = tm.pp("encoder.layers").pp(n);
            let attn = vb.pp("self_attn");
            let proj = |name: &str| Linear::new(&attn.pp(name), d, d, true);
            Ok(DEncoderLayer {
                self_attn: DSelfAttention {
                    q_proj: heads.pad_out(dev_ref, &proj("q_proj")?)?,
                    k_proj: heads.pad_out(dev_ref, &proj("k_proj")?)?,
                    v_proj: heads.pad_out(dev_ref, &proj("v_proj")?)?,
                    out_proj: heads.pad_in(dev_ref, &proj("out_proj")?)?,
                },
                layer_norm1: DLayerNorm::new(dev_ref, &vb.pp("layer_norm1"), d)?,
                mlp: DClipMlp {
                    fc1: linear(&vb.pp("mlp.fc1"), d, i, true)?,
                    fc2: linear(&vb.pp("mlp.fc2"), i, d, true)?,
                },
                layer_norm2: DLayerNorm::new(dev_ref, &vb.pp("layer_norm2"), d)?,
            })
        };
        let table = |name: &str, rows: usize| -> Result<Buffer<u16>> {
            dev.upload(&to_bf16(&emb.pp(name).get("weight", &[rows, d])?))
        };
        Ok(CudaClipText {
            token_embedding: table("token_embedding", cfg.vocab_size)?,
            position_embedding: table("position_embedding", cfg.max_position_embeddings)?,
            layers: (0..cfg.num_hidden_layers)
                .map(layer)
                .collect::<Result<_>>()?,
            final_layer_norm: DLayerNorm::new(dev_ref, &tm.pp("final_layer_norm"), d)?,
            text_projection: linear(&vb.pp("text_projection"), d, cfg.projection_dim, false)?,
            heads,
            act,
            cfg: cfg.clone(),
            dev: dev.clone(),
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
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let ln1 = (layer.layer_norm1.weight.ptr(), layer.layer_norm1.bias.ptr());
            dev.layer_norm_affine(x.ptr(), y.ptr(), rows, d, ln1, self.eps())?;
            for (lin, buf) in [(&attn.q_proj, &q), (&attn.k_proj, &k), (&attn.v_proj, &v)] {
                dev.gemm(GemmOut::Bf16, lin.mat(), y.ptr(), rows, buf.ptr(), plain)?;
            }
            let shape = (batch, len, self.heads.h);
            let qkv = (q.ptr(), k.ptr(), v.ptr());
            let (dh, dp) = (self.heads.dh, self.heads.dp);
            dev.causal_attention(qkv, o.ptr(), hd, shape, dh, dp)?;
            let out_proj = attn.out_proj.mat();
            dev.gemm(GemmOut::Residual, out_proj, o.ptr(), rows, x.ptr(), plain)?;
            let ln2 = (layer.layer_norm2.weight.ptr(), layer.layer_norm2.bias.ptr());
            dev.layer_norm_affine(x.ptr(), y.ptr(), rows, d, ln2, self.eps())?;
            let fc1 = GemmOpts {
                act: self.act,
                ..GemmOpts::default()
            };
            let mlp = &layer.mlp;
            dev.gemm(GemmOut::Bf16, mlp.fc1.mat(), y.ptr(), rows, hid.ptr(), fc1)?;
            dev.gemm(
                GemmOut::Residual,
                mlp.fc2.mat(),
                hid.ptr(),
                rows,
                x.ptr(),
                plain,
            )?;
            if i + 2 == n {
                dev.copy(x.ptr(), out.penultimate.ptr(), rows * d)?;
            }
        }
        let fln = &self.final_layer_norm;
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
        let proj = self.text_projection.mat();
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

    /// The forward with host inputs and outputs, as [`crate::clip_text::ClipTextModel::forward`].
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
        self.token_embedding.len() / self.cfg.hidden_size
    }

    /// Sets the embedding row of token `id` (the `<mask>` row from `mask_token_embedding.pth`),
    /// appending a row when `id` is one past the table, as
    /// [`crate::clip_text::ClipTextModel::set_token_embedding`].
    pub fn set_token_embedding(&mut self, id: usize, row: &[f32]) -> Result<()> {
        let (d, rows) = (self.cfg.hidden_size, self.vocab_rows());
        if row.len() != d {
            return Err(Error::input(
                "mask_token_embedding",
                format!(
                    "{} values, but the text encoder's hidden size is {d}",
                    row.len()
                ),
            ));
        }
        let row = to_bf16(row);
        match id.cmp(&rows) {
            std::cmp::Ordering::Less => self.dev.write(&mut self.token_embedding, id * d, &row),
            std::cmp::Ordering::Equal => {
                let mut table = self.dev.read(&self.token_embedding, 0, rows * d)?;
                table.extend_from_slice(&row);
                self.token_embedding = self.dev.upload(&table)?;
                Ok(())
            }
            std::cmp::Ordering::Greater => Err(Error::input(
                "mask_token_embedding",
                format!("token id {id} is more than one past the text encoder's {rows} embedding rows: the tokenizer and the text encoder do not belong together"),
            )),
        }
    }

    fn eps(&self) -> f32 {
        self.cfg.layer_norm_eps as f32
    }

    /// `x [B, L, D]` f32 `= token_embedding[ids] + position_embedding[s]`.
    fn embed(&self, ids: &Buffer<u32>, len: usize, x: &Buffer<f32>) -> Result<()> {
        self.dev.embedding_pos(
            ids.ptr(),
            (self.token_embedding.ptr(), self.vocab_rows()),
            (self.position_embedding.ptr(), len),
            x.ptr(),
            ids.len(),
            self.cfg.hidden_size,
        )
    }
}
