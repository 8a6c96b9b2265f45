//! The CLIP text encoder (`transformers` `CLIPTextModelWithProjection`), reference section 3:
//! field names are the checkpoint's module paths (`text_model.encoder.layers.i.self_attn.q_proj`).
//!
//! Activations are row-major `f32` sequences `[B, L, D]`. The forward returns what Muddit uses:
//! the penultimate hidden state (the transformer's text features), the last hidden state after
//! `final_layer_norm`, and `text_embeds`, the projection of the last hidden state at the
//! end-of-text position (the pooled vector).

use crate::error::{Error, Result};
use crate::model_dir::component_dir;
use crate::nn::Linear;
use crate::weights::{Vb, Weights};
use crate::Compute;
use muddit_kernels::cpu::{act, attention::attention_with, norm};
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

/// The MLP activation of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    GeluErf,
    QuickGelu,
    GeluTanh,
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let cfg: ClipTextConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        cfg.validate().map_err(bad)?;
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
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{key}` must be positive"));
        }
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
struct LayerNorm {
    /// `[D]`
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn new(vb: &Vb, d: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get("weight", &[d])?,
            bias: vb.get("bias", &[d])?,
            eps: eps as f32,
        })
    }

    /// `[M, D] -> [M, D]`
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let d = self.weight.len();
        let mut y = x.to_vec();
        norm::layer_norm_(&mut y, d, self.eps);
        for row in y.chunks_exact_mut(d) {
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = *v * w + b;
            }
        }
        y
    }
}

/// `text_model.embeddings`.
struct Embeddings {
    /// `[V, D]`; one row longer than the config's `vocab_size` once `<mask>` is appended.
    token_embedding: Vec<f32>,
    /// `[max_position_embeddings, D]`
    position_embedding: Vec<f32>,
}

/// `self_attn`: causal multi-head attention with biased projections.
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
}

/// `mlp`: `fc1 -> act -> fc2`.
struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
}

/// `text_model.encoder.layers.i`: pre-norm attention and MLP, each with a residual.
struct EncoderLayer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

/// `text_model` (`CLIPTextTransformer`).
struct ClipTextTransformer {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

/// `CLIPTextModelWithProjection`.
pub struct ClipTextModel {
    pub cfg: ClipTextConfig,
    text_model: ClipTextTransformer,
    /// `[projection_dim, D]`, no bias.
    text_projection: Linear,
    activation: Activation,
}

/// One forward's outputs.
pub struct ClipTextOutput {
    /// `[B, projection_dim]`
    pub text_embeds: Vec<f32>,
    /// `[B, L, D]`: output of layer `n - 1` of `n` (`hidden_states[-2]`), before the final norm.
    pub penultimate: Vec<f32>,
    /// `[B, L, D]`: output of the last layer after `final_layer_norm`.
    pub last_hidden_state: Vec<f32>,
}

/// A tensor that older checkpoints store and the forward does not need.
const POSITION_IDS: &str = "text_model.embeddings.position_ids";

impl SelfAttention {
    fn new(vb: &Vb, d: usize) -> Result<Self> {
        Ok(SelfAttention {
            q_proj: Linear::new(&vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::new(&vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::new(&vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::new(&vb.pp("out_proj"), d, d, true)?,
        })
    }

    /// `[B, L, D] -> [B, L, D]`, causal, scale `1/sqrt(Dh)`.
    fn forward(&self, x: &[f32], batch: usize, len: usize, heads: usize) -> Vec<f32> {
        let d = self.q_proj.out_dim;
        let (q, k, v) = (
            self.q_proj.forward(x),
            self.k_proj.forward(x),
            self.v_proj.forward(x),
        ); // [B, L, H, Dh] each
        let mut out = vec![0.0; x.len()];
        let compute = self.q_proj.compute();
        attention_with(
            &q,
            &k,
            &v,
            batch,
            len,
            heads,
            d / heads,
            true,
            compute,
            &mut out,
        );
        self.out_proj.forward(&out)
    }
}

impl EncoderLayer {
    fn new(vb: &Vb, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(EncoderLayer {
            self_attn: SelfAttention::new(&vb.pp("self_attn"), d)?,
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), d, eps)?,
            mlp: ClipMlp {
                fc1: Linear::new(&vb.pp("mlp.fc1"), d, cfg.intermediate_size, true)?,
                fc2: Linear::new(&vb.pp("mlp.fc2"), cfg.intermediate_size, d, true)?,
            },
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), d, eps)?,
        })
    }

    /// `x [B, L, D]` updated in place.
    fn forward(&self, x: &mut [f32], batch: usize, len: usize, heads: usize, act: Activation) {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(x), batch, len, heads);
        x.iter_mut().zip(&attn).for_each(|(v, a)| *v += a);
        let mut h = self.mlp.fc1.forward(&self.layer_norm2.forward(x)); // [B, L, I]
        match act {
            Activation::GeluErf => act::gelu_erf_(&mut h),
            Activation::QuickGelu => act::quick_gelu_(&mut h),
            Activation::GeluTanh => act::gelu_tanh_(&mut h),
        }
        let mlp = self.mlp.fc2.forward(&h);
        x.iter_mut().zip(&mlp).for_each(|(v, m)| *v += m);
    }
}

impl ClipTextModel {
    /// Builds the model from `vb` (the `text_encoder/` weights) for `cfg`.
    pub fn new(cfg: &ClipTextConfig, vb: &Vb) -> Result<Self> {
        let d = cfg.hidden_size;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let activation = cfg.activation().map_err(|message| Error::Config {
            path: PathBuf::from("text_encoder/config.json"),
            message,
        })?;
        Ok(ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: Embeddings {
                    token_embedding: emb
                        .pp("token_embedding")
                        .get("weight", &[cfg.vocab_size, d])?,
                    position_embedding: emb
                        .pp("position_embedding")
                        .get("weight", &[cfg.max_position_embeddings, d])?,
                },
                layers: (0..cfg.num_hidden_layers)
                    .map(|i| EncoderLayer::new(&tm.pp("encoder.layers").pp(i), cfg))
                    .collect::<Result<_>>()?,
                final_layer_norm: LayerNorm::new(
                    &tm.pp("final_layer_norm"),
                    d,
                    cfg.layer_norm_eps,
                )?,
            },
            text_projection: Linear::new(&vb.pp("text_projection"), d, cfg.projection_dim, false)?,
            activation,
            cfg: cfg.clone(),
        })
    }

    /// Rows of the token embedding: the config's `vocab_size`, plus one once `<mask>` is set.
    pub fn vocab_rows(&self) -> usize {
        self.text_model.embeddings.token_embedding.len() / self.cfg.hidden_size
    }

    /// Sets the embedding row of token `id` (the `<mask>` row from `mask_token_embedding.pth`),
    /// appending a row when `id` is one past the table, as `resize_token_embeddings` does.
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
        let table = &mut self.text_model.embeddings.token_embedding;
        match id.cmp(&rows) {
            std::cmp::Ordering::Less => table[id * d..(id + 1) * d].copy_from_slice(row),
            std::cmp::Ordering::Equal => table.extend_from_slice(row),
            std::cmp::Ordering::Greater => {
                return Err(Error::input(
                    "mask_token_embedding",
                    format!("token id {id} is more than one past the text encoder's {rows} embedding rows: the tokenizer and the text encoder do not belong together"),
                ))
            }
        }
        Ok(())
    }

    /// `ids [B, L]` (L at most `max_position_embeddings`) -> text features, see `ClipTextOutput`.
    pub fn forward(&self, ids: &[i64], batch: usize) -> Result<ClipTextOutput> {
        let (d, rows) = (self.cfg.hidden_size, self.vocab_rows());
        let len = self.cfg.check_ids(ids, batch, rows)?;
        let emb = &self.text_model.embeddings;
        let mut x = Vec::with_capacity(batch * len * d); // [B, L, D]
        for row in ids.chunks_exact(len) {
            for (p, &id) in row.iter().enumerate() {
                let tok = &emb.token_embedding[id as usize * d..(id as usize + 1) * d];
                let pos = &emb.position_embedding[p * d..(p + 1) * d];
                x.extend(tok.iter().zip(pos).map(|(t, q)| t + q));
            }
        }
        let n = self.text_model.layers.len();
        let heads = self.cfg.num_attention_heads;
        let mut penultimate = Vec::new();
        for (i, layer) in self.text_model.layers.iter().enumerate() {
            layer.forward(&mut x, batch, len, heads, self.activation);
            if i + 2 == n {
                penultimate = x.clone();
            }
        }
        let last_hidden_state = self.text_model.final_layer_norm.forward(&x);
        let pooled: Vec<f32> = ids
            .chunks_exact(len)
            .enumerate()
            .flat_map(|(b, row)| {
                let at = (b * len + self.cfg.eos_position(row)) * d;
                last_hidden_state[at..at + d].to_vec()
            })
            .collect(); // [B, D]
        Ok(ClipTextOutput {
            text_embeds: self.text_projection.forward(&pooled),
            penultimate,
            last_hidden_state,
        })
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
    let dir = text_encoder_dir(dir)?;
    let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
    text_encoder_from(&dir, &cfg, compute)
}

/// The text encoder of the `text_encoder/` folder `dir` whose config is already read.
pub(crate) fn text_encoder_from(
    dir: &Path,
    cfg: &ClipTextConfig,
    compute: Compute,
) -> Result<ClipTextModel> {
    let weights = Weights::open_dir(dir)?;
    let model = ClipTextModel::new(cfg, &Vb::new(&weights).with_compute(compute))?;
    ensure_all_used(&weights)?;
    Ok(model)
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
