//! The CLIP text encoder (`transformers` `CLIPTextModelWithProjection`), reference section 3,
//! described once: the layer structs below, whose fields are the checkpoint's module paths
//! (`text_model.encoder.layers.i.self_attn.q_proj`), are loaded and checked once by
//! [`ClipTextModel::load`] for any [`Backend`]; `forward.rs` runs them, once for every backend,
//! over [`crate::ops::Ops`]: on the CPU kernels ([`ClipTextModel::forward`]) and on the CUDA
//! kernels (`cuda.rs`, [`cuda::CudaClipText`]: the device model and its entry points).
//!
//! Activations are row-major sequences `[B, L, D]`. The forward returns what Muddit uses:
//! the penultimate hidden state (the transformer's text features), the last hidden state after
//! `final_layer_norm`, and `text_embeds`, the projection of the last hidden state at the
//! end-of-text position (the pooled vector).

pub(crate) mod cuda;
mod forward;

pub use forward::{ClipOutputs, ClipTextOutput};

use crate::backend::{Backend, Cpu, HeadSide};
use crate::error::{Error, Result};
use crate::model_dir::{build_from, component_dir, open_config, read_config};
use crate::ops::Activation;
use crate::weights::{Vb, Weights};
use crate::Compute;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `text_encoder/config.json` (`CLIPTextConfig`). Missing keys take the transformers defaults;
/// keys this engine does not read (dropout, initializer ranges, generation defaults) are ignored
/// since none of them changes the forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `gelu` (erf), `quick_gelu`, or `gelu_new` / `gelu_pytorch_tanh` (tanh approximation).
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub bos_token_id: i64,
    /// 2 (older converted checkpoints) selects the argmax-of-ids end-of-text rule.
    pub eos_token_id: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            bos_token_id: 49406,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    /// The shape of the public Muddit text encoder (OpenCLIP ViT-H/14's text tower).
    pub fn vit_h14() -> Self {
        ClipTextConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            projection_dim: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            hidden_act: "gelu".into(),
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
            ..Default::default()
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::from_json)
    }

    /// Parses and validates a config; the message names the offending key.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: ClipTextConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("projection_dim", self.projection_dim),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        crate::limits::check_config_sizes(&positive)?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers < 2 {
            return Err(
                "`num_hidden_layers` must be at least 2: Muddit reads the penultimate hidden state"
                    .into(),
            );
        }
        self.activation()?;
        Ok(())
    }

    pub(crate) fn activation(&self) -> std::result::Result<Activation, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(format!(
                "`hidden_act` {other:?} is not supported (gelu, quick_gelu, gelu_new, gelu_pytorch_tanh)"
            )),
        }
    }

    /// The end-of-text position of one row of ids: the argmax of the ids when `eos_token_id`
    /// is 2, else the first position holding `eos_token_id` (0 when there is none, as torch's
    /// argmax of an all-false mask gives).
    pub(crate) fn eos_position(&self, ids: &[i64]) -> usize {
        if self.eos_token_id == 2 {
            // First maximal value, as torch.argmax.
            let mut best = 0;
            for (i, &id) in ids.iter().enumerate() {
                if id > ids[best] {
                    best = i;
                }
            }
            best
        } else {
            ids.iter()
                .position(|&id| id == self.eos_token_id)
                .unwrap_or(0)
        }
    }

    /// Checks `ids [B, L]` against the positions and the `rows` of the token embedding; returns
    /// `L`.
    pub(crate) fn check_ids(&self, ids: &[i64], batch: usize, rows: usize) -> Result<usize> {
        if batch == 0 || ids.is_empty() || ids.len() % batch != 0 {
            return Err(Error::input(
                "input_ids",
                format!("{} ids do not form [B={batch}, L] with L > 0", ids.len()),
            ));
        }
        let len = ids.len() / batch;
        if len > self.max_position_embeddings {
            return Err(Error::input(
                "input_ids",
                format!(
                    "{len} tokens per row, but the text encoder has {} positions",
                    self.max_position_embeddings
                ),
            ));
        }
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || id as usize >= rows)
        {
            return Err(Error::input(
                "input_ids",
                format!("id {id} at flat index {i} is outside the text encoder's 0..{rows}"),
            ));
        }
        Ok(len)
    }

    /// The config as `config.json` writes it, with the class and model type transformers expects.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "architectures".into(),
                serde_json::json!(["CLIPTextModelWithProjection"]),
            );
            map.insert("model_type".into(), "clip_text_model".into());
            map.insert("torch_dtype".into(), "float32".into());
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

/// `nn.LayerNorm` with weight and bias.
pub(crate) struct LayerNorm<B: Backend> {
    /// `[D]`
    pub weight: B::Vector,
    pub bias: B::Vector,
    pub eps: f32,
    /// `D`
    pub width: usize,
}

impl<B: Backend> LayerNorm<B> {
    fn new(b: &B, vb: &Vb, d: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: b.vector(vb, "weight", d)?,
            bias: b.vector(vb, "bias", d)?,
            eps: eps as f32,
            width: d,
        })
    }
}

/// `text_model.embeddings`.
pub(crate) struct Embeddings<B: Backend> {
    /// `[V, D]`; one row longer than the config's `vocab_size` once `<mask>` is appended.
    pub token_embedding: B::Table,
    /// `[max_position_embeddings, D]`
    pub position_embedding: B::Table,
}

/// `self_attn`: causal multi-head attention with biased projections.
pub(crate) struct SelfAttention<B: Backend> {
    pub q_proj: B::Linear,
    pub k_proj: B::Linear,
    pub v_proj: B::Linear,
    pub out_proj: B::Linear,
}

impl<B: Backend> SelfAttention<B> {
    fn new(b: &B, vb: &Vb, d: usize) -> Result<Self> {
        Ok(SelfAttention {
            q_proj: b.linear_heads(&vb.pp("q_proj"), HeadSide::Outputs, (d, d))?,
            k_proj: b.linear_heads(&vb.pp("k_proj"), HeadSide::Outputs, (d, d))?,
            v_proj: b.linear_heads(&vb.pp("v_proj"), HeadSide::Outputs, (d, d))?,
            out_proj: b.linear_heads(&vb.pp("out_proj"), HeadSide::Inputs, (d, d))?,
        })
    }
}

/// `mlp`: `fc1 -> act -> fc2`.
pub(crate) struct ClipMlp<B: Backend> {
    pub fc1: B::Linear,
    pub fc2: B::Linear,
}

/// `text_model.encoder.layers.i`: pre-norm attention and MLP, each with a residual.
pub(crate) struct EncoderLayer<B: Backend> {
    pub self_attn: SelfAttention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> EncoderLayer<B> {
    fn new(b: &B, vb: &Vb, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(EncoderLayer {
            self_attn: SelfAttention::new(b, &vb.pp("self_attn"), d)?,
            layer_norm1: LayerNorm::new(b, &vb.pp("layer_norm1"), d, eps)?,
            mlp: ClipMlp {
                fc1: b.linear(&vb.pp("mlp.fc1"), d, i, true)?,
                fc2: b.linear(&vb.pp("mlp.fc2"), i, d, true)?,
            },
            layer_norm2: LayerNorm::new(b, &vb.pp("layer_norm2"), d, eps)?,
        })
    }
}

/// `text_model` (`CLIPTextTransformer`).
pub(crate) struct ClipTextTransformer<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub layers: Vec<EncoderLayer<B>>,
    pub final_layer_norm: LayerNorm<B>,
}

/// `CLIPTextModelWithProjection` with `B`'s weights (the CPU's by default).
pub struct ClipTextModel<B: Backend = Cpu> {
    pub cfg: ClipTextConfig,
    pub(crate) text_model: ClipTextTransformer<B>,
    /// `[projection_dim, D]`, no bias.
    pub(crate) text_projection: B::Linear,
    pub(crate) activation: Activation,
}

/// A tensor that older checkpoints store and the forward does not need.
const POSITION_IDS: &str = "text_model.embeddings.position_ids";

impl ClipTextModel {
    /// Builds the model on the CPU from `vb` (the `text_encoder/` weights) for `cfg`.
    pub fn new(cfg: &ClipTextConfig, vb: &Vb) -> Result<Self> {
        Self::load(&Cpu, cfg, vb)
    }

    /// Rows of the token embedding: the config's `vocab_size`, plus one once `<mask>` is set.
    pub fn vocab_rows(&self) -> usize {
        self.text_model.embeddings.token_embedding.len() / self.cfg.hidden_size
    }

    /// Sets the embedding row of token `id` (the `<mask>` row from `mask_token_embedding.pth`),
    /// appending a row when `id` is one past the table, as `resize_token_embeddings` does.
    pub fn set_token_embedding(&mut self, id: usize, row: &[f32]) -> Result<()> {
        let (d, rows) = (self.cfg.hidden_size, self.vocab_rows());
        let place = token_row_place(d, rows, id, row)?;
        let table = &mut self.text_model.embeddings.token_embedding;
        match place {
            std::cmp::Ordering::Less => table[id * d..(id + 1) * d].copy_from_slice(row),
            _ => table.extend_from_slice(row),
        }
        Ok(())
    }
}

impl<B: Backend> ClipTextModel<B> {
    /// Reads every layer of `cfg` from `vb` (the `text_encoder/` weights) into `backend`'s
    /// storage; each name and shape is checked as it is read.
    pub fn load(backend: &B, cfg: &ClipTextConfig, vb: &Vb) -> Result<Self> {
        let (b, d) = (backend, cfg.hidden_size);
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let activation = cfg.activation().map_err(|message| Error::Config {
            path: PathBuf::from("text_encoder/config.json"),
            message,
        })?;
        Ok(ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: Embeddings {
                    token_embedding: b.table(&emb.pp("token_embedding"), cfg.vocab_size, d)?,
                    position_embedding: b.table(
                        &emb.pp("position_embedding"),
                        cfg.max_position_embeddings,
                        d,
                    )?,
                },
                layers: (0..cfg.num_hidden_layers)
                    .map(|i| EncoderLayer::new(b, &tm.pp("encoder.layers").pp(i), cfg))
                    .collect::<Result<_>>()?,
                final_layer_norm: LayerNorm::new(
                    b,
                    &tm.pp("final_layer_norm"),
                    d,
                    cfg.layer_norm_eps,
                )?,
            },
            text_projection: b.linear(&vb.pp("text_projection"), d, cfg.projection_dim, false)?,
            activation,
            cfg: cfg.clone(),
        })
    }
}

/// Where `set_token_embedding` puts the `d` values of `row` for token `id` in a table of
/// `rows` rows: over row `id` (`Less`) or appended (`Equal`); more than one past is an error,
/// as is a row of the wrong width.
pub(crate) fn token_row_place(
    d: usize,
    rows: usize,
    id: usize,
    row: &[f32],
) -> Result<std::cmp::Ordering> {
    if row.len() != d {
        return Err(Error::input(
            "mask_token_embedding",
            format!(
                "{} values, but the text encoder's hidden size is {d}",
                row.len()
            ),
        ));
    }
    match id.cmp(&rows) {
        std::cmp::Ordering::Greater => Err(Error::input(
            "mask_token_embedding",
            format!("token id {id} is more than one past the text encoder's {rows} embedding rows: the tokenizer and the text encoder do not belong together"),
        )),
        place => Ok(place),
    }
}

/// The `text_encoder/` folder of `dir`, which may be the model root or that folder itself.
pub fn text_encoder_dir(dir: &Path) -> Result<PathBuf> {
    component_dir(dir, "text_encoder")
}

/// Loads the text encoder of a model folder (root or `text_encoder/`), checking that the weights
/// hold nothing the config does not account for (an old `position_ids` buffer aside).
pub fn load_text_encoder(dir: &Path) -> Result<ClipTextModel> {
    load_text_encoder_with(dir, Compute::F32)
}

/// [`load_text_encoder`] with the matrix products in `compute` arithmetic.
pub fn load_text_encoder_with(dir: &Path, compute: Compute) -> Result<ClipTextModel> {
    let (dir, cfg) = open_config(dir, "text_encoder", ClipTextConfig::from_file)?;
    text_encoder_from(&dir, &cfg, compute)
}

/// The text encoder of the `text_encoder/` folder `dir` whose config is already read.
pub(crate) fn text_encoder_from(
    dir: &Path,
    cfg: &ClipTextConfig,
    compute: Compute,
) -> Result<ClipTextModel> {
    let build = |vb: &Vb| ClipTextModel::new(cfg, vb);
    build_from(dir, compute, build, ensure_all_used)
}

/// [`Weights::ensure_all_used`] but for an old `position_ids` buffer.
pub(crate) fn ensure_all_used(weights: &Weights) -> Result<()> {
    match weights.ensure_all_used() {
        Err(Error::UnexpectedWeights {
            count: 1, example, ..
        }) if example == POSITION_IDS => Ok(()),
        other => other,
    }
}
