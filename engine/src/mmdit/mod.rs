//! The Muddit MM-DiT (`SymmetricTransformer2DModel`) and Meissonic (`Transformer2DModel`), as
//! in reference section 2, described once: the layer structs below, whose fields are the
//! checkpoint's module paths, are loaded and checked once by [`Mmdit::load`] for any
//! [`Backend`]. One forward runs them, `forward.rs`, written over [`crate::ops::Ops`]: on the
//! CPU kernels ([`Mmdit::forward`], an [`Mmdit`] of [`Cpu`] weights) and on the CUDA kernels
//! (`cuda.rs`: [`cuda::CudaMmdit`], an `Mmdit<Cuda>` and its device workspace).
//!
//! Activations are row-major with the channel last: image tokens `[B, h, w, D]` (the
//! checkpoint's convolutions run as matrix products over pixels), sequences `[B, S, D]`.

pub(crate) mod cuda;
pub(crate) mod forward;

pub use forward::Scratch;

use crate::backend::{Backend, Cpu, HeadSide};
use crate::config::{ModelClass, TransformerConfig};
use crate::error::{Error, Result};
use crate::weights::Vb;
use forward::Shape;
use muddit_kernels::cpu::rope;

/// Width of the sinusoidal embedding of each micro-condition and of the timestep.
pub(crate) const SIN_DIM: usize = 256;
/// Micro-conditions per batch item (`[width, height, crop top, crop left, aesthetic score]`).
pub const MICRO_CONDS: usize = 5;

/// One forward's inputs. Shapes as in `muddit debug forward`.
pub struct MmditInput<'a> {
    /// `[B, h, w]` image ids in `0..vocab_size` (the mask id is `vocab_size - 1`).
    pub image_tokens: &'a [i64],
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// `[B, L, joint_attention_dim]`
    pub encoder_hidden_states: &'a [f32],
    pub text_len: usize,
    /// `[B, pooled_projection_dim]`
    pub pooled_projections: &'a [f32],
    /// In `[0, 1]`; the model multiplies it by 1000.
    pub timestep: f32,
    /// `[B, 5]`
    pub micro_conds: &'a [f32],
}

/// One forward's outputs.
#[derive(Default)]
pub struct MmditOutput {
    /// `[B, h, w, codebook_size]` (channel last; `to_nchw` gives the reference layout).
    pub image_logits: Vec<f32>,
    /// `[B, L, tokenizer_vocab_size]` when the model has a text head.
    pub text_logits: Option<Vec<f32>>,
}

/// Where the pieces of one sub-layer's modulation sit in a row of `norm1.linear` (`[B, 6D]`:
/// attention's shift, scale, gate, then the MLP's) or `norm.linear` (`[B, 3D]`: the one set of
/// a single block), as chunk indices of width `D`: `LayerNorm(x) * (1 + scale) + shift`, then
/// `x += gate * sublayer(...)`.
#[derive(Clone, Copy)]
pub(crate) struct Modulation {
    /// Chunks per row (6 or 3).
    pub chunks: usize,
    pub shift: usize,
    pub scale: usize,
    pub gate: usize,
}

/// Attention's modulation in a dual block (`AdaLayerNormZero`: shift_msa, scale_msa, gate_msa).
pub(crate) const DUAL_ATTN: Modulation = Modulation {
    chunks: 6,
    shift: 0,
    scale: 1,
    gate: 2,
};
/// The MLP's modulation in a dual block (shift_mlp, scale_mlp, gate_mlp).
pub(crate) const DUAL_MLP: Modulation = Modulation {
    chunks: 6,
    shift: 3,
    scale: 4,
    gate: 5,
};
impl Modulation {
    /// `(shift, scale)`
    pub(crate) fn shift_scale(&self) -> (usize, usize) {
        (self.shift, self.scale)
    }
}

/// A single block's one modulation (`AdaLayerNormZeroSingle`: shift, scale, gate).
pub(crate) const SINGLE: Modulation = Modulation {
    chunks: 3,
    shift: 0,
    scale: 1,
    gate: 2,
};

/// RMSNorm with a weight (eps `nn::NORM_EPS`).
pub(crate) struct RmsNorm<B: Backend> {
    /// `[D]`
    pub weight: B::Vector,
}

impl<B: Backend> RmsNorm<B> {
    fn new(b: &B, vb: &Vb, d: usize) -> Result<Self> {
        Ok(RmsNorm {
            weight: b.vector(vb, "weight", d)?,
        })
    }
}

/// `linear_1 -> SiLU -> linear_2` (diffusers `TimestepEmbedding`, `PixArtAlphaTextProjection`).
pub(crate) struct Mlp<B: Backend> {
    pub linear_1: B::Linear,
    pub linear_2: B::Linear,
}

impl<B: Backend> Mlp<B> {
    fn new(b: &B, vb: &Vb, in_dim: usize, dim: usize, bias: bool) -> Result<Self> {
        Ok(Mlp {
            linear_1: b.linear(&vb.pp("linear_1"), in_dim, dim, bias)?,
            linear_2: b.linear(&vb.pp("linear_2"), dim, dim, bias)?,
        })
    }
}

/// `diffusers` `CombinedTimestepTextProjEmbeddings`.
pub(crate) struct TimeTextEmbed<B: Backend> {
    pub timestep_embedder: Mlp<B>,
    pub text_embedder: Mlp<B>,
}

/// `embed`: id table -> RMSNorm -> 1x1 conv.
pub(crate) struct ConvEmbed<B: Backend> {
    /// `[vocab_size, D]`
    pub embeddings: B::Table,
    pub layer_norm: RmsNorm<B>,
    pub conv: B::Linear,
}

/// `down_block.downsample`: RMSNorm over channels, then a 2x2 stride-2 conv, held as a linear
/// map from a 2x2 patch `[(ki, kj, c)]` to `[D]`.
pub(crate) struct Downsample<B: Backend> {
    pub norm: RmsNorm<B>,
    pub conv: B::Linear,
}

/// `up_block.upsample`: RMSNorm over channels, then a 2x2 stride-2 transposed conv, held as a
/// linear map from `[D]` to a 2x2 patch `[(ki, kj, o)]`.
pub(crate) struct Upsample<B: Backend> {
    pub norm: RmsNorm<B>,
    pub conv: B::Linear,
}

/// `mlm_layer`: 1x1 conv -> RMSNorm -> 1x1 conv to the codebook logits.
pub(crate) struct MlmLayer<B: Backend> {
    pub conv1: B::Linear,
    pub layer_norm: RmsNorm<B>,
    pub conv2: B::Linear,
}

/// One stream's query, key and value projections of `attn` (image: `to_q`, `to_k`, `to_v`,
/// `norm_q`, `norm_k`; text: `add_q_proj`, ..., `norm_added_q`, ...) with the per-head RMSNorm
/// of q and k.
pub(crate) struct Qkv<B: Backend> {
    pub q: B::Linear,
    pub k: B::Linear,
    pub v: B::Linear,
    pub norm_q: RmsNorm<B>,
    pub norm_k: RmsNorm<B>,
}

/// The names of [`Qkv`]'s tensors under `attn` for the image stream (and single blocks).
const IMAGE_QKV: [&str; 5] = ["to_q", "to_k", "to_v", "norm_q", "norm_k"];
/// The same for the text stream of a dual block.
const TEXT_QKV: [&str; 5] = [
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "norm_added_q",
    "norm_added_k",
];

impl<B: Backend> Qkv<B> {
    fn new(b: &B, vb: &Vb, names: [&str; 5], d: usize, dh: usize) -> Result<Self> {
        Ok(Qkv {
            q: b.linear_heads(&vb.pp(names[0]), HeadSide::Outputs, (d, d))?,
            k: b.linear_heads(&vb.pp(names[1]), HeadSide::Outputs, (d, d))?,
            v: b.linear_heads(&vb.pp(names[2]), HeadSide::Outputs, (d, d))?,
            norm_q: RmsNorm::new(b, &vb.pp(names[3]), dh)?,
            norm_k: RmsNorm::new(b, &vb.pp(names[4]), dh)?,
        })
    }
}

/// `FeedForward` with `gelu-approximate`: `net.0.proj` (D -> 4D) -> GELU tanh -> `net.2`.
pub(crate) struct FeedForward<B: Backend> {
    pub proj: B::Linear,
    pub out: B::Linear,
}

impl<B: Backend> FeedForward<B> {
    fn new(b: &B, vb: &Vb, d: usize) -> Result<Self> {
        Ok(FeedForward {
            proj: b.linear(&vb.pp("net.0.proj"), d, 4 * d, true)?,
            out: b.linear(&vb.pp("net.2"), 4 * d, d, true)?,
        })
    }
}

/// `transformer_blocks.i`: image and text streams with their own weights, joint attention.
pub(crate) struct DualBlock<B: Backend> {
    /// `[D] -> [6D]`: the image stream's [`DUAL_ATTN`] and [`DUAL_MLP`] modulations.
    pub norm1: B::Linear,
    /// The same for the text stream.
    pub norm1_context: B::Linear,
    pub attn_image: Qkv<B>,
    pub attn_text: Qkv<B>,
    /// `attn.to_out.0`
    pub to_out: B::Linear,
    /// `attn.to_add_out`
    pub to_add_out: B::Linear,
    pub ff: FeedForward<B>,
    pub ff_context: FeedForward<B>,
}

impl<B: Backend> DualBlock<B> {
    fn new(b: &B, vb: &Vb, cfg: &TransformerConfig) -> Result<Self> {
        let (d, dh) = (cfg.inner_dim(), cfg.attention_head_dim);
        let attn = vb.pp("attn");
        Ok(DualBlock {
            norm1: b.linear(&vb.pp("norm1.linear"), d, 6 * d, true)?,
            norm1_context: b.linear(&vb.pp("norm1_context.linear"), d, 6 * d, true)?,
            attn_image: Qkv::new(b, &attn, IMAGE_QKV, d, dh)?,
            attn_text: Qkv::new(b, &attn, TEXT_QKV, d, dh)?,
            to_out: b.linear_heads(&attn.pp("to_out.0"), HeadSide::Inputs, (d, d))?,
            to_add_out: b.linear_heads(&attn.pp("to_add_out"), HeadSide::Inputs, (d, d))?,
            ff: FeedForward::new(b, &vb.pp("ff"), d)?,
            ff_context: FeedForward::new(b, &vb.pp("ff_context"), d)?,
        })
    }
}

/// `single_transformer_blocks.i`: one stream over `[text; image]`.
pub(crate) struct SingleBlock<B: Backend> {
    /// `norm.linear`, `[D] -> [3D]`: the [`SINGLE`] modulation.
    pub norm: B::Linear,
    pub attn: Qkv<B>,
    pub proj_mlp: B::Linear,
    /// `[attention; MLP hidden] (5D) -> D`
    pub proj_out: B::Linear,
}

impl<B: Backend> SingleBlock<B> {
    fn new(b: &B, vb: &Vb, cfg: &TransformerConfig) -> Result<Self> {
        let (d, dh) = (cfg.inner_dim(), cfg.attention_head_dim);
        Ok(SingleBlock {
            norm: b.linear(&vb.pp("norm.linear"), d, 3 * d, true)?,
            attn: Qkv::new(b, &vb.pp("attn"), IMAGE_QKV, d, dh)?,
            proj_mlp: b.linear(&vb.pp("proj_mlp"), d, 4 * d, true)?,
            proj_out: b.linear_heads(&vb.pp("proj_out"), HeadSide::Inputs, (5 * d, d))?,
        })
    }
}

impl<B: Backend> Downsample<B> {
    fn new(b: &B, vb: &Vb, d: usize) -> Result<Self> {
        let w = vb.pp("conv").get("weight", &[d, d, 2, 2])?; // [O, C, kh, kw]
        let mut weight = vec![0.0; d * 4 * d]; // [O, (kh, kw, C)]
        for o in 0..d {
            for c in 0..d {
                for kk in 0..4 {
                    weight[o * 4 * d + kk * d + c] = w[(o * d + c) * 4 + kk];
                }
            }
        }
        Ok(Downsample {
            norm: RmsNorm::new(b, &vb.pp("norm"), d)?,
            conv: b.linear_rows(&vb.pp("conv"), &weight, (4 * d, d))?,
        })
    }
}

impl<B: Backend> Upsample<B> {
    fn new(b: &B, vb: &Vb, d: usize) -> Result<Self> {
        let w = vb.pp("conv").get("weight", &[d, d, 2, 2])?; // [C, O, kh, kw]
        let mut weight = vec![0.0; 4 * d * d]; // [(kh, kw, O), C]
        for c in 0..d {
            for o in 0..d {
                for kk in 0..4 {
                    weight[(kk * d + o) * d + c] = w[(c * d + o) * 4 + kk];
                }
            }
        }
        Ok(Upsample {
            norm: RmsNorm::new(b, &vb.pp("norm"), d)?,
            conv: b.linear_rows(&vb.pp("conv"), &weight, (d, 4 * d))?,
        })
    }
}

/// The MM-DiT: its config and its layers with `B`'s weights (the CPU's by default).
pub struct Mmdit<B: Backend = Cpu> {
    pub cfg: TransformerConfig,
    pub(crate) cond_embed: Mlp<B>,
    pub(crate) time_text_embed: TimeTextEmbed<B>,
    pub(crate) context_embedder: B::Linear,
    pub(crate) encoder_proj_layer_norm: RmsNorm<B>,
    pub(crate) embed: ConvEmbed<B>,
    pub(crate) down_block: Option<Downsample<B>>,
    pub(crate) project_to_hidden_norm: RmsNorm<B>,
    pub(crate) project_to_hidden: B::Linear,
    pub(crate) transformer_blocks: Vec<DualBlock<B>>,
    pub(crate) single_transformer_blocks: Vec<SingleBlock<B>>,
    /// `text_decoder.1` (Muddit only; `text_decoder.0` is a LayerNorm without weights).
    pub(crate) text_decoder: Option<B::Linear>,
    pub(crate) project_from_hidden_norm: RmsNorm<B>,
    pub(crate) project_from_hidden: B::Linear,
    pub(crate) up_block: Option<Upsample<B>>,
    pub(crate) mlm_layer: MlmLayer<B>,
}

impl Mmdit {
    /// Builds the model on the CPU from `vb` (the `transformer/` weights) for `cfg`.
    pub fn new(cfg: &TransformerConfig, vb: &Vb) -> Result<Self> {
        Self::load(&Cpu, cfg, vb)
    }
}

impl<B: Backend> Mmdit<B> {
    /// Reads every layer of `cfg` from `vb` (the `transformer/` weights) into `backend`'s
    /// storage; each name and shape is checked as it is read.
    pub fn load(backend: &B, cfg: &TransformerConfig, vb: &Vb) -> Result<Self> {
        let (b, d) = (backend, cfg.inner_dim());
        let pooled_in = cfg.pooled_projection_dim + MICRO_CONDS * SIN_DIM;
        let embed = vb.pp("embed");
        let mlm = vb.pp("mlm_layer");
        let tte = vb.pp("time_text_embed");
        Ok(Mmdit {
            cond_embed: Mlp::new(b, &vb.pp("cond_embed"), pooled_in, d, false)?,
            time_text_embed: TimeTextEmbed {
                timestep_embedder: Mlp::new(b, &tte.pp("timestep_embedder"), SIN_DIM, d, true)?,
                text_embedder: Mlp::new(
                    b,
                    &tte.pp("text_embedder"),
                    cfg.text_embedder_in(),
                    d,
                    true,
                )?,
            },
            context_embedder: b.linear(
                &vb.pp("context_embedder"),
                cfg.joint_attention_dim,
                d,
                true,
            )?,
            encoder_proj_layer_norm: RmsNorm::new(b, &vb.pp("encoder_proj_layer_norm"), d)?,
            embed: ConvEmbed {
                embeddings: b.table(&embed.pp("embeddings"), cfg.vocab_size, d)?,
                layer_norm: RmsNorm::new(b, &embed.pp("layer_norm"), d)?,
                conv: b.conv1x1(&embed.pp("conv"), d, d)?,
            },
            down_block: cfg
                .downsample
                .then(|| Downsample::new(b, &vb.pp("down_block.downsample"), d))
                .transpose()?,
            project_to_hidden_norm: RmsNorm::new(b, &vb.pp("project_to_hidden_norm"), d)?,
            project_to_hidden: b.linear(&vb.pp("project_to_hidden"), d, d, false)?,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| DualBlock::new(b, &vb.pp("transformer_blocks").pp(i), cfg))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..cfg.num_single_layers)
                .map(|i| SingleBlock::new(b, &vb.pp("single_transformer_blocks").pp(i), cfg))
                .collect::<Result<_>>()?,
            text_decoder: cfg
                .tokenizer_vocab_size
                .map(|vt| b.linear(&vb.pp("text_decoder.1"), d, vt, false))
                .transpose()?,
            project_from_hidden_norm: RmsNorm::new(b, &vb.pp("project_from_hidden_norm"), d)?,
            project_from_hidden: b.linear(&vb.pp("project_from_hidden"), d, d, false)?,
            up_block: cfg
                .upsample
                .then(|| Upsample::new(b, &vb.pp("up_block.upsample"), d))
                .transpose()?,
            mlm_layer: MlmLayer {
                conv1: b.conv1x1(&mlm.pp("conv1"), d, d)?,
                layer_norm: RmsNorm::new(b, &mlm.pp("layer_norm"), d)?,
                conv2: b.conv1x1(&mlm.pp("conv2"), d, cfg.codebook_size)?,
            },
            cfg: cfg.clone(),
        })
    }

    /// Whether this is a Muddit model with a text head.
    pub fn has_text_head(&self) -> bool {
        self.text_decoder.is_some()
    }

    pub fn class(&self) -> ModelClass {
        self.cfg.class_name
    }
}

/// Rotary tables `(cos, sin)`, each `[L + N, Dh]`, for `[text; image]`: text at (0, 0, 0),
/// image token (i, j) of the `rows x cols` grid at (0, i, j); in f64, then f32.
pub(crate) fn rope_tables(
    cfg: &TransformerConfig,
    text: usize,
    rows: usize,
    cols: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut ids = vec![[0.0f64; 3]; text];
    ids.extend((0..rows).flat_map(|i| (0..cols).map(move |j| [0.0, i as f64, j as f64])));
    rope::rope_tables(&ids, &cfg.axes_dims_rope)
}

/// Checks every input's length, the ids' range, the grid against the down/up blocks and
/// the timestep; returns the forward's shape.
pub(crate) fn check_input(cfg: &TransformerConfig, x: &MmditInput) -> Result<Shape> {
    let (b, h, w, l) = (x.batch, x.height, x.width, x.text_len);
    if b == 0 || h == 0 || w == 0 || l == 0 {
        return Err(Error::input(
            "image_tokens",
            format!("empty batch, grid or text ([B,h,w] = [{b},{h},{w}], L = {l})"),
        ));
    }
    let expect = |name: &str, got: usize, want: usize, shape: String| {
        if got == want {
            Ok(())
        } else {
            Err(Error::input(
                name,
                format!("expected {want} values ({shape}), found {got}"),
            ))
        }
    };
    expect(
        "image_tokens",
        x.image_tokens.len(),
        b * h * w,
        format!("[{b},{h},{w}]"),
    )?;
    expect(
        "encoder_hidden_states",
        x.encoder_hidden_states.len(),
        b * l * cfg.joint_attention_dim,
        format!("[{b},{l},{}]", cfg.joint_attention_dim),
    )?;
    expect(
        "pooled_projections",
        x.pooled_projections.len(),
        b * cfg.pooled_projection_dim,
        format!("[{b},{}]", cfg.pooled_projection_dim),
    )?;
    expect(
        "micro_conds",
        x.micro_conds.len(),
        b * MICRO_CONDS,
        format!("[{b},{MICRO_CONDS}]"),
    )?;
    if let Some((i, id)) = x
        .image_tokens
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id as usize >= cfg.vocab_size)
    {
        return Err(Error::input(
            "image_tokens",
            format!(
                "id {id} at flat index {i} is outside 0..{} (vocab_size)",
                cfg.vocab_size
            ),
        ));
    }
    if !x.timestep.is_finite() {
        return Err(Error::input(
            "timestep",
            format!("{} is not finite", x.timestep),
        ));
    }
    Shape::new(cfg, (b, l, h, w))
}

/// The grid the blocks see for an id grid `h x w`: halved by the down block (both sides even).
pub(crate) fn blocks_grid(cfg: &TransformerConfig, h: usize, w: usize) -> Result<(usize, usize)> {
    if cfg.downsample != cfg.upsample {
        return Err(Error::input("image_tokens", "the config downsamples without upsampling (or the reverse): the logits grid would not match the ids"));
    }
    if cfg.downsample {
        if h % 2 != 0 || w % 2 != 0 {
            return Err(Error::input(
                "image_tokens",
                format!("grid {h}x{w}: the down block halves it, so both sides must be even"),
            ));
        }
        return Ok((h / 2, w / 2));
    }
    Ok((h, w))
}

/// `[B, h, w, V]` -> `[B, V, h, w]` (the reference's layout of image logits).
pub fn to_nchw(x: &[f32], batch: usize, h: usize, w: usize, v: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for p in 0..h * w {
            for c in 0..v {
                out[(b * v + c) * h * w + p] = x[(b * h * w + p) * v + c];
            }
        }
    }
    out
}
