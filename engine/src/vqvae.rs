//! The VQ-VAE (`diffusers` `VQModel` with `Encoder`, `VectorQuantizer` and `Decoder`),
//! reference section 4: field names are the checkpoint's module paths.
//!
//! Activations are channel-last feature maps `[B, H, W, C]` (convolutions run as im2col + GEMM);
//! images cross the API in the reference's `[B, 3, H, W]` layout, pixels in `[0, 1]` (no
//! `[-1, 1]` mapping: the pipeline feeds `ToTensor()` output straight to `encode` and clips the
//! decoder's output to `[0, 1]`).
//!
//! Decoding takes ids, as the pipeline does: codebook rows -> `post_quant_conv` -> decoder. (The
//! reference reaches the codebook through `lookup_from_codebook`; with that flag off its pipeline
//! would feed the raw ids to `post_quant_conv` and fail, so ids are always looked up here.)
//! `force_upcast` and `scaling_factor` do not change `encode` or `decode`: everything runs in f32.
//! `norm_type: "spatial"` (the decoder's norms conditioned on the codebook rows, `SpatialNorm`)
//! is supported as well as the public `"group"`.

use crate::error::{Error, Result};
use crate::model_dir::component_dir;
use crate::nn::Linear;
use crate::weights::{Vb, Weights};
use crate::Compute;
use muddit_kernels::cpu::conv::{conv2d, conv2d_upsampled_2x, patch_major_weight, Conv2dShape};
use muddit_kernels::cpu::group_norm::group_norm_;
use muddit_kernels::cpu::packed::PackedMatrix;
use muddit_kernels::cpu::{act, attention::attention_with, matmul::linear};
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and validates a config; the message names the offending key.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let map = value.as_object().ok_or("the config is not a JSON object")?;
        for key in map.keys() {
            if !key.starts_with('_') && !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown key `{key}`: this engine does not know what it changes"
                ));
            }
        }
        let cfg: VqConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let levels = self.block_out_channels.len();
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
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(format!(
                "down block type `{t}` is not supported (only DownEncoderBlock2D)"
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!(
                "up block type `{t}` is not supported (only UpDecoderBlock2D)"
            ));
        }
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
            ("layers_per_block", self.layers_per_block),
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

/// `nn.Conv2d` with bias, weight held as `[O, (k, k, C)]`.
struct Conv2d {
    /// `[O, (kh, kw, C)]`, packed.
    weight: PackedMatrix,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    pad: [usize; 4],
}

/// `nn.GroupNorm(groups, C, eps=1e-6)`.
struct GroupNorm {
    /// `[C]`
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
}

/// `SpatialNorm`: GroupNorm with 32 groups, then `* conv_y(zq) + conv_b(zq)`, with the codebook
/// rows `zq` upsampled (nearest) to the feature map.
struct SpatialNorm {
    norm_layer: GroupNorm,
    conv_y: Conv2d,
    conv_b: Conv2d,
}

/// The norm of a block: a GroupNorm, or a SpatialNorm in a `norm_type: spatial` decoder.
enum Norm {
    Group(GroupNorm),
    Spatial(SpatialNorm),
}

/// `ResnetBlock2D` (no time embedding) or, with spatial norms, `ResnetBlockCondNorm2D`:
/// norm -> act -> conv3x3, twice, plus the (1x1) shortcut.
struct ResnetBlock2D {
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

/// What the blocks need besides their input: the model's activation and, in a spatial decoder,
/// the codebook rows `zq [B, h, w, latent_channels]`.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    act: Activation,
    zq: Option<&'a FeatureMap>,
}

/// The mid block's single-head self-attention over pixels (`Attention` with a group norm, or a
/// spatial norm in a spatial decoder, and a residual connection).
struct AttnBlock {
    group_norm: Option<GroupNorm>,
    spatial_norm: Option<SpatialNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

/// `UNetMidBlock2D`: ResNet, (attention), ResNet.
struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<AttnBlock>,
}

/// `DownEncoderBlock2D`: ResNets, then (but on the last level) a stride-2 3x3 conv.
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Conv2d>,
}

/// `UpDecoderBlock2D`: ResNets, then (but on the last level) nearest 2x + 3x3 conv.
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Conv2d>,
}

struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: Norm,
    conv_out: Conv2d,
}

/// `VQModel`.
pub struct VqModel {
    pub cfg: VqConfig,
    encoder: Encoder,
    quant_conv: Conv2d,
    /// `quantize.embedding.weight` `[V, E]`.
    codebook: Vec<f32>,
    /// `|e_v|²` of each codebook row, in f64.
    codebook_norms: Vec<f64>,
    post_quant_conv: Conv2d,
    decoder: Decoder,
    activation: Activation,
}

impl Conv2d {
    /// A `kernel x kernel` conv, padding `[top, bottom, left, right]`.
    fn new(
        vb: &Vb,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: [usize; 4],
    ) -> Result<Self> {
        let w = vb.get("weight", &[c_out, c_in, kernel, kernel])?;
        Ok(Conv2d {
            weight: PackedMatrix::new(
                &patch_major_weight(&w, c_out, c_in, kernel),
                c_out,
                kernel * kernel * c_in,
                vb.storage("weight"),
                vb.compute(),
            ),
            bias: vb.get("bias", &[c_out])?,
            c_in,
            c_out,
            kernel,
            stride,
            pad,
        })
    }

    /// 3x3, stride 1, padding 1.
    fn same3(vb: &Vb, c_in: usize, c_out: usize) -> Result<Self> {
        Self::new(vb, c_in, c_out, 3, 1, [1; 4])
    }

    fn pointwise(vb: &Vb, c_in: usize, c_out: usize) -> Result<Self> {
        Self::new(vb, c_in, c_out, 1, 1, [0; 4])
    }

    /// `[B, H, W, C] -> [B, Ho, Wo, O]`
    fn forward(&self, x: &FeatureMap) -> FeatureMap {
        self.forward_scaled(x, 1)
    }

    /// `[B, H, W, C] -> [B, Ho, Wo, O]` on `x` upsampled 2x (nearest), without writing the
    /// upsampled map.
    fn forward_upsampled_2x(&self, x: &FeatureMap) -> FeatureMap {
        self.forward_scaled(x, 2)
    }

    /// On `x` upsampled `up` times per side (1 or 2).
    fn forward_scaled(&self, x: &FeatureMap, up: usize) -> FeatureMap {
        let shape = Conv2dShape {
            batch: x.batch,
            height: up * x.h,
            width: up * x.w,
            c_in: self.c_in,
            c_out: self.c_out,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
        };
        let (h, w) = shape.out_hw();
        let mut data = vec![0.0; x.batch * h * w * self.c_out];
        let bias = Some(&self.bias[..]);
        match up {
            1 => conv2d(&x.data, &self.weight, bias, &shape, &mut data),
            _ => conv2d_upsampled_2x(&x.data, &self.weight, bias, &shape, &mut data),
        }
        FeatureMap {
            data,
            batch: x.batch,
            h,
            w,
            c: self.c_out,
        }
    }
}

impl GroupNorm {
    fn new(vb: &Vb, c: usize, groups: usize) -> Result<Self> {
        Ok(GroupNorm {
            weight: vb.get("weight", &[c])?,
            bias: vb.get("bias", &[c])?,
            groups,
        })
    }

    /// In place on `x [B, H, W, C]`, then the model's activation if `act` is given.
    fn forward_(&self, x: &mut FeatureMap, act: Option<Activation>) {
        let fused_silu = act == Some(Activation::Silu);
        group_norm_(
            &mut x.data,
            x.batch,
            self.groups,
            &self.weight,
            &self.bias,
            EPS,
            fused_silu,
        );
        if !fused_silu {
            activate_(&mut x.data, act);
        }
    }
}

/// The activation `act` in place (none for `None`).
fn activate_(x: &mut [f32], act: Option<Activation>) {
    match act {
        Some(Activation::Silu) => act::silu_(x),
        Some(Activation::Gelu) => act::gelu_erf_(x),
        Some(Activation::Relu) => act::relu_(x),
        Some(Activation::Mish) => act::mish_(x),
        None => {}
    }
}

impl SpatialNorm {
    fn new(vb: &Vb, c: usize, zq_channels: usize) -> Result<Self> {
        Ok(SpatialNorm {
            norm_layer: GroupNorm::new(&vb.pp("norm_layer"), c, 32)?,
            conv_y: Conv2d::pointwise(&vb.pp("conv_y"), zq_channels, c)?,
            conv_b: Conv2d::pointwise(&vb.pp("conv_b"), zq_channels, c)?,
        })
    }

    /// In place on `x [B, H, W, C]` given `zq [B, h, w, Z]` (H, W multiples of h, w), then `act`.
    /// The 1x1 convs run at zq's size: they commute with nearest upsampling.
    fn forward_(&self, x: &mut FeatureMap, zq: &FeatureMap, act: Option<Activation>) {
        self.norm_layer.forward_(x, None);
        let (y, b) = (self.conv_y.forward(zq), self.conv_b.forward(zq)); // [B, h, w, C]
        let c = x.c;
        for (row, px) in x.data.chunks_exact_mut(c).enumerate() {
            let (bi, r) = (row / (x.h * x.w), row % (x.h * x.w));
            let (sy, sx) = ((r / x.w) * zq.h / x.h, (r % x.w) * zq.w / x.w);
            let at = ((bi * zq.h + sy) * zq.w + sx) * c;
            for ((v, yv), bv) in px
                .iter_mut()
                .zip(&y.data[at..at + c])
                .zip(&b.data[at..at + c])
            {
                *v = *v * yv + bv;
            }
        }
        activate_(&mut x.data, act);
    }
}

impl Norm {
    /// A GroupNorm of `groups`, or a SpatialNorm reading `zq_channels` when given.
    fn new(vb: &Vb, c: usize, groups: usize, zq_channels: Option<usize>) -> Result<Self> {
        Ok(match zq_channels {
            None => Norm::Group(GroupNorm::new(vb, c, groups)?),
            Some(z) => Norm::Spatial(SpatialNorm::new(vb, c, z)?),
        })
    }

    /// In place on `x [B, H, W, C]`, then `act`.
    fn forward_(&self, x: &mut FeatureMap, zq: Option<&FeatureMap>, act: Option<Activation>) {
        match (self, zq) {
            (Norm::Group(g), _) => g.forward_(x, act),
            (Norm::Spatial(s), Some(zq)) => s.forward_(x, zq, act),
            (Norm::Spatial(_), None) => {
                unreachable!("spatial norms run only in the decoder, which passes zq")
            }
        }
    }
}

impl ResnetBlock2D {
    fn new(vb: &Vb, c_in: usize, c_out: usize, groups: usize, zq: Option<usize>) -> Result<Self> {
        Ok(ResnetBlock2D {
            norm1: Norm::new(&vb.pp("norm1"), c_in, groups, zq)?,
            conv1: Conv2d::same3(&vb.pp("conv1"), c_in, c_out)?,
            norm2: Norm::new(&vb.pp("norm2"), c_out, groups, zq)?,
            conv2: Conv2d::same3(&vb.pp("conv2"), c_out, c_out)?,
            conv_shortcut: (c_in != c_out)
                .then(|| Conv2d::pointwise(&vb.pp("conv_shortcut"), c_in, c_out))
                .transpose()?,
        })
    }

    /// `[B, H, W, C_in] -> [B, H, W, C_out]`
    fn forward(&self, x: FeatureMap, ctx: Ctx) -> FeatureMap {
        let mut h = FeatureMap {
            data: x.data.clone(),
            ..x
        };
        self.norm1.forward_(&mut h, ctx.zq, Some(ctx.act));
        let mut h = self.conv1.forward(&h);
        self.norm2.forward_(&mut h, ctx.zq, Some(ctx.act));
        let mut h = self.conv2.forward(&h);
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(&x).data,
            None => x.data,
        };
        h.data.iter_mut().zip(&skip).for_each(|(v, s)| *v += s);
        h
    }
}

impl AttnBlock {
    fn new(vb: &Vb, c: usize, groups: usize, zq: Option<usize>) -> Result<Self> {
        Ok(AttnBlock {
            group_norm: zq
                .is_none()
                .then(|| GroupNorm::new(&vb.pp("group_norm"), c, groups))
                .transpose()?,
            spatial_norm: zq
                .map(|z| SpatialNorm::new(&vb.pp("spatial_norm"), c, z))
                .transpose()?,
            to_q: Linear::new(&vb.pp("to_q"), c, c, true)?,
            to_k: Linear::new(&vb.pp("to_k"), c, c, true)?,
            to_v: Linear::new(&vb.pp("to_v"), c, c, true)?,
            to_out: Linear::new(&vb.pp("to_out.0"), c, c, true)?,
        })
    }

    /// `x [B, H, W, C]` updated in place: one head of width C over the H*W pixels.
    fn forward_(&self, x: &mut FeatureMap, zq: Option<&FeatureMap>) {
        let mut h = FeatureMap {
            data: x.data.clone(),
            ..*x
        };
        if let (Some(norm), Some(zq)) = (&self.spatial_norm, zq) {
            norm.forward_(&mut h, zq, None);
        }
        if let Some(norm) = &self.group_norm {
            norm.forward_(&mut h, None);
        }
        let (q, k, v) = (
            self.to_q.forward(&h.data),
            self.to_k.forward(&h.data),
            self.to_v.forward(&h.data),
        ); // [B, HW, 1, C]
        let mut a = vec![0.0; q.len()];
        let compute = self.to_q.compute();
        attention_with(
            &q,
            &k,
            &v,
            x.batch,
            x.h * x.w,
            1,
            x.c,
            false,
            compute,
            &mut a,
        );
        let out = self.to_out.forward(&a);
        x.data.iter_mut().zip(&out).for_each(|(v, o)| *v += o);
    }
}

impl MidBlock {
    fn new(vb: &Vb, c: usize, groups: usize, attention: bool, zq: Option<usize>) -> Result<Self> {
        Ok(MidBlock {
            resnets: (0..2)
                .map(|i| ResnetBlock2D::new(&vb.pp("resnets").pp(i), c, c, groups, zq))
                .collect::<Result<_>>()?,
            attentions: if attention {
                vec![AttnBlock::new(&vb.pp("attentions.0"), c, groups, zq)?]
            } else {
                Vec::new()
            },
        })
    }

    /// `[B, H, W, C] -> [B, H, W, C]`
    fn forward(&self, x: FeatureMap, ctx: Ctx) -> FeatureMap {
        let mut x = self.resnets[0].forward(x, ctx);
        for attn in &self.attentions {
            attn.forward_(&mut x, ctx.zq);
        }
        self.resnets[1].forward(x, ctx)
    }
}

impl Encoder {
    fn new(vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let (ch, g) = (&cfg.block_out_channels, cfg.norm_num_groups);
        let last = *ch.last().unwrap_or(&0);
        let down_blocks = ch
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let vb = vb.pp("down_blocks").pp(i);
                Ok(DownEncoderBlock2D {
                    resnets: (0..cfg.layers_per_block)
                        .map(|j| {
                            let c = if j == 0 { c_in } else { c_out };
                            ResnetBlock2D::new(&vb.pp("resnets").pp(j), c, c_out, g, None)
                        })
                        .collect::<Result<_>>()?,
                    // diffusers' Downsample2D with padding 0 pads right and bottom by one.
                    downsampler: (i + 1 < ch.len())
                        .then(|| {
                            Conv2d::new(
                                &vb.pp("downsamplers.0.conv"),
                                c_out,
                                c_out,
                                3,
                                2,
                                [0, 1, 0, 1],
                            )
                        })
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Encoder {
            conv_in: Conv2d::same3(&vb.pp("conv_in"), cfg.in_channels, ch[0])?,
            down_blocks,
            mid_block: MidBlock::new(
                &vb.pp("mid_block"),
                last,
                g,
                cfg.mid_block_add_attention,
                None,
            )?,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), last, g)?,
            conv_out: Conv2d::same3(&vb.pp("conv_out"), last, cfg.latent_channels)?,
        })
    }

    /// `[B, H, W, in] -> [B, H / f, W / f, latent_channels]`
    fn forward(&self, x: &FeatureMap, act: Activation) -> FeatureMap {
        let ctx = Ctx { act, zq: None };
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, ctx);
            }
            if let Some(down) = &block.downsampler {
                x = down.forward(&x);
            }
        }
        let mut x = self.mid_block.forward(x, ctx);
        // `conv_act` is always SiLU, whatever `act_fn` says.
        self.conv_norm_out.forward_(&mut x, Some(Activation::Silu));
        self.conv_out.forward(&x)
    }
}

impl Decoder {
    fn new(vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let zq = (cfg.norm_type == "spatial").then_some(cfg.latent_channels);
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                let vb = vb.pp("up_blocks").pp(i);
                Ok(UpDecoderBlock2D {
                    resnets: (0..cfg.layers_per_block + 1)
                        .map(|j| {
                            let c = if j == 0 { c_in } else { c_out };
                            ResnetBlock2D::new(&vb.pp("resnets").pp(j), c, c_out, g, zq)
                        })
                        .collect::<Result<_>>()?,
                    upsampler: (i + 1 < rev.len())
                        .then(|| Conv2d::same3(&vb.pp("upsamplers.0.conv"), c_out, c_out))
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        let (first, last) = (cfg.block_out_channels[0], rev[0]);
        Ok(Decoder {
            conv_in: Conv2d::same3(&vb.pp("conv_in"), cfg.latent_channels, last)?,
            mid_block: MidBlock::new(
                &vb.pp("mid_block"),
                last,
                g,
                cfg.mid_block_add_attention,
                zq,
            )?,
            up_blocks,
            conv_norm_out: Norm::new(&vb.pp("conv_norm_out"), first, g, zq)?,
            conv_out: Conv2d::same3(&vb.pp("conv_out"), first, cfg.out_channels)?,
        })
    }

    /// `z [B, h, w, latent_channels] -> [B, h * f, w * f, out_channels]`; `quant [B, h, w, E]`
    /// (the codebook rows) conditions a spatial decoder's norms.
    fn forward(&self, z: &FeatureMap, quant: &FeatureMap, act: Activation) -> FeatureMap {
        let spatial = matches!(self.conv_norm_out, Norm::Spatial(_));
        let ctx = Ctx {
            act,
            zq: spatial.then_some(quant),
        };
        let mut x = self.mid_block.forward(self.conv_in.forward(z), ctx);
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, ctx);
            }
            if let Some(conv) = &block.upsampler {
                x = conv.forward_upsampled_2x(&x);
            }
        }
        // `conv_act` is always SiLU, whatever `act_fn` says.
        self.conv_norm_out
            .forward_(&mut x, ctx.zq, Some(Activation::Silu));
        self.conv_out.forward(&x)
    }
}

/// `[B, C, H, W] -> [B, H, W, C]`
fn to_nhwc(x: &[f32], batch: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for ci in 0..c {
            for p in 0..hw {
                out[(b * hw + p) * c + ci] = x[(b * c + ci) * hw + p];
            }
        }
    }
    out
}

/// `[B, H, W, C] -> [B, C, H, W]`
fn to_nchw(x: &[f32], batch: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for p in 0..hw {
            for ci in 0..c {
                out[(b * c + ci) * hw + p] = x[(b * hw + p) * c + ci];
            }
        }
    }
    out
}

impl VqModel {
    /// Builds the model from `vb` (the `vqvae/` weights) for `cfg`.
    pub fn new(cfg: &VqConfig, vb: &Vb) -> Result<Self> {
        let (lat, e, v) = (cfg.latent_channels, cfg.embed_dim(), cfg.num_vq_embeddings);
        let activation = cfg.activation().map_err(|message| Error::Config {
            path: PathBuf::from("vqvae/config.json"),
            message,
        })?;
        let codebook = vb.pp("quantize.embedding").get("weight", &[v, e])?;
        let codebook_norms = codebook
            .chunks_exact(e)
            .map(|row| row.iter().map(|&x| x as f64 * x as f64).sum())
            .collect();
        Ok(VqModel {
            encoder: Encoder::new(&vb.pp("encoder"), cfg)?,
            quant_conv: Conv2d::pointwise(&vb.pp("quant_conv"), lat, e)?,
            codebook,
            codebook_norms,
            post_quant_conv: Conv2d::pointwise(&vb.pp("post_quant_conv"), e, lat)?,
            decoder: Decoder::new(&vb.pp("decoder"), cfg)?,
            activation,
            cfg: cfg.clone(),
        })
    }

    /// The id grid of an image size, or an error naming the size.
    pub fn grid(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let f = self.cfg.scale_factor();
        if height == 0 || width == 0 || height % f != 0 || width % f != 0 {
            return Err(Error::input(
                "image",
                format!("{height} x {width} pixels: both sides must be positive multiples of the VQ-VAE's scale factor {f}"),
            ));
        }
        Ok((height / f, width / f))
    }

    /// `image [B, in_channels, H, W]` in `[0, 1]` -> the latents after `quant_conv`,
    /// `[B, h, w, E]` channel-last.
    pub fn encode_latents(
        &self,
        image: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<FeatureMap> {
        let c = self.cfg.in_channels;
        self.grid(height, width)?;
        if batch == 0 || image.len() != batch * c * height * width {
            return Err(Error::input(
                "image",
                format!(
                    "{} values do not form [B={batch}, {c}, {height}, {width}]",
                    image.len()
                ),
            ));
        }
        let x = FeatureMap {
            data: to_nhwc(image, batch, c, height * width),
            batch,
            h: height,
            w: width,
            c,
        };
        let z = self.encoder.forward(&x, self.activation);
        Ok(self.quant_conv.forward(&z))
    }

    /// Nearest codebook entry (L2) of each latent `[N, E]` -> ids `[N]`. Ties go to the lowest
    /// id, as `torch.argmin`.
    ///
    /// Candidates are ranked by `|e|² - 2 z·e` from an f32 GEMM; every entry within a margin of
    /// the best (far wider than the GEMM's rounding) is then re-scored in f64, so the result is
    /// the argmin of the exact distance.
    pub fn nearest_codes(&self, z: &[f32]) -> Vec<i64> {
        let (e, v) = (self.cfg.embed_dim(), self.cfg.num_vq_embeddings);
        let n = z.len() / e;
        let mut dots = vec![0.0f32; n * v]; // [N, V]
        linear(z, &self.codebook, None, n, e, v, &mut dots);
        z.chunks_exact(e)
            .zip(dots.chunks_exact(v))
            .map(|(zr, dr)| {
                let zz: f64 = zr.iter().map(|&x| x as f64 * x as f64).sum();
                let approx = |j: usize| self.codebook_norms[j] - 2.0 * dr[j] as f64;
                let best = (0..v).map(approx).fold(f64::INFINITY, f64::min);
                let margin = 1e-4 * (zz + best.abs()) + 1e-6;
                let exact = |j: usize| -> f64 {
                    let row = &self.codebook[j * e..(j + 1) * e];
                    zr.iter()
                        .zip(row)
                        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                        .sum()
                };
                let mut pick = (f64::INFINITY, 0usize);
                for j in (0..v).filter(|&j| approx(j) <= best + margin) {
                    let d = exact(j);
                    if d < pick.0 {
                        pick = (d, j);
                    }
                }
                pick.1 as i64
            })
            .collect()
    }

    /// `image [B, in_channels, H, W]` in `[0, 1]` -> ids `[B, H / f, W / f]`.
    pub fn encode(
        &self,
        image: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Vec<i64>> {
        let z = self.encode_latents(image, batch, height, width)?;
        Ok(self.nearest_codes(&z.data))
    }

    /// ids `[B, h, w]` -> image `[B, out_channels, h * f, w * f]`, not clipped.
    pub fn decode(&self, ids: &[i64], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let e = self.cfg.embed_dim();
        self.cfg.check_ids(ids, batch, h, w)?;
        let mut data = Vec::with_capacity(ids.len() * e); // [B, h, w, E]
        for &id in ids {
            data.extend_from_slice(&self.codebook[id as usize * e..(id as usize + 1) * e]);
        }
        let q = FeatureMap {
            data,
            batch,
            h,
            w,
            c: e,
        };
        let x = self
            .decoder
            .forward(&self.post_quant_conv.forward(&q), &q, self.activation);
        Ok(to_nchw(&x.data, batch, x.c, x.h * x.w))
    }
}

/// The `vqvae/` folder of `dir`, which may be the model root or that folder itself.
pub fn vqvae_dir(dir: &Path) -> Result<PathBuf> {
    component_dir(dir, "vqvae")
}

/// Loads the VQ-VAE of a model folder (root or `vqvae/`), checking that the weights hold nothing
/// the config does not account for.
pub fn load_vqvae(dir: &Path) -> Result<VqModel> {
    load_vqvae_with(dir, Compute::F32)
}

/// [`load_vqvae`] with the convolutions in `compute` arithmetic.
pub fn load_vqvae_with(dir: &Path, compute: Compute) -> Result<VqModel> {
    let dir = vqvae_dir(dir)?;
    let cfg = VqConfig::from_file(&dir.join("config.json"))?;
    vqvae_from(&dir, &cfg, compute)
}

/// The VQ-VAE of the `vqvae/` folder `dir` whose config is already read.
pub(crate) fn vqvae_from(dir: &Path, cfg: &VqConfig, compute: Compute) -> Result<VqModel> {
    let weights = Weights::open_dir(dir)?;
    let model = VqModel::new(cfg, &Vb::new(&weights).with_compute(compute))?;
    weights.ensure_all_used()?;
    Ok(model)
}
