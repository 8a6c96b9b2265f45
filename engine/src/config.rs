//! `transformer/config.json`: the MM-DiT's shape, read through serde and checked.

use crate::error::Result;
use crate::model_dir::parse_config;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which upstream class the folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelClass {
    /// Muddit: image and text heads.
    SymmetricTransformer2DModel,
    /// Meissonic: text-to-image only, no text head.
    Transformer2DModel,
}

/// The transformer config. Missing keys take the upstream constructor's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: ModelClass,
    /// Dual-stream blocks.
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the text features in.
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    /// Rotary widths of the (unused, row, column) axes; they sum to the head dim.
    pub axes_dims_rope: [usize; 3],
    /// Image ids including the mask id, which is `vocab_size - 1`.
    pub vocab_size: usize,
    /// Image logits per token.
    pub codebook_size: usize,
    /// Text logits per token; `None` means no text head.
    pub tokenizer_vocab_size: Option<usize>,
    pub downsample: bool,
    pub upsample: bool,
    /// Must be 1: the only patching upstream implements.
    pub patch_size: usize,
    /// Unused by the forward (kept so that written configs match the public layout).
    pub in_channels: usize,
    /// Must be false: no guidance embedding in this family.
    pub guidance_embeds: bool,
    /// Must be null: the T5 adapter is not part of the public models.
    pub t5_dim: Option<usize>,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            class_name: ModelClass::SymmetricTransformer2DModel,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            axes_dims_rope: [16, 56, 56],
            vocab_size: 8256,
            codebook_size: 8192,
            tokenizer_vocab_size: None,
            downsample: false,
            upsample: false,
            patch_size: 1,
            in_channels: 64,
            guidance_embeds: false,
            t5_dim: None,
        }
    }
}

/// Keys this engine reads; any other key (but `_`-prefixed metadata) is an error, since a key we
/// do not know may change the computation.
const KNOWN_KEYS: [&str; 16] = [
    "num_layers",
    "num_single_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "pooled_projection_dim",
    "axes_dims_rope",
    "vocab_size",
    "codebook_size",
    "tokenizer_vocab_size",
    "downsample",
    "upsample",
    "patch_size",
    "in_channels",
    "guidance_embeds",
    "t5_dim",
];

impl TransformerConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::model_dir::read_config(path, Self::from_json)
    }

    /// Parses and validates a config; the message names the offending key.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: TransformerConfig = parse_config(text, &KNOWN_KEYS, |map| {
            if map.contains_key("_class_name") {
                Ok(())
            } else {
                Err(
                    "no `_class_name` (expected SymmetricTransformer2DModel or Transformer2DModel)"
                        .into(),
                )
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        crate::limits::check_config_sizes(&[
            ("num_layers", self.num_layers.max(1)),
            ("num_single_layers", self.num_single_layers.max(1)),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            (
                "inner dim (heads x head dim)",
                self.num_attention_heads
                    .saturating_mul(self.attention_head_dim),
            ),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
            ("vocab_size", self.vocab_size),
            ("codebook_size", self.codebook_size),
            (
                "tokenizer_vocab_size",
                self.tokenizer_vocab_size.unwrap_or(1),
            ),
            (
                "axes_dims_rope",
                self.axes_dims_rope
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0)
                    .max(1),
            ),
        ])?;
        let d = self.inner_dim();
        if self.class_name == ModelClass::Transformer2DModel && self.tokenizer_vocab_size.is_some()
        {
            return Err(
                "`tokenizer_vocab_size` is set but Transformer2DModel has no text head".into(),
            );
        }
        if self.class_name == ModelClass::Transformer2DModel && self.pooled_projection_dim != d {
            return Err(format!(
                "Transformer2DModel needs `pooled_projection_dim` ({}) equal to num_attention_heads * attention_head_dim ({d}): its text embedder reads the {d}-wide output of cond_embed",
                self.pooled_projection_dim
            ));
        }
        if self.patch_size != 1 {
            return Err(format!(
                "`patch_size` {} is not supported (only 1)",
                self.patch_size
            ));
        }
        if self.guidance_embeds {
            return Err("`guidance_embeds: true` is not supported by this model family".into());
        }
        if let Some(t5) = self.t5_dim {
            return Err(format!("`t5_dim: {t5}` (a T5 adapter) is not supported"));
        }
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err("`num_attention_heads` and `attention_head_dim` must be positive".into());
        }
        let rope: usize = self.axes_dims_rope.iter().sum();
        if rope != self.attention_head_dim || self.axes_dims_rope.iter().any(|a| a % 2 != 0) {
            return Err(format!(
                "`axes_dims_rope` {:?} must be even widths summing to `attention_head_dim` {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.vocab_size < 2 || self.codebook_size == 0 {
            return Err("`vocab_size` must be at least 2 and `codebook_size` positive".into());
        }
        if self.tokenizer_vocab_size == Some(0) {
            return Err("`tokenizer_vocab_size` must be positive or null".into());
        }
        if [self.joint_attention_dim, self.pooled_projection_dim].contains(&0) {
            return Err(
                "`joint_attention_dim` and `pooled_projection_dim` must be positive".into(),
            );
        }
        Ok(())
    }

    /// `D = num_attention_heads * attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The image mask id, `vocab_size - 1`.
    pub fn mask_id(&self) -> usize {
        self.vocab_size - 1
    }

    /// Width of the text embedder's input: `cond_embed` output (`D`) for Muddit, the configured
    /// `pooled_projection_dim` for Meissonic (validated equal to `D`).
    pub fn text_embedder_in(&self) -> usize {
        match self.class_name {
            ModelClass::SymmetricTransformer2DModel => self.inner_dim(),
            ModelClass::Transformer2DModel => self.pooled_projection_dim,
        }
    }

    /// The config as `config.json` text, with the diffusers metadata keys.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("_diffusers_version".into(), "0.34.0".into());
            if self.class_name == ModelClass::Transformer2DModel {
                map.remove("tokenizer_vocab_size");
                map.remove("t5_dim");
            }
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    /// Named shapes: `muddit-512` is the public 1B model; `tiny` a small one for tests.
    pub fn preset(name: &str) -> Option<Self> {
        let muddit_512 = TransformerConfig {
            class_name: ModelClass::SymmetricTransformer2DModel,
            num_layers: 14,
            num_single_layers: 28,
            attention_head_dim: 128,
            num_attention_heads: 8,
            joint_attention_dim: 1024,
            pooled_projection_dim: 1024,
            axes_dims_rope: [16, 56, 56],
            vocab_size: 8256,
            codebook_size: 8192,
            tokenizer_vocab_size: Some(49409),
            downsample: true,
            upsample: true,
            ..Default::default()
        };
        let tiny = TransformerConfig {
            num_layers: 2,
            num_single_layers: 2,
            attention_head_dim: 32,
            num_attention_heads: 2,
            joint_attention_dim: 48,
            pooled_projection_dim: 40,
            axes_dims_rope: [8, 12, 12],
            vocab_size: 72,
            codebook_size: 64,
            tokenizer_vocab_size: Some(1001),
            ..muddit_512.clone()
        };
        match name {
            "muddit-512" => Some(muddit_512),
            "tiny" => Some(tiny),
            "meissonic-tiny" => Some(TransformerConfig {
                class_name: ModelClass::Transformer2DModel,
                pooled_projection_dim: 64,
                tokenizer_vocab_size: None,
                ..tiny
            }),
            _ => None,
        }
    }

    /// The preset names `preset` knows.
    pub const PRESETS: [&'static str; 3] = ["muddit-512", "tiny", "meissonic-tiny"];
}
