//! The Muddit MM-DiT (`SymmetricTransformer2DModel`) and Meissonic (`Transformer2DModel`) on the
//! CPU, as in reference section 2: field names are the checkpoint's module paths.
//!
//! Activations are row-major `f32` with the channel last: image tokens `[B, h, w, D]` (the
//! checkpoint's convolutions run as matrix products over pixels), sequences `[B, S, D]`.

use crate::config::{ModelClass, TransformerConfig};
use crate::error::{Error, Result};
use crate::nn::{sinusoidal_embedding, Linear, Mlp, RmsNorm, NORM_EPS};
use crate::weights::Vb;
use muddit_kernels::cpu::{act, attention::attention_with, norm, rope};
use rayon::prelude::*;

/// Width of the sinusoidal embedding of each micro-condition and of the timestep.
const SIN_DIM: usize = 256;
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
pub struct MmditOutput {
    /// `[B, h, w, codebook_size]` (channel last; `to_nchw` gives the reference layout).
    pub image_logits: Vec<f32>,
    /// `[B, L, tokenizer_vocab_size]` when the model has a text head.
    pub text_logits: Option<Vec<f32>>,
}

/// `diffusers` `CombinedTimestepTextProjEmbeddings`.
struct TimeTextEmbed {
    timestep_embedder: Mlp,
    text_embedder: Mlp,
}

/// `embed`: id table -> RMSNorm -> 1x1 conv.
struct ConvEmbed {
    /// `[vocab_size, D]`
    embeddings: Vec<f32>,
    layer_norm: RmsNorm,
    conv: Linear,
}

/// `down_block.downsample`: RMSNorm over channels, then a 2x2 stride-2 conv, held as a linear
/// map from a 2x2 patch `[(ki, kj, c)]` to `[D]`.
struct Downsample {
    norm: RmsNorm,
    conv: Linear,
}

/// `up_block.upsample`: RMSNorm over channels, then a 2x2 stride-2 transposed conv, held as a
/// linear map from `[D]` to a 2x2 patch `[(ki, kj, o)]`.
struct Upsample {
    norm: RmsNorm,
    conv: Linear,
}

/// `mlm_layer`: 1x1 conv -> RMSNorm -> 1x1 conv to the codebook logits.
struct MlmLayer {
    conv1: Linear,
    layer_norm: RmsNorm,
    conv2: Linear,
}

/// Query, key and value projections with the per-head RMSNorm of q and k.
struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

/// `FeedForward` with `gelu-approximate`: `net.0.proj` (D -> 4D) -> GELU tanh -> `net.2`.
struct FeedForward {
    proj: Linear,
    out: Linear,
}

/// `transformer_blocks.i`: image and text streams with their own weights, joint attention.
struct DualBlock {
    norm1: Linear,
    norm1_context: Linear,
    attn_image: Qkv,
    attn_text: Qkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
}

/// `single_transformer_blocks.i`: one stream over `[text; image]`.
struct SingleBlock {
    norm: Linear,
    attn: Qkv,
    proj_mlp: Linear,
    proj_out: Linear,
}

pub struct Mmdit {
    pub cfg: TransformerConfig,
    cond_embed: Mlp,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    encoder_proj_layer_norm: RmsNorm,
    embed: ConvEmbed,
    down_block: Option<Downsample>,
    project_to_hidden_norm: RmsNorm,
    project_to_hidden: Linear,
    transformer_blocks: Vec<DualBlock>,
    single_transformer_blocks: Vec<SingleBlock>,
    text_decoder: Option<Linear>,
    project_from_hidden_norm: RmsNorm,
    project_from_hidden: Linear,
    up_block: Option<Upsample>,
    mlm_layer: MlmLayer,
}

impl Qkv {
    fn new(vb: &Vb, names: [&str; 5], d: usize, dh: usize) -> Result<Self> {
        Ok(Qkv {
            q: Linear::new(&vb.pp(names[0]), d, d, true)?,
            k: Linear::new(&vb.pp(names[1]), d, d, true)?,
            v: Linear::new(&vb.pp(names[2]), d, d, true)?,
            norm_q: RmsNorm::new(&vb.pp(names[3]), dh)?,
            norm_k: RmsNorm::new(&vb.pp(names[4]), dh)?,
        })
    }

    /// `[M, D] -> (q, k, v)`, each `[M, H, Dh]`, q and k normalised per head.
    fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut q, mut k) = (self.q.forward(x), self.k.forward(x));
        self.norm_q.forward_(&mut q);
        self.norm_k.forward_(&mut k);
        (q, k, self.v.forward(x))
    }
}

impl FeedForward {
    fn new(vb: &Vb, d: usize) -> Result<Self> {
        Ok(FeedForward {
            proj: Linear::new(&vb.pp("net.0.proj"), d, 4 * d, true)?,
            out: Linear::new(&vb.pp("net.2"), 4 * d, d, true)?,
        })
    }

    /// `[M, D] -> [M, D]`
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.out.forward(&self.proj.forward_gelu(x))
    }
}

/// The image-token grid the blocks see and the rotary tables for one forward.
struct Geometry {
    batch: usize,
    /// Text tokens `L`.
    text: usize,
    /// Grid the blocks see (after the down block).
    rows: usize,
    cols: usize,
    /// `[L + N, Dh]`
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Geometry {
    fn image(&self) -> usize {
        self.rows * self.cols
    }

    fn seq(&self) -> usize {
        self.text + self.image()
    }
}

/// `LayerNorm(x) * (1 + scale) + shift` for `x [B, S, D]`, one `(shift, scale)` row per batch
/// item taken from `mods [B, n * D]` at chunk indices `shift_at` and `shift_at + 1`.
fn modulate(x: &[f32], mods: &[f32], shift_at: usize, d: usize, batch: usize) -> Vec<f32> {
    let per_item = x.len() / batch;
    let n = mods.len() / (batch * d);
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        let m = &mods[b * n * d..(b + 1) * n * d];
        let (shift, scale) = (
            &m[shift_at * d..(shift_at + 1) * d],
            &m[(shift_at + 1) * d..(shift_at + 2) * d],
        );
        let range = b * per_item..(b + 1) * per_item;
        norm::layer_norm_modulate(&x[range.clone()], shift, scale, NORM_EPS, &mut out[range]);
    }
    out
}

/// `x += gate * y` for `x, y [B, S, D]`, the gate `[D]` of each batch item at chunk `gate_at`.
fn gated_add_(x: &mut [f32], y: &[f32], mods: &[f32], gate_at: usize, d: usize, batch: usize) {
    let per_item = x.len() / batch;
    let n = mods.len() / (batch * d);
    for b in 0..batch {
        let gate = &mods[(b * n + gate_at) * d..(b * n + gate_at + 1) * d];
        let range = b * per_item..(b + 1) * per_item;
        x[range.clone()]
            .par_chunks_mut(d)
            .zip(y[range].par_chunks(d))
            .with_min_len(64)
            .for_each(|(xr, yr)| {
                for ((xv, yv), g) in xr.iter_mut().zip(yr).zip(gate) {
                    *xv += g * yv;
                }
            });
    }
}

/// `[B, L, C]` and `[B, N, C]` -> `[B, L + N, C]`
fn concat_seq(text: &[f32], image: &[f32], batch: usize) -> Vec<f32> {
    let (lt, li) = (text.len() / batch, image.len() / batch);
    let mut out = Vec::with_capacity(text.len() + image.len());
    for b in 0..batch {
        out.extend_from_slice(&text[b * lt..(b + 1) * lt]);
        out.extend_from_slice(&image[b * li..(b + 1) * li]);
    }
    out
}

/// `[B, L + N, C]` -> (`[B, L, C]`, `[B, N, C]`) with `text_width = L * C`.
fn split_seq(x: &[f32], text_width: usize, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let per_item = x.len() / batch;
    let mut text = Vec::with_capacity(batch * text_width);
    let mut image = Vec::with_capacity(x.len() - batch * text_width);
    for row in x.chunks_exact(per_item) {
        text.extend_from_slice(&row[..text_width]);
        image.extend_from_slice(&row[text_width..]);
    }
    (text, image)
}

impl Mmdit {
    /// Joint attention over `[text; image]`: rotary positions on q and k, then softmax attention.
    /// `q, k, v [B, L + N, H, Dh] -> [B, L + N, D]`
    fn attend(&self, mut q: Vec<f32>, mut k: Vec<f32>, v: Vec<f32>, g: &Geometry) -> Vec<f32> {
        let (h, dh) = (self.cfg.num_attention_heads, self.cfg.attention_head_dim);
        for b in 0..g.batch {
            let item = g.seq() * h * dh;
            rope::apply_rope_(&mut q[b * item..(b + 1) * item], &g.cos, &g.sin, h, dh);
            rope::apply_rope_(&mut k[b * item..(b + 1) * item], &g.cos, &g.sin, h, dh);
        }
        let mut out = vec![0.0; q.len()];
        let compute = self.project_to_hidden.compute();
        attention_with(
            &q,
            &k,
            &v,
            g.batch,
            g.seq(),
            h,
            dh,
            false,
            compute,
            &mut out,
        );
        out
    }
}

impl DualBlock {
    fn new(vb: &Vb, cfg: &TransformerConfig) -> Result<Self> {
        let (d, dh) = (cfg.inner_dim(), cfg.attention_head_dim);
        let attn = vb.pp("attn");
        Ok(DualBlock {
            norm1: Linear::new(&vb.pp("norm1.linear"), d, 6 * d, true)?,
            norm1_context: Linear::new(&vb.pp("norm1_context.linear"), d, 6 * d, true)?,
            attn_image: Qkv::new(&attn, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], d, dh)?,
            attn_text: Qkv::new(
                &attn,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
                d,
                dh,
            )?,
            to_out: Linear::new(&attn.pp("to_out.0"), d, d, true)?,
            to_add_out: Linear::new(&attn.pp("to_add_out"), d, d, true)?,
            ff: FeedForward::new(&vb.pp("ff"), d)?,
            ff_context: FeedForward::new(&vb.pp("ff_context"), d)?,
        })
    }

    /// `image [B, N, D]`, `text [B, L, D]` updated in place; `temb_silu [B, D]`.
    fn forward(
        &self,
        model: &Mmdit,
        image: &mut [f32],
        text: &mut [f32],
        temb_silu: &[f32],
        g: &Geometry,
    ) {
        let d = model.cfg.inner_dim();
        // [B, 6D] each: shift, scale, gate for attention, then for the MLP.
        let (mods, mods_c) = (
            self.norm1.forward(temb_silu),
            self.norm1_context.forward(temb_silu),
        );
        let (qi, ki, vi) = self
            .attn_image
            .forward(&modulate(image, &mods, 0, d, g.batch));
        let (qt, kt, vt) = self
            .attn_text
            .forward(&modulate(text, &mods_c, 0, d, g.batch));
        let joint = |t: &[f32], i: &[f32]| concat_seq(t, i, g.batch);
        let attn = model.attend(joint(&qt, &qi), joint(&kt, &ki), joint(&vt, &vi), g);
        let (attn_text, attn_image) = split_seq(&attn, g.text * d, g.batch);

        gated_add_(
            image,
            &self.to_out.forward(&attn_image),
            &mods,
            2,
            d,
            g.batch,
        );
        gated_add_(
            image,
            &self.ff.forward(&modulate(image, &mods, 3, d, g.batch)),
            &mods,
            5,
            d,
            g.batch,
        );
        gated_add_(
            text,
            &self.to_add_out.forward(&attn_text),
            &mods_c,
            2,
            d,
            g.batch,
        );
        gated_add_(
            text,
            &self
                .ff_context
                .forward(&modulate(text, &mods_c, 3, d, g.batch)),
            &mods_c,
            5,
            d,
            g.batch,
        );
    }
}

impl SingleBlock {
    fn new(vb: &Vb, cfg: &TransformerConfig) -> Result<Self> {
        let (d, dh) = (cfg.inner_dim(), cfg.attention_head_dim);
        Ok(SingleBlock {
            norm: Linear::new(&vb.pp("norm.linear"), d, 3 * d, true)?,
            attn: Qkv::new(
                &vb.pp("attn"),
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                d,
                dh,
            )?,
            proj_mlp: Linear::new(&vb.pp("proj_mlp"), d, 4 * d, true)?,
            proj_out: Linear::new(&vb.pp("proj_out"), 5 * d, d, true)?,
        })
    }

    /// `x [B, L + N, D]` updated in place; `temb_silu [B, D]`.
    fn forward(&self, model: &Mmdit, x: &mut [f32], temb_silu: &[f32], g: &Geometry) {
        let d = model.cfg.inner_dim();
        // [B, 3D]: shift, scale, gate.
        let mods = self.norm.forward(temb_silu);
        let y = modulate(x, &mods, 0, d, g.batch);
        let mlp = self.proj_mlp.forward_gelu(&y); // [B, S, 4D]
        let (q, k, v) = self.attn.forward(&y);
        let attn = model.attend(q, k, v, g); // [B, S, D]
                                             // proj_out of [attn; mlp] ([B, S, 5D]), read side by side.
        let out = self.proj_out.forward_concat(&attn, d, &mlp);
        gated_add_(x, &out, &mods, 2, d, g.batch);
    }
}

impl Downsample {
    fn new(vb: &Vb, d: usize) -> Result<Self> {
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
            norm: RmsNorm::new(&vb.pp("norm"), d)?,
            conv: Linear::from_rows(&vb.pp("conv"), &weight, None, 4 * d, d),
        })
    }

    /// `[B, h, w, D] -> [B, h/2, w/2, D]` (h and w even, checked by the caller).
    fn forward(&self, mut x: Vec<f32>, batch: usize, h: usize, w: usize) -> Vec<f32> {
        let d = self.norm.weight.len();
        self.norm.forward_(&mut x);
        let mut patches = Vec::with_capacity(x.len()); // [B, h/2, w/2, (2, 2, D)]
        for b in 0..batch {
            for i in 0..h / 2 {
                for j in 0..w / 2 {
                    for (ki, kj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let at = ((b * h + 2 * i + ki) * w + 2 * j + kj) * d;
                        patches.extend_from_slice(&x[at..at + d]);
                    }
                }
            }
        }
        self.conv.forward(&patches)
    }
}

impl Upsample {
    fn new(vb: &Vb, d: usize) -> Result<Self> {
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
            norm: RmsNorm::new(&vb.pp("norm"), d)?,
            conv: Linear::from_rows(&vb.pp("conv"), &weight, None, d, 4 * d),
        })
    }

    /// `[B, h, w, D] -> [B, 2h, 2w, D]`
    fn forward(&self, mut x: Vec<f32>, batch: usize, h: usize, w: usize) -> Vec<f32> {
        let d = self.norm.weight.len();
        self.norm.forward_(&mut x);
        let y = self.conv.forward(&x); // [B, h, w, (2, 2, D)]
        let mut out = vec![0.0; y.len()];
        for b in 0..batch {
            for i in 0..h {
                for j in 0..w {
                    let src = ((b * h + i) * w + j) * 4 * d;
                    for (kk, (ki, kj)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                        let dst = ((b * 2 * h + 2 * i + ki) * 2 * w + 2 * j + kj) * d;
                        out[dst..dst + d].copy_from_slice(&y[src + kk * d..src + (kk + 1) * d]);
                    }
                }
            }
        }
        out
    }
}

impl Mmdit {
    /// Builds the model from `vb` (the `transformer/` weights) for `cfg`.
    pub fn new(cfg: &TransformerConfig, vb: &Vb) -> Result<Self> {
        let d = cfg.inner_dim();
        let pooled_in = cfg.pooled_projection_dim + MICRO_CONDS * SIN_DIM;
        let embed = vb.pp("embed");
        let mlm = vb.pp("mlm_layer");
        Ok(Mmdit {
            cond_embed: Mlp::new(&vb.pp("cond_embed"), pooled_in, d, false)?,
            time_text_embed: TimeTextEmbed {
                timestep_embedder: Mlp::new(
                    &vb.pp("time_text_embed.timestep_embedder"),
                    SIN_DIM,
                    d,
                    true,
                )?,
                text_embedder: Mlp::new(
                    &vb.pp("time_text_embed.text_embedder"),
                    cfg.text_embedder_in(),
                    d,
                    true,
                )?,
            },
            context_embedder: Linear::new(
                &vb.pp("context_embedder"),
                cfg.joint_attention_dim,
                d,
                true,
            )?,
            encoder_proj_layer_norm: RmsNorm::new(&vb.pp("encoder_proj_layer_norm"), d)?,
            embed: ConvEmbed {
                embeddings: embed.pp("embeddings").get("weight", &[cfg.vocab_size, d])?,
                layer_norm: RmsNorm::new(&embed.pp("layer_norm"), d)?,
                conv: Linear::conv1x1(&embed.pp("conv"), d, d)?,
            },
            down_block: cfg
                .downsample
                .then(|| Downsample::new(&vb.pp("down_block.downsample"), d))
                .transpose()?,
            project_to_hidden_norm: RmsNorm::new(&vb.pp("project_to_hidden_norm"), d)?,
            project_to_hidden: Linear::new(&vb.pp("project_to_hidden"), d, d, false)?,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| DualBlock::new(&vb.pp("transformer_blocks").pp(i), cfg))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..cfg.num_single_layers)
                .map(|i| SingleBlock::new(&vb.pp("single_transformer_blocks").pp(i), cfg))
                .collect::<Result<_>>()?,
            text_decoder: cfg
                .tokenizer_vocab_size
                .map(|vt| Linear::new(&vb.pp("text_decoder.1"), d, vt, false))
                .transpose()?,
            project_from_hidden_norm: RmsNorm::new(&vb.pp("project_from_hidden_norm"), d)?,
            project_from_hidden: Linear::new(&vb.pp("project_from_hidden"), d, d, false)?,
            up_block: cfg
                .upsample
                .then(|| Upsample::new(&vb.pp("up_block.upsample"), d))
                .transpose()?,
            mlm_layer: MlmLayer {
                conv1: Linear::conv1x1(&mlm.pp("conv1"), d, d)?,
                layer_norm: RmsNorm::new(&mlm.pp("layer_norm"), d)?,
                conv2: Linear::conv1x1(&mlm.pp("conv2"), d, cfg.codebook_size)?,
            },
            cfg: cfg.clone(),
        })
    }

    /// The conditioning vector `temb [B, D]` (reference 2.1).
    fn conditioning(&self, x: &MmditInput) -> Vec<f32> {
        let (b, d, p) = (
            x.batch,
            self.cfg.inner_dim(),
            self.cfg.pooled_projection_dim,
        );
        let micro = sinusoidal_embedding(x.micro_conds, SIN_DIM); // [B, 5 * 256]
        let mut pooled = Vec::with_capacity(b * (p + MICRO_CONDS * SIN_DIM));
        for i in 0..b {
            pooled.extend_from_slice(&x.pooled_projections[i * p..(i + 1) * p]);
            pooled.extend_from_slice(
                &micro[i * MICRO_CONDS * SIN_DIM..(i + 1) * MICRO_CONDS * SIN_DIM],
            );
        }
        let cond = self.cond_embed.forward(&pooled); // [B, D]
        let time = self
            .time_text_embed
            .timestep_embedder
            .forward(&sinusoidal_embedding(&[x.timestep * 1000.0], SIN_DIM)); // [1, D]
        let mut temb = self.time_text_embed.text_embedder.forward(&cond); // [B, D]
        for row in temb.chunks_exact_mut(d) {
            row.iter_mut().zip(&time).for_each(|(t, v)| *t += v);
        }
        temb
    }

    /// Image ids to the block input `[B, N, D]` (reference 2.2).
    fn embed_image(&self, x: &MmditInput) -> Vec<f32> {
        let d = self.cfg.inner_dim();
        let mut h = Vec::with_capacity(x.image_tokens.len() * d); // [B, h, w, D]
        for &id in x.image_tokens {
            h.extend_from_slice(&self.embed.embeddings[id as usize * d..(id as usize + 1) * d]);
        }
        self.embed.layer_norm.forward_(&mut h);
        let mut h = self.embed.conv.forward(&h);
        if let Some(down) = &self.down_block {
            h = down.forward(h, x.batch, x.height, x.width);
        }
        self.project_to_hidden_norm.forward_(&mut h);
        self.project_to_hidden.forward(&h)
    }

    /// Rotary tables for `[text; image]`: text at (0, 0, 0), image token (i, j) at (0, i, j).
    fn geometry(&self, batch: usize, text: usize, rows: usize, cols: usize) -> Geometry {
        let mut ids = vec![[0.0f64; 3]; text];
        ids.extend((0..rows).flat_map(|i| (0..cols).map(move |j| [0.0, i as f64, j as f64])));
        let (cos, sin) = rope::rope_tables(&ids, &self.cfg.axes_dims_rope);
        Geometry {
            batch,
            text,
            rows,
            cols,
            cos,
            sin,
        }
    }

    /// Block output `[B, N, D]` to image logits `[B, h, w, V]` (reference 2.7).
    fn image_head(&self, mut h: Vec<f32>, g: &Geometry) -> Vec<f32> {
        self.project_from_hidden_norm.forward_(&mut h);
        let mut h = self.project_from_hidden.forward(&h);
        if let Some(up) = &self.up_block {
            h = up.forward(h, g.batch, g.rows, g.cols);
        }
        let mut h = self.mlm_layer.conv1.forward(&h);
        self.mlm_layer.layer_norm.forward_(&mut h);
        self.mlm_layer.conv2.forward(&h)
    }

    /// The whole transformer forward.
    pub fn forward(&self, x: &MmditInput) -> Result<MmditOutput> {
        let (text, image, g) = self.trunk(x)?;
        Ok(MmditOutput {
            text_logits: self.text_head(text),
            image_logits: self.image_head(image, &g),
        })
    }

    /// The image logits alone `[B, h, w, V]` (text-to-image does not read the text head's).
    pub fn forward_image(&self, x: &MmditInput) -> Result<Vec<f32>> {
        let (_, image, g) = self.trunk(x)?;
        Ok(self.image_head(image, &g))
    }

    /// The text logits alone `[B, L, Vt]` (captioning does not read the image head's); `None`
    /// without a text head.
    pub fn forward_text(&self, x: &MmditInput) -> Result<Option<Vec<f32>>> {
        let (text, _, _) = self.trunk(x)?;
        Ok(self.text_head(text))
    }

    /// Everything up to the heads: text `[B, L, D]` and image `[B, N, D]` block outputs.
    fn trunk(&self, x: &MmditInput) -> Result<(Vec<f32>, Vec<f32>, Geometry)> {
        let (rows, cols) = check_input(&self.cfg, x)?;
        let d = self.cfg.inner_dim();
        let g = self.geometry(x.batch, x.text_len, rows, cols);

        let mut temb_silu = self.conditioning(x); // [B, D]
        act::silu_(&mut temb_silu);
        let mut image = self.embed_image(x); // [B, N, D]
        let mut text = self.context_embedder.forward(x.encoder_hidden_states); // [B, L, D]
        self.encoder_proj_layer_norm.forward_(&mut text);

        for block in &self.transformer_blocks {
            block.forward(self, &mut image, &mut text, &temb_silu, &g);
        }
        let mut joint = concat_seq(&text, &image, x.batch); // [B, L + N, D]
        for block in &self.single_transformer_blocks {
            block.forward(self, &mut joint, &temb_silu, &g);
        }
        let (text, image) = split_seq(&joint, g.text * d, x.batch);
        Ok((text, image, g))
    }

    /// Text block output `[B, L, D]` to text logits `[B, L, Vt]` (reference 2.7).
    fn text_head(&self, mut text: Vec<f32>) -> Option<Vec<f32>> {
        let d = self.cfg.inner_dim();
        self.text_decoder.as_ref().map(|dec| {
            norm::layer_norm_(&mut text, d, NORM_EPS);
            dec.forward(&text)
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

/// Checks every input's length, the ids' range, the grid against the down/up blocks and
/// the timestep; returns the grid the blocks see.
pub(crate) fn check_input(cfg: &TransformerConfig, x: &MmditInput) -> Result<(usize, usize)> {
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
    blocks_grid(cfg, h, w)
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
