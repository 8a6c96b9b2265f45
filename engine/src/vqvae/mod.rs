//! The VQ-VAE (`diffusers` `VQModel` with `Encoder`, `VectorQuantizer` and `Decoder`),
//! reference section 4, described once: the layer structs below, whose fields are the
//! checkpoint's module paths, are loaded and checked once for any [`Backend`] ([`VqModel::load`],
//! or one half: [`EncoderHalf::load`], [`DecoderHalf::load`]), and run by one forward
//! (`forward.rs`) over the feature-map operations of [`ops::MapOps`]: `cpu.rs` ([`VqModel`]'s
//! `encode`, `decode`) runs it on the CPU kernels, `cuda/` ([`cuda::CudaVqEncoder`],
//! [`cuda::CudaVqDecoder`]) on the CUDA kernels.
//!
//! Activations are channel-last feature maps `[B, H, W, C]`. Convolutions build no im2col
//! buffer: on the CPU ([`crate::nn::Conv2d`]) a 3x3 same-padded one with at least 16 channels
//! each side runs as Winograd F(2x2, 3x3) where AVX-512 is present, every other as a direct
//! product against weights packed at load; on CUDA each is an implicit GEMM. Images cross the
//! API in the reference's `[B, 3, H, W]` layout, pixels in `[0, 1]` (no `[-1, 1]` mapping: the
//! pipeline feeds `ToTensor()` output straight to `encode` and clips the decoder's output to
//! `[0, 1]`).
//!
//! Decoding takes ids, as the pipeline does: codebook rows -> `post_quant_conv` -> decoder. (The
//! reference reaches the codebook through `lookup_from_codebook`; with that flag off its pipeline
//! would feed the raw ids to `post_quant_conv` and fail, so ids are always looked up here.)
//! `force_upcast` and `scaling_factor` do not change `encode` or `decode`: everything runs in f32.
//! `norm_type: "spatial"` (the decoder's norms conditioned on the codebook rows, `SpatialNorm`)
//! is supported as well as the public `"group"` (on the CPU).

mod cpu;
pub(crate) mod cuda;
mod forward;
pub(crate) mod ops;

use crate::backend::{Backend, Conv2dSpec, Cpu, HeadSide};
use crate::error::{Error, Result};
use crate::model_dir::{build_from, component_dir, open_config, parse_config, read_config};
use crate::weights::{Vb, Weights};
use crate::Compute;
use ops::Codebook;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `vqvae/config.json`. Missing keys take the `VQModel` constructor's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VqConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// One `DownEncoderBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// One `UpDecoderBlock2D` per level.
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder level (the decoder has one more).
    pub layers_per_block: usize,
    /// `silu`/`swish`, `gelu`, `relu` or `mish`.
    pub act_fn: String,
    pub latent_channels: usize,
    pub sample_size: usize,
    /// Codebook entries `V`.
    pub num_vq_embeddings: usize,
    pub norm_num_groups: usize,
    /// Codebook width; `None` means `latent_channels`.
    pub vq_embed_dim: Option<usize>,
    pub scaling_factor: f64,
    /// `group`, or `spatial`: the decoder's norms are `SpatialNorm`s conditioned on the codebook
    /// rows.
    pub norm_type: String,
    pub mid_block_add_attention: bool,
    pub lookup_from_codebook: bool,
    pub force_upcast: bool,
}

impl Default for VqConfig {
    fn default() -> Self {
        VqConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 3,
            sample_size: 32,
            num_vq_embeddings: 256,
            norm_num_groups: 32,
            vq_embed_dim: None,
            scaling_factor: 0.18215,
            norm_type: "group".into(),
            mid_block_add_attention: true,
            lookup_from_codebook: false,
            force_upcast: false,
        }
    }
}

/// Keys this engine reads; any other key (but `_`-prefixed metadata) is an error.
const KNOWN_KEYS: [&str; 17] = [
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "sample_size",
    "num_vq_embeddings",
    "norm_num_groups",
    "vq_embed_dim",
    "scaling_factor",
    "norm_type",
    "mid_block_add_attention",
    "lookup_from_codebook",
    "force_upcast",
];

/// GroupNorm eps of every norm in the family.
const EPS: f32 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Silu,
    Gelu,
    Relu,
    Mish,
}

impl VqConfig {
    /// The public Muddit / Meissonic VQ-VAE: 5 levels 128-256-256-512-768, 2 blocks per level,
    /// 64 latent channels, 8192 codes, no mid-block attention; 512 px -> 32 x 32 ids.
    pub fn muddit() -> Self {
        VqConfig {
            down_block_types: vec!["DownEncoderBlock2D".into(); 5],
            up_block_types: vec!["UpDecoderBlock2D".into(); 5],
            block_out_channels: vec![128, 256, 256, 512, 768],
            layers_per_block: 2,
            latent_channels: 64,
            num_vq_embeddings: 8192,
            mid_block_add_attention: false,
            lookup_from_codebook: true,
            ..Default::default()
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::from_json)
    }

    /// Parses and validates a config; the message names the offending key.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: VqConfig = parse_config(text, &KNOWN_KEYS, |_| Ok(()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let levels = self.block_out_channels.len();
        if levels > 16 {
            return Err(format!("{levels} `block_out_channels`: at most 16 levels"));
        }
        let mut sizes = vec![
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block.max(1)),
            ("latent_channels", self.latent_channels),
            ("num_vq_embeddings", self.num_vq_embeddings),
            ("norm_num_groups", self.norm_num_groups),
            ("vq_embed_dim", self.vq_embed_dim.unwrap_or(1)),
        ];
        sizes.extend(
            self.block_out_channels
                .iter()
                .map(|&c| ("block_out_channels", c)),
        );
        crate::limits::check_config_sizes(&sizes)?;
        if levels == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(format!(
                "{} `down_block_types` and {} `up_block_types` for {levels} `block_out_channels`",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        only_block_type("down", &self.down_block_types, "DownEncoderBlock2D")?;
        only_block_type("up", &self.up_block_types, "UpDecoderBlock2D")?;
        match self.norm_type.as_str() {
            "group" => {}
            "spatial" => {
                if let Some(c) = self.block_out_channels.iter().find(|c| *c % 32 != 0) {
                    return Err(format!("`norm_type` spatial: block channels {c} do not split into the 32 groups of SpatialNorm"));
                }
                if self.embed_dim() != self.latent_channels {
                    return Err(format!("`norm_type` spatial needs `vq_embed_dim` ({}) equal to `latent_channels` ({}): the decoder's norms read the codebook rows", self.embed_dim(), self.latent_channels));
                }
            }
            other => {
                return Err(format!(
                    "`norm_type` {other:?} is not supported (\"group\" or \"spatial\")"
                ))
            }
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return Err("`norm_num_groups` must be positive".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || *c % g != 0)
        {
            return Err(format!(
                "block channels {c} do not split into `norm_num_groups` {g} groups"
            ));
        }
        let sizes = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("num_vq_embeddings", self.num_vq_embeddings),
            ("layers_per_block", self.layers_per_block.max(1)),
            ("vq_embed_dim", self.embed_dim()),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{key}` must be positive"));
        }
        self.activation()?;
        Ok(())
    }

    pub(crate) fn activation(&self) -> std::result::Result<Activation, String> {
        match self.act_fn.as_str() {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            "mish" => Ok(Activation::Mish),
            other => Err(format!(
                "`act_fn` {other:?} is not supported (silu, swish, gelu, relu, mish)"
            )),
        }
    }

    /// Checks decoder input `ids [B, h, w]`: a non-empty grid of codebook ids.
    pub(crate) fn check_ids(&self, ids: &[i64], batch: usize, h: usize, w: usize) -> Result<()> {
        let v = self.num_vq_embeddings;
        if batch == 0 || h == 0 || w == 0 || ids.len() != batch * h * w {
            return Err(Error::input(
                "tokens",
                format!(
                    "{} ids do not form a non-empty [B={batch}, {h}, {w}]",
                    ids.len()
                ),
            ));
        }
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || id as usize >= v)
        {
            return Err(Error::input(
                "tokens",
                format!("id {id} at flat index {i} is outside the codebook's 0..{v}"),
            ));
        }
        Ok(())
    }

    /// Codebook width `E`.
    pub fn embed_dim(&self) -> usize {
        self.vq_embed_dim.unwrap_or(self.latent_channels)
    }

    /// Pixels per id along each axis: `2^(levels - 1)`.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The config as diffusers writes it.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("_class_name".into(), "VQModel".into());
            map.insert("_diffusers_version".into(), "0.34.0".into());
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

/// A channel-last feature map `[batch, h, w, c]`.
pub struct FeatureMap {
    pub data: Vec<f32>,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

/// `nn.GroupNorm(groups, C, eps=1e-6)`.
pub(crate) struct GroupNorm<B: Backend> {
    /// `[C]`
    pub weight: B::Vector,
    pub bias: B::Vector,
    pub groups: usize,
}

impl<B: Backend> GroupNorm<B> {
    fn new(b: &B, vb: &Vb, c: usize, groups: usize) -> Result<Self> {
        Ok(GroupNorm {
            weight: b.vector(vb, "weight", c)?,
            bias: b.vector(vb, "bias", c)?,
            groups,
        })
    }
}

/// `SpatialNorm`: GroupNorm with 32 groups, then `* conv_y(zq) + conv_b(zq)`, with the codebook
/// rows `zq` upsampled (nearest) to the feature map.
pub(crate) struct SpatialNorm<B: Backend> {
    pub norm_layer: GroupNorm<B>,
    pub conv_y: B::Conv,
    pub conv_b: B::Conv,
}

impl<B: Backend> SpatialNorm<B> {
    fn new(b: &B, vb: &Vb, c: usize, zq_channels: usize) -> Result<Self> {
        Ok(SpatialNorm {
            norm_layer: GroupNorm::new(b, &vb.pp("norm_layer"), c, 32)?,
            conv_y: b.conv2d(&vb.pp("conv_y"), Conv2dSpec::pointwise(zq_channels, c))?,
            conv_b: b.conv2d(&vb.pp("conv_b"), Conv2dSpec::pointwise(zq_channels, c))?,
        })
    }
}

/// The norm of a block: a GroupNorm, or a SpatialNorm in a `norm_type: spatial` decoder.
pub(crate) enum Norm<B: Backend> {
    Group(GroupNorm<B>),
    Spatial(SpatialNorm<B>),
}

impl<B: Backend> Norm<B> {
    /// A GroupNorm of `groups`, or a SpatialNorm reading `zq_channels` when given.
    fn new(b: &B, vb: &Vb, c: usize, groups: usize, zq_channels: Option<usize>) -> Result<Self> {
        Ok(match zq_channels {
            None => Norm::Group(GroupNorm::new(b, vb, c, groups)?),
            Some(z) => Norm::Spatial(SpatialNorm::new(b, vb, c, z)?),
        })
    }
}

/// `ResnetBlock2D` (no time embedding) or, with spatial norms, `ResnetBlockCondNorm2D`:
/// norm -> act -> conv3x3, twice, plus the (1x1) shortcut.
pub(crate) struct ResnetBlock2D<B: Backend> {
    pub norm1: Norm<B>,
    pub conv1: B::Conv,
    pub norm2: Norm<B>,
    pub conv2: B::Conv,
    pub conv_shortcut: Option<B::Conv>,
}

impl<B: Backend> ResnetBlock2D<B> {
    fn new(
        b: &B,
        vb: &Vb,
        (c_in, c_out): (usize, usize),
        groups: usize,
        zq: Option<usize>,
    ) -> Result<Self> {
        Ok(ResnetBlock2D {
            norm1: Norm::new(b, &vb.pp("norm1"), c_in, groups, zq)?,
            conv1: b.conv2d(&vb.pp("conv1"), Conv2dSpec::same3(c_in, c_out))?,
            norm2: Norm::new(b, &vb.pp("norm2"), c_out, groups, zq)?,
            conv2: b.conv2d(&vb.pp("conv2"), Conv2dSpec::same3(c_out, c_out))?,
            conv_shortcut: (c_in != c_out)
                .then(|| b.conv2d(&vb.pp("conv_shortcut"), Conv2dSpec::pointwise(c_in, c_out)))
                .transpose()?,
        })
    }
}

/// The mid block's single-head self-attention over pixels (`Attention` with a group norm, or a
/// spatial norm in a spatial decoder, and a residual connection).
pub(crate) struct AttnBlock<B: Backend> {
    pub group_norm: Option<GroupNorm<B>>,
    pub spatial_norm: Option<SpatialNorm<B>>,
    pub to_q: B::Linear,
    pub to_k: B::Linear,
    pub to_v: B::Linear,
    /// `to_out.0`
    pub to_out: B::Linear,
}

impl<B: Backend> AttnBlock<B> {
    fn new(b: &B, vb: &Vb, c: usize, groups: usize, zq: Option<usize>) -> Result<Self> {
        Ok(AttnBlock {
            group_norm: zq
                .is_none()
                .then(|| GroupNorm::new(b, &vb.pp("group_norm"), c, groups))
                .transpose()?,
            spatial_norm: zq
                .map(|z| SpatialNorm::new(b, &vb.pp("spatial_norm"), c, z))
                .transpose()?,
            to_q: b.linear_heads(&vb.pp("to_q"), HeadSide::Outputs, (c, c))?,
            to_k: b.linear_heads(&vb.pp("to_k"), HeadSide::Outputs, (c, c))?,
            to_v: b.linear_heads(&vb.pp("to_v"), HeadSide::Outputs, (c, c))?,
            to_out: b.linear_heads(&vb.pp("to_out.0"), HeadSide::Inputs, (c, c))?,
        })
    }
}

/// `UNetMidBlock2D`: ResNet, (attention), ResNet.
pub(crate) struct MidBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<AttnBlock<B>>,
}

impl<B: Backend> MidBlock<B> {
    fn new(b: &B, vb: &Vb, c: usize, cfg: &VqConfig, zq: Option<usize>) -> Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(MidBlock {
            resnets: (0..2)
                .map(|i| ResnetBlock2D::new(b, &vb.pp("resnets").pp(i), (c, c), g, zq))
                .collect::<Result<_>>()?,
            attentions: if cfg.mid_block_add_attention {
                vec![AttnBlock::new(b, &vb.pp("attentions.0"), c, g, zq)?]
            } else {
                Vec::new()
            },
        })
    }
}

/// `DownEncoderBlock2D`: ResNets, then (but on the last level) a stride-2 3x3 conv.
pub(crate) struct DownEncoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `downsamplers.0.conv`
    pub downsampler: Option<B::Conv>,
}

/// `UpDecoderBlock2D`: ResNets, then (but on the last level) nearest 2x + 3x3 conv.
pub(crate) struct UpDecoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `upsamplers.0.conv`
    pub upsampler: Option<B::Conv>,
}

/// `encoder`.
pub(crate) struct Encoder<B: Backend> {
    pub conv_in: B::Conv,
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    pub mid_block: MidBlock<B>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: B::Conv,
}

/// `decoder`.
pub(crate) struct Decoder<B: Backend> {
    pub conv_in: B::Conv,
    pub mid_block: MidBlock<B>,
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    pub conv_norm_out: Norm<B>,
    pub conv_out: B::Conv,
}

/// Refuses the first of the `kind` block types `types` that is not `want`.
fn only_block_type(kind: &str, types: &[String], want: &str) -> std::result::Result<(), String> {
    match types.iter().find(|t| *t != want) {
        Some(t) => Err(format!(
            "{kind} block type `{t}` is not supported (only {want})"
        )),
        None => Ok(()),
    }
}

/// The blocks `vb.<name>.{i}` of the levels of channel list `ch`, each built by
/// `block(vb.<name>.{i}, (c_in, c_out), last)`: `c_in` the previous level's `c_out` (the first
/// level's own), `last` on the last level (which does not resample).
fn level_blocks<T>(
    vb: &Vb,
    name: &str,
    ch: &[usize],
    block: impl Fn(&Vb, (usize, usize), bool) -> Result<T>,
) -> Result<Vec<T>> {
    ch.iter()
        .enumerate()
        .map(|(i, &c_out)| {
            let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
            block(&vb.pp(name).pp(i), (c_in, c_out), i + 1 == ch.len())
        })
        .collect()
}

/// A level's resampling conv `vb.<name>` of `spec`, absent on the last level.
fn resampler<B: Backend>(
    b: &B,
    vb: &Vb,
    name: &str,
    last: bool,
    spec: Conv2dSpec,
) -> Result<Option<B::Conv>> {
    (!last).then(|| b.conv2d(&vb.pp(name), spec)).transpose()
}

/// `n` ResNets `vb.resnets.{j}`: the first `c_in -> c_out`, the others `c_out -> c_out`.
fn resnets<B: Backend>(
    b: &B,
    vb: &Vb,
    n: usize,
    (c_in, c_out): (usize, usize),
    groups: usize,
    zq: Option<usize>,
) -> Result<Vec<ResnetBlock2D<B>>> {
    (0..n)
        .map(|j| {
            let c = if j == 0 { c_in } else { c_out };
            ResnetBlock2D::new(b, &vb.pp("resnets").pp(j), (c, c_out), groups, zq)
        })
        .collect()
}

impl<B: Backend> Encoder<B> {
    fn new(b: &B, vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let (ch, g) = (&cfg.block_out_channels, cfg.norm_num_groups);
        let last = *ch.last().unwrap_or(&0);
        let down_blocks = level_blocks(vb, "down_blocks", ch, |vb, (c_in, c_out), last_level| {
            // diffusers' Downsample2D with padding 0 pads right and bottom by one.
            let down = Conv2dSpec {
                stride: 2,
                pad: [0, 1, 0, 1],
                ..Conv2dSpec::same3(c_out, c_out)
            };
            Ok(DownEncoderBlock2D {
                resnets: resnets(b, vb, cfg.layers_per_block, (c_in, c_out), g, None)?,
                downsampler: resampler(b, vb, "downsamplers.0.conv", last_level, down)?,
            })
        })?;
        let conv_in = Conv2dSpec::same3(cfg.in_channels, ch[0]);
        Ok(Encoder {
            conv_in: b.conv2d(&vb.pp("conv_in"), conv_in)?,
            down_blocks,
            mid_block: MidBlock::new(b, &vb.pp("mid_block"), last, cfg, None)?,
            conv_norm_out: GroupNorm::new(b, &vb.pp("conv_norm_out"), last, g)?,
            conv_out: b.conv2d(
                &vb.pp("conv_out"),
                Conv2dSpec::same3(last, cfg.latent_channels),
            )?,
        })
    }
}

impl<B: Backend> Decoder<B> {
    fn new(b: &B, vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let zq = (cfg.norm_type == "spatial").then_some(cfg.latent_channels);
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let up_blocks = level_blocks(vb, "up_blocks", &rev, |vb, (c_in, c_out), last_level| {
            let up = Conv2dSpec::same3(c_out, c_out);
            Ok(UpDecoderBlock2D {
                resnets: resnets(b, vb, cfg.layers_per_block + 1, (c_in, c_out), g, zq)?,
                upsampler: resampler(b, vb, "upsamplers.0.conv", last_level, up)?,
            })
        })?;
        let (first, last) = (cfg.block_out_channels[0], rev[0]);
        let conv_in = Conv2dSpec::same3(cfg.latent_channels, last);
        Ok(Decoder {
            conv_in: b.conv2d(&vb.pp("conv_in"), conv_in)?,
            mid_block: MidBlock::new(b, &vb.pp("mid_block"), last, cfg, zq)?,
            up_blocks,
            conv_norm_out: Norm::new(b, &vb.pp("conv_norm_out"), first, g, zq)?,
            conv_out: b.conv2d_to_output(
                &vb.pp("conv_out"),
                Conv2dSpec::same3(first, cfg.out_channels),
            )?,
        })
    }
}

/// Name prefixes of the tensors only the encoding half reads.
pub(crate) const ENCODER_TENSORS: [&str; 2] = ["encoder.", "quant_conv."];
/// Name prefixes of the tensors only the decoding half reads.
pub(crate) const DECODER_TENSORS: [&str; 2] = ["decoder.", "post_quant_conv."];

/// `quantize.embedding.weight` `[V, E]`, f32 on the host (each backend keeps its own copy in
/// the form its search or lookup wants).
pub(crate) fn read_codebook(vb: &Vb, cfg: &VqConfig) -> Result<Vec<f32>> {
    let (e, v) = (cfg.embed_dim(), cfg.num_vq_embeddings);
    vb.pp("quantize.embedding").get("weight", &[v, e])
}

/// The encoding half: `encoder`, then `quant_conv` to the codebook width.
pub(crate) struct EncoderHalf<B: Backend> {
    pub encoder: Encoder<B>,
    /// `[E, latent_channels]` 1x1.
    pub quant_conv: B::Conv,
}

impl<B: Backend> EncoderHalf<B> {
    pub(crate) fn load(b: &B, vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let (lat, e) = (cfg.latent_channels, cfg.embed_dim());
        Ok(EncoderHalf {
            encoder: Encoder::new(b, &vb.pp("encoder"), cfg)?,
            quant_conv: b.conv2d_to_output(&vb.pp("quant_conv"), Conv2dSpec::pointwise(lat, e))?,
        })
    }
}

/// The decoding half: `post_quant_conv` from the codebook rows, then `decoder`.
pub(crate) struct DecoderHalf<B: Backend> {
    /// `[latent_channels, E]` 1x1.
    pub post_quant_conv: B::Conv,
    pub decoder: Decoder<B>,
}

impl<B: Backend> DecoderHalf<B> {
    pub(crate) fn load(b: &B, vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let (lat, e) = (cfg.latent_channels, cfg.embed_dim());
        Ok(DecoderHalf {
            post_quant_conv: b.conv2d(&vb.pp("post_quant_conv"), Conv2dSpec::pointwise(e, lat))?,
            decoder: Decoder::new(b, &vb.pp("decoder"), cfg)?,
        })
    }
}

/// `VQModel` with `B`'s weights (the CPU's by default).
pub struct VqModel<B: Backend = Cpu> {
    pub cfg: VqConfig,
    pub(crate) encode: EncoderHalf<B>,
    /// `quantize.embedding.weight` `[V, E]` and its rows' norms.
    pub(crate) codebook: Codebook,
    pub(crate) decode: DecoderHalf<B>,
    pub(crate) activation: Activation,
}

impl VqModel {
    /// Builds the model on the CPU from `vb` (the `vqvae/` weights) for `cfg`.
    pub fn new(cfg: &VqConfig, vb: &Vb) -> Result<Self> {
        Self::load(&Cpu, cfg, vb)
    }
}

impl<B: Backend> VqModel<B> {
    /// Reads every layer of `cfg` from `vb` (the `vqvae/` weights) into `backend`'s storage;
    /// each name and shape is checked as it is read.
    pub fn load(backend: &B, cfg: &VqConfig, vb: &Vb) -> Result<Self> {
        let activation = cfg.activation().map_err(|message| Error::Config {
            path: PathBuf::from("vqvae/config.json"),
            message,
        })?;
        let codebook = Codebook::new(read_codebook(vb, cfg)?, cfg.embed_dim());
        Ok(VqModel {
            encode: EncoderHalf::load(backend, vb, cfg)?,
            codebook,
            decode: DecoderHalf::load(backend, vb, cfg)?,
            activation,
            cfg: cfg.clone(),
        })
    }
}

impl VqConfig {
    /// The id grid of an image size, or an error naming the size.
    pub fn grid(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let f = self.scale_factor();
        if height == 0 || width == 0 || height % f != 0 || width % f != 0 {
            return Err(Error::input(
                "image",
                format!("{height} x {width} pixels: both sides must be positive multiples of the VQ-VAE's scale factor {f}"),
            ));
        }
        Ok((height / f, width / f))
    }

    /// Checks encoder input `image [B, in_channels, H, W]`; returns the id grid.
    pub(crate) fn check_image(
        &self,
        image: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize)> {
        let c = self.in_channels;
        let grid = self.grid(height, width)?;
        if batch == 0 || image.len() != batch * c * height * width {
            return Err(Error::input(
                "image",
                format!(
                    "{} values do not form [B={batch}, {c}, {height}, {width}]",
                    image.len()
                ),
            ));
        }
        Ok(grid)
    }
}

/// The `vqvae/` folder of `dir`, which may be the model root or that folder itself.
pub fn vqvae_dir(dir: &Path) -> Result<PathBuf> {
    component_dir(dir, "vqvae")
}

/// The VQ-VAE of the `vqvae/` folder `dir` whose config is already read.
pub(crate) fn vqvae_from(dir: &Path, cfg: &VqConfig, compute: Compute) -> Result<VqModel> {
    let build = |vb: &Vb| VqModel::new(cfg, vb);
    build_from(dir, compute, build, Weights::ensure_all_used)
}

/// Loads the VQ-VAE of a model folder (root or `vqvae/`), checking that the weights hold nothing
/// the config does not account for.
pub fn load_vqvae(dir: &Path) -> Result<VqModel> {
    load_vqvae_with(dir, Compute::F32)
}

/// [`load_vqvae`] with the convolutions in `compute` arithmetic.
pub fn load_vqvae_with(dir: &Path, compute: Compute) -> Result<VqModel> {
    let (dir, cfg) = open_config(dir, "vqvae", VqConfig::from_file)?;
    vqvae_from(&dir, &cfg, compute)
}
