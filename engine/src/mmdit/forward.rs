//! The MM-DiT forward (reference section 2), written once over [`Ops`]: the CPU runs it with
//! [`CpuOps`] ([`Mmdit::forward`], a [`Workspace`] per call), a device with
//! [`crate::cuda::Cuda`] ([`super::cuda::CudaMmdit`], which keeps the [`Workspace`] of the last
//! shape between steps).
//!
//! For `[B, h, w]` ids and `L` text tokens (`N` image tokens after the down block, `S = L + N`):
//! the text residual `T [B, L, D]` and the image residual `I [B, N, D]` go through the dual
//! blocks, each stream writing its q, k, v into the rows of the joint buffers `[B, S, H, Dh]`
//! (text rows `0..L`, image rows `L..S` of each item); then both are copied into the joint
//! residual `X [B, S, D]` for the single blocks, and the heads read their rows of `X`.

use super::{
    blocks_grid, DualBlock, FeedForward, Mlp, Mmdit, Qkv, SingleBlock, DUAL_ATTN, DUAL_MLP,
    MICRO_CONDS, SINGLE, SIN_DIM,
};
use super::{check_input, MmditInput, MmditOutput};
use crate::backend::Backend;
use crate::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::nn::sinusoidal_embedding;
use crate::ops::{Activation, AttnShape, Chunks, CpuOps, Grid, LinearOf, Ops, Out, Patches, Rows};

/// The shapes of one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub batch: usize,
    /// Text tokens `L`.
    pub text: usize,
    /// The id grid.
    pub height: usize,
    pub width: usize,
    /// The grid the blocks see (halved by the down block).
    pub rows: usize,
    pub cols: usize,
    /// The batch is `[uncond; cond]` and the image head applies the guidance before its last
    /// layer: image logits `[B / 2, h, w, V]`.
    pub guided: bool,
}

impl Shape {
    /// For `[batch, height, width]` ids and `text` tokens; the grid checked against the
    /// down block.
    pub(crate) fn new(
        cfg: &TransformerConfig,
        (batch, text, height, width): (usize, usize, usize, usize),
    ) -> Result<Shape> {
        let (rows, cols) = blocks_grid(cfg, height, width)?;
        Ok(Shape {
            batch,
            text,
            height,
            width,
            rows,
            cols,
            guided: false,
        })
    }

    /// This shape with the guidance folded into the image head (`guided`), which needs an even
    /// batch of `[uncond; cond]`.
    pub(crate) fn guided(self, guided: bool) -> Result<Shape> {
        if guided && !self.batch.is_multiple_of(2) {
            return Err(Error::input(
                "batch",
                format!(
                    "a guided forward runs [uncond; cond], an even batch, not {}",
                    self.batch
                ),
            ));
        }
        Ok(Shape { guided, ..self })
    }

    /// Pixels of the image logits: `B h w`, or half under folded guidance.
    pub(crate) fn logit_pixels(&self) -> usize {
        match self.guided {
            true => self.pixels() / 2,
            false => self.pixels(),
        }
    }

    /// `B h w`
    pub(crate) fn pixels(&self) -> usize {
        self.batch * self.height * self.width
    }

    /// `N`
    fn image(&self) -> usize {
        self.rows * self.cols
    }

    /// `S = L + N`
    fn seq(&self) -> usize {
        self.text + self.image()
    }

    /// The id grid.
    fn id_grid(&self) -> Grid {
        Grid {
            batch: self.batch,
            h: self.height,
            w: self.width,
        }
    }

    /// The grid the blocks see.
    fn blocks_grid(&self) -> Grid {
        Grid {
            batch: self.batch,
            h: self.rows,
            w: self.cols,
        }
    }

    /// The text rows of the joint sequence.
    fn text_rows(&self) -> Rows {
        Rows::part(self.batch, (self.text, self.seq(), 0))
    }

    /// The image rows of the joint sequence.
    fn image_rows(&self) -> Rows {
        Rows::part(self.batch, (self.image(), self.seq(), self.text))
    }
}

/// One forward's inputs, in `O`'s types.
pub(crate) struct Inputs<'a, O: Ops> {
    /// `[B, h, w]` image ids in `0..vocab_size` (checked by the caller).
    pub ids: &'a O::Ids,
    /// `[B, L, J]` text features.
    pub context: &'a O::F32,
    /// `[B, P + 5 * 256]`: each item's pooled vector, then its micro-conditions' sinusoids
    /// ([`condition_rows`]).
    pub cond: &'a O::F32,
    /// `[1, 256]`: the sinusoid of `timestep * 1000` ([`time_row`]).
    pub time: &'a O::F32,
}

/// Where a forward's logits go; a head runs when its output is given (and, for text, the
/// model has a text head).
pub(crate) struct LogitsOut<'a, O: Ops> {
    /// `[B, h, w, V]`, or `[B / 2, h, w, V]` guided with `guidance` on a guided shape.
    pub image: Option<&'a mut O::F32>,
    /// The guidance scale of a guided shape.
    pub guidance: Option<f32>,
    /// `[B, L, Vt]`
    pub text: Option<&'a mut O::F32>,
}

/// The sinusoids of the micro-conditions `micro [B, 5]`: `[B, 5 * 256]`.
pub(crate) fn micro_rows(micro: &[f32]) -> Vec<f32> {
    sinusoidal_embedding(micro, SIN_DIM)
}

/// `cond_embed`'s input: each item's pooled vector `[P]` from `pooled [B, P]`, then the
/// sinusoids of its micro-conditions from `micro [B, 5]`: `[B, P + 5 * 256]`.
pub(crate) fn condition_rows(pooled: &[f32], micro: &[f32], batch: usize) -> Vec<f32> {
    let sines = micro_rows(micro);
    let (p, m) = (pooled.len() / batch, MICRO_CONDS * SIN_DIM);
    let mut rows = Vec::with_capacity(batch * (p + m));
    for b in 0..batch {
        rows.extend_from_slice(&pooled[b * p..(b + 1) * p]);
        rows.extend_from_slice(&sines[b * m..(b + 1) * m]);
    }
    rows
}

/// The sinusoid `[256]` of `timestep * 1000` (reference 2.1).
pub(crate) fn time_row(timestep: f32) -> Vec<f32> {
    sinusoidal_embedding(&[timestep * 1000.0], SIN_DIM)
}

/// The conditioning's buffers.
struct Conditioning<O: Ops> {
    /// `[B, P + 5 * 256]`, `[1, 256]`
    cond: O::Act,
    time: O::Act,
    /// MLP hiddens `[B, D]`, `[1, D]`.
    hidden: O::Act,
    time_hidden: O::Act,
    /// `cond_embed`'s output `[B, D]`.
    pooled: O::Act,
    /// `temb [B, D]` and its SiLU, what every modulation reads.
    temb: O::F32,
    temb_silu: O::Act,
}

/// The embeddings' buffers.
struct Embedding<O: Ops> {
    /// `[B, h, w, D]`: the ids' rows, then `embed.conv`'s output.
    tokens: O::Act,
    conv: O::Act,
    /// `[B, N, D]` after the down block (empty without one).
    down: O::Act,
    /// `[B, L, J]`, then `[B, L, D]`.
    context: O::Act,
    context_proj: O::Act,
}

/// One stream of the dual blocks: its residual, modulation and activations.
struct Stream<O: Ops> {
    /// Its rows of the joint sequence.
    rows: Rows,
    /// `[B, R, D]`
    res: O::F32,
    /// `[B, 6D]`: [`DUAL_ATTN`] then [`DUAL_MLP`].
    mods: O::F32,
    /// Modulated rows `[B, R, D]`.
    y: O::Act,
    /// The MLP's hidden `[B, R, 4D]`.
    hidden: O::Act,
}

impl<O: Ops> Stream<O> {
    fn new(ops: &O, rows: Rows, d: usize) -> Result<Self> {
        let n = rows.count();
        Ok(Stream {
            rows,
            res: ops.f32s(n * d)?,
            mods: ops.f32s(rows.batch * 6 * d)?,
            y: ops.acts(n * d)?,
            hidden: ops.acts(n * 4 * d)?,
        })
    }
}

/// The attention's buffers over the joint sequence.
struct Joint<O: Ops> {
    /// `[B, S, H, Dh]` each (`Dh` as the backend lays heads out).
    q: O::Act,
    k: O::Act,
    v: O::Act,
    /// The attention's output, `[B, S, H, Dh]`.
    heads: O::Act,
    /// `[S, Dh]` rotary tables.
    cos: O::F32,
    sin: O::F32,
    shape: AttnShape,
}

/// The heads' buffers.
struct Heads<O: Ops> {
    /// `[B, N, D]`: the image rows of `X`, then `project_from_hidden`'s output.
    image: O::Act,
    projected: O::Act,
    /// `[B, h, w, D]` after the up block (empty without one), then `mlm_layer.conv1`'s output.
    up: O::Act,
    mlm: O::Act,
    /// `[B / 2, h, w, D]`: the guided rows of `mlm` under folded guidance (else empty).
    guided: O::Act,
    /// `[B, L, D]`: the text rows of `X` normalised.
    text: O::Act,
}

/// Every buffer of one forward shape.
pub(crate) struct Workspace<O: Ops> {
    pub(crate) shape: Shape,
    cond: Conditioning<O>,
    embed: Embedding<O>,
    text: Stream<O>,
    image: Stream<O>,
    joint: Joint<O>,
    /// `X [B, S, D]`
    x: O::F32,
    /// A single block's modulation `[B, 3D]` and modulated rows `[B, S, D]`.
    mods: O::F32,
    y: O::Act,
    /// A single block's attention and MLP hidden side by side, `[B, S, H Dh + 4D]`.
    cat: O::Cat,
    heads: Heads<O>,
}

impl<O: Ops> Workspace<O> {
    /// Every buffer of `model`'s forward over `shape`.
    pub(crate) fn new<B: Backend>(model: &Mmdit<B>, ops: &O, shape: Shape) -> Result<Self>
    where
        O: Ops<Backend = B>,
    {
        let cfg = &model.cfg;
        let (b, l, d) = (shape.batch, shape.text, cfg.inner_dim());
        let (n, seq, px) = (shape.image(), shape.seq(), shape.pixels());
        let first_q = (model
            .transformer_blocks
            .first()
            .map(|blk| &blk.attn_image.q))
        .or(model
            .single_transformer_blocks
            .first()
            .map(|blk| &blk.attn.q));
        let hd = first_q.map_or(d, |q| ops.out_width(q));
        let (cos, sin) = super::rope_tables(cfg, l, shape.rows, shape.cols);
        let cond_width = cfg.pooled_projection_dim + MICRO_CONDS * SIN_DIM;
        let text_rows = cfg.tokenizer_vocab_size.map_or(0, |_| b * l * d);
        Ok(Workspace {
            shape,
            cond: Conditioning {
                cond: ops.acts(b * cond_width)?,
                time: ops.acts(SIN_DIM)?,
                hidden: ops.acts(b * d)?,
                time_hidden: ops.acts(d)?,
                pooled: ops.acts(b * d)?,
                temb: ops.f32s(b * d)?,
                temb_silu: ops.acts(b * d)?,
            },
            embed: Embedding {
                tokens: ops.acts(px * d)?,
                conv: ops.acts(px * d)?,
                down: ops.acts(model.down_block.as_ref().map_or(0, |_| b * n * d))?,
                context: ops.acts(b * l * cfg.joint_attention_dim)?,
                context_proj: ops.acts(b * l * d)?,
            },
            text: Stream::new(ops, shape.text_rows(), d)?,
            image: Stream::new(ops, shape.image_rows(), d)?,
            joint: Joint {
                q: ops.acts(b * seq * hd)?,
                k: ops.acts(b * seq * hd)?,
                v: ops.acts(b * seq * hd)?,
                heads: ops.acts(b * seq * hd)?,
                cos: ops.upload(&cos)?,
                sin: ops.upload(&sin)?,
                shape: AttnShape {
                    batch: b,
                    len: seq,
                    heads: cfg.num_attention_heads,
                    causal: false,
                },
            },
            x: ops.f32s(b * seq * d)?,
            mods: ops.f32s(b * 3 * d)?,
            y: ops.acts(b * seq * d)?,
            cat: ops.cat(b * seq, hd, 4 * d)?,
            heads: Heads {
                image: ops.acts(b * n * d)?,
                projected: ops.acts(b * n * d)?,
                up: ops.acts(model.up_block.as_ref().map_or(0, |_| px * d))?,
                mlm: ops.acts(px * d)?,
                guided: ops.acts(if shape.guided { px / 2 * d } else { 0 })?,
                text: ops.acts(text_rows)?,
            },
        })
    }
}

impl<B: Backend> Mmdit<B> {
    /// One forward of `x` on `ops` in `ws` (of `x`'s shape): the logits `out` asks for.
    pub(crate) fn run<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        x: Inputs<'_, O>,
        ws: &mut Workspace<O>,
        out: LogitsOut<'_, O>,
    ) -> Result<()> {
        let d = self.cfg.inner_dim();
        self.conditioning(ops, (x.cond, x.time), &mut ws.cond)?;
        self.embed(ops, &x, ws)?;
        for block in &self.transformer_blocks {
            crate::cancel::check()?;
            block.forward(ops, ws, d)?;
        }
        let s = ws.shape;
        let (text, image) = (&ws.text, &ws.image);
        ops.copy_rows(
            (&text.res, Rows::all(s.batch, s.text)),
            (&mut ws.x, text.rows),
        )?;
        ops.copy_rows(
            (&image.res, Rows::all(s.batch, s.image())),
            (&mut ws.x, image.rows),
        )?;
        for block in &self.single_transformer_blocks {
            crate::cancel::check()?;
            block.forward(ops, ws, d)?;
        }
        if let (Some(dec), Some(logits)) = (&self.text_decoder, out.text) {
            self.text_head(ops, dec, ws, logits)?;
        }
        match out.image {
            Some(logits) => self.image_head(ops, ws, logits, out.guidance),
            None => Ok(()),
        }
    }

    /// `temb_silu [B, D]` (reference 2.1): `cond_embed` of the pooled vectors and
    /// micro-conditions through `text_embedder`, plus `timestep_embedder` of the timestep, SiLU.
    fn conditioning<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        (cond, time): (&O::F32, &O::F32),
        c: &mut Conditioning<O>,
    ) -> Result<()> {
        let tte = &self.time_text_embed;
        let (cond_embed, text_embedder) = (self.cond_embed.layers(), tte.text_embedder.layers());
        ops.cast(cond, None, &mut c.cond)?; // [B, P + 5 * 256]
        let pooled = Out::Act(&mut c.pooled); // [B, D]
        two_layers(ops, cond_embed, &c.cond, &mut c.hidden, pooled)?;
        let temb = Out::F32(&mut c.temb); // [B, D]
        two_layers(ops, text_embedder, &c.pooled, &mut c.hidden, temb)?;
        ops.cast(time, None, &mut c.time)?; // [1, 256]
        let (time_layers, every_row) =
            (tte.timestep_embedder.layers(), Out::Broadcast(&mut c.temb));
        two_layers(ops, time_layers, &c.time, &mut c.time_hidden, every_row)?;
        ops.cast(&c.temb, Some(Activation::Silu), &mut c.temb_silu)
    }

    /// The block inputs (reference 2.2): image ids to `I [B, N, D]` (id table, RMSNorm, 1x1
    /// conv, the down block, `project_to_hidden`), text features to `T [B, L, D]`
    /// (`context_embedder`, `encoder_proj_layer_norm`).
    fn embed<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        x: &Inputs<'_, O>,
        ws: &mut Workspace<O>,
    ) -> Result<()> {
        let (s, e) = (ws.shape, &mut ws.embed);
        ops.gather(&self.embed.embeddings, x.ids, &mut e.tokens)?; // [B, h, w, D]
        ops.rms_norm_(&mut e.tokens, &self.embed.layer_norm.weight)?;
        ops.linear(&self.embed.conv, &e.tokens, Out::Act(&mut e.conv))?;
        let h = match &self.down_block {
            Some(down) => {
                ops.rms_norm_(&mut e.conv, &down.norm.weight)?;
                let ids = (&e.conv, s.id_grid());
                ops.patches(&down.conv, ids, Patches::Merge, &mut e.down)?;
                &mut e.down
            }
            None => &mut e.conv,
        }; // [B, N, D]
        ops.rms_norm_(h, &self.project_to_hidden_norm.weight)?;
        ops.linear(&self.project_to_hidden, h, Out::F32(&mut ws.image.res))?;
        ops.cast(x.context, None, &mut e.context)?; // [B, L, J]
        let proj = Out::Act(&mut e.context_proj); // [B, L, D]
        ops.linear(&self.context_embedder, &e.context, proj)?;
        ops.rms_norm_(&mut e.context_proj, &self.encoder_proj_layer_norm.weight)?;
        ops.widen(&e.context_proj, &mut ws.text.res)
    }

    /// Text logits `[B, L, Vt]` from the text rows of `X`: LayerNorm without weights,
    /// `text_decoder.1`.
    fn text_head<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        decoder: &LinearOf<O>,
        ws: &mut Workspace<O>,
        logits: &mut O::F32,
    ) -> Result<()> {
        let (s, d) = (ws.shape, self.cfg.inner_dim());
        let text = Rows::all(s.batch, s.text);
        ops.copy_rows((&ws.x, s.text_rows()), (&mut ws.text.res, text))?;
        ops.layer_norm(&ws.text.res, d, None, &mut ws.heads.text)?;
        ops.linear(decoder, &ws.heads.text, Out::F32(logits))
    }

    /// Image logits `[B, h, w, V]` from the image rows of `X` (reference 2.7): RMSNorm,
    /// `project_from_hidden`, the up block, `mlm_layer`. With `guidance` (on a guided shape)
    /// `u + g (c - u)` of the halves is taken before `mlm_layer.conv2`, which is linear and
    /// last, so it runs on half the rows: logits `[B / 2, h, w, V]`, the guided logits of
    /// upstream up to rounding.
    fn image_head<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        ws: &mut Workspace<O>,
        logits: &mut O::F32,
        guidance: Option<f32>,
    ) -> Result<()> {
        let s = ws.shape;
        let image = Rows::all(s.batch, s.image());
        ops.copy_rows((&ws.x, s.image_rows()), (&mut ws.image.res, image))?;
        let h = &mut ws.heads;
        ops.cast(&ws.image.res, None, &mut h.image)?; // [B, N, D]
        ops.rms_norm_(&mut h.image, &self.project_from_hidden_norm.weight)?;
        let projected = Out::Act(&mut h.projected);
        ops.linear(&self.project_from_hidden, &h.image, projected)?;
        let pixels = match &self.up_block {
            Some(up) => {
                ops.rms_norm_(&mut h.projected, &up.norm.weight)?;
                let blocks = (&h.projected, s.blocks_grid());
                ops.patches(&up.conv, blocks, Patches::Split, &mut h.up)?;
                &h.up
            }
            None => &h.projected,
        }; // [B, h, w, D]
        let mlm = &self.mlm_layer;
        ops.linear(&mlm.conv1, pixels, Out::Act(&mut h.mlm))?;
        ops.rms_norm_(&mut h.mlm, &mlm.layer_norm.weight)?;
        let rows = match (guidance, s.guided) {
            (Some(scale), true) => {
                ops.guide(&h.mlm, scale, &mut h.guided)?; // [B / 2, h, w, D]
                &h.guided
            }
            (None, false) => &h.mlm,
            _ => {
                return Err(Error::input(
                    "guidance",
                    "a guidance scale needs a guided shape",
                ))
            }
        };
        ops.linear(&mlm.conv2, rows, Out::F32(logits))
    }
}

impl<B: Backend> Mlp<B> {
    /// `linear_1 -> SiLU -> linear_2`, for [`two_layers`].
    fn layers(&self) -> Layers<'_, B> {
        (&self.linear_1, Activation::Silu, &self.linear_2)
    }
}

impl<B: Backend> FeedForward<B> {
    /// `net.0.proj -> GELU-tanh -> net.2`, for [`two_layers`].
    fn layers(&self) -> Layers<'_, B> {
        (&self.proj, Activation::GeluTanh, &self.out)
    }
}

/// Two linear maps with an activation between.
type Layers<'a, B> = (
    &'a <B as Backend>::Linear,
    Activation,
    &'a <B as Backend>::Linear,
);

/// `out = second(act(first(x)))` through `hidden`.
fn two_layers<O: Ops>(
    ops: &O,
    (first, act, second): Layers<'_, O::Backend>,
    x: &O::Act,
    hidden: &mut O::Act,
    out: Out<'_, O>,
) -> Result<()> {
    ops.linear(first, x, Out::Activated(&mut *hidden, act))?;
    ops.linear(second, hidden, out)
}

impl<B: Backend> Qkv<B> {
    /// q, k, v of the modulated rows `y` into the rows `rows` of the joint buffers, q and k
    /// normalised per head and rotated; `also`, another product of `y`, with them.
    fn project<'o, O: Ops<Backend = B>>(
        &'o self,
        ops: &O,
        (y, rows): (&O::Act, Rows),
        joint: &mut Joint<O>,
        also: Option<(&'o LinearOf<O>, Out<'_, O>)>,
    ) -> Result<()> {
        let mut products = vec![
            (&self.q, Out::Rows(&mut joint.q, rows)),
            (&self.k, Out::Rows(&mut joint.k, rows)),
            (&self.v, Out::Rows(&mut joint.v, rows)),
        ];
        products.extend(also);
        ops.linears(y, products)?;
        let tables = (&joint.cos, &joint.sin);
        ops.qk_norm_rope(&mut joint.q, rows, &self.norm_q.weight, tables)?;
        ops.qk_norm_rope(&mut joint.k, rows, &self.norm_k.weight, tables)
    }
}

impl<B: Backend> DualBlock<B> {
    /// `transformer_blocks.i`: `T` and `I` updated in place.
    fn forward<O: Ops<Backend = B>>(&self, ops: &O, ws: &mut Workspace<O>, d: usize) -> Result<()> {
        let temb = &ws.cond.temb_silu;
        ops.linear(&self.norm1, temb, Out::F32(&mut ws.image.mods))?; // [B, 6D]
        ops.linear(&self.norm1_context, temb, Out::F32(&mut ws.text.mods))?;
        let (image, text, joint) = (&mut ws.image, &mut ws.text, &mut ws.joint);
        for (stream, attn) in [
            (&mut *image, &self.attn_image),
            (&mut *text, &self.attn_text),
        ] {
            let Stream {
                rows, res, mods, y, ..
            } = stream;
            let mods = stream_chunks(mods, *rows, d);
            ops.modulate(res, mods, DUAL_ATTN.shift_scale(), y)?;
            attn.project(ops, (y, *rows), joint, None)?;
        }
        let qkv = (&joint.q, &joint.k, &joint.v);
        ops.attention(qkv, joint.shape, &mut joint.heads)?;
        let streams = [
            (image, &self.to_out, &self.ff),
            (text, &self.to_add_out, &self.ff_context),
        ];
        for (stream, to_out, ff) in streams {
            let Stream {
                rows,
                res,
                mods,
                y,
                hidden,
            } = stream;
            let mods = stream_chunks(mods, *rows, d);
            let attn_out = Out::Gated(&mut *res, mods, DUAL_ATTN.gate);
            ops.linear_rows(to_out, &joint.heads, *rows, attn_out)?;
            ops.modulate(res, mods, DUAL_MLP.shift_scale(), y)?;
            let mlp_out = Out::Gated(res, mods, DUAL_MLP.gate);
            two_layers(ops, ff.layers(), y, hidden, mlp_out)?;
        }
        Ok(())
    }
}

/// A dual-block stream's modulation `mods [B, 6D]` over its `rows`.
fn stream_chunks<O: Ops>(mods: &O::F32, rows: Rows, d: usize) -> Chunks<'_, O> {
    Chunks {
        mods,
        chunks: DUAL_ATTN.chunks,
        width: d,
        per: rows.per,
    }
}

impl<B: Backend> SingleBlock<B> {
    /// `single_transformer_blocks.i`: `X` updated in place; the attention and the MLP read
    /// the same modulated rows, `proj_out` their outputs side by side.
    fn forward<O: Ops<Backend = B>>(&self, ops: &O, ws: &mut Workspace<O>, d: usize) -> Result<()> {
        let s = ws.shape;
        ops.linear(&self.norm, &ws.cond.temb_silu, Out::F32(&mut ws.mods))?; // [B, 3D]
        let mods = Chunks {
            mods: &ws.mods,
            chunks: SINGLE.chunks,
            width: d,
            per: s.seq(),
        };
        ops.modulate(&ws.x, mods, SINGLE.shift_scale(), &mut ws.y)?;
        let hidden = Out::Right(&mut ws.cat, Activation::GeluTanh); // [B, S, 4D]
        let (joint, all) = (&mut ws.joint, Rows::all(s.batch, s.seq()));
        let mlp = Some((&self.proj_mlp, hidden));
        self.attn.project(ops, (&ws.y, all), joint, mlp)?;
        let qkv = (&joint.q, &joint.k, &joint.v);
        ops.attention_cat(qkv, joint.shape, &mut ws.cat)?;
        let out = Out::Gated(&mut ws.x, mods, SINGLE.gate);
        ops.linear_cat(&self.proj_out, &ws.cat, out)
    }
}

/// The heads a CPU forward runs, and the guidance folded into the image head.
#[derive(Clone, Copy)]
struct Asked {
    image: bool,
    text: bool,
    guidance: Option<f32>,
}

impl Asked {
    /// Both heads, no guidance.
    const UNGUIDED: Asked = Asked {
        image: true,
        text: true,
        guidance: None,
    };
}

/// The buffers of a CPU forward, kept from one call to the next of the same shape: the steps
/// of a run then reuse memory that is already mapped instead of faulting in (and the kernel
/// zeroing) tens of MiB of fresh pages on every step. Dropped with the run that holds it.
#[derive(Default)]
pub struct Scratch {
    workspace: Option<Workspace<CpuOps>>,
}

impl Scratch {
    /// The workspace of `shape`, made anew when the last call's shape differs.
    fn for_shape(
        &mut self,
        model: &Mmdit,
        ops: &CpuOps,
        shape: Shape,
    ) -> Result<&mut Workspace<CpuOps>> {
        if self.workspace.as_ref().map(|w| w.shape) != Some(shape) {
            self.workspace = None;
            self.workspace = Some(Workspace::new(model, ops, shape)?);
        }
        Ok(self.workspace.as_mut().expect("made above"))
    }
}

impl Mmdit {
    /// The whole transformer forward on the CPU.
    pub fn forward(&self, x: &MmditInput) -> Result<MmditOutput> {
        let mut out = MmditOutput::default();
        self.forward_into(x, Asked::UNGUIDED, &mut Scratch::default(), &mut out)?;
        Ok(out)
    }

    /// The image logits alone `[B, h, w, V]` (text-to-image does not read the text head's).
    pub fn forward_image(&self, x: &MmditInput) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_image_into(x, None, &mut Scratch::default(), &mut logits)?;
        Ok(logits)
    }

    /// [`Mmdit::forward_image`] into `logits`, with the buffers of `scratch`: a run's steps pass
    /// the same two and allocate nothing after the first. With `guidance` the batch is
    /// `[uncond; cond]` and `logits` the guided ones, `[B / 2, h, w, V]` (upstream's
    /// `u + g (c - u)` of the two halves' logits, folded before the last layer); else
    /// `[B, h, w, V]`.
    pub fn forward_image_into(
        &self,
        x: &MmditInput,
        guidance: Option<f32>,
        scratch: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let mut out = MmditOutput {
            image_logits: std::mem::take(logits),
            text_logits: None,
        };
        let heads = Asked {
            image: true,
            text: false,
            guidance,
        };
        let result = self.forward_into(x, heads, scratch, &mut out);
        *logits = out.image_logits;
        result
    }

    /// The text logits alone `[B, L, Vt]` (captioning does not read the image head's); `None`
    /// without a text head.
    pub fn forward_text(&self, x: &MmditInput) -> Result<Option<Vec<f32>>> {
        self.forward_text_in(x, &mut Scratch::default())
    }

    /// [`Mmdit::forward_text`] with the buffers of `scratch` (a run's steps pass the same one).
    pub fn forward_text_in(
        &self,
        x: &MmditInput,
        scratch: &mut Scratch,
    ) -> Result<Option<Vec<f32>>> {
        let mut out = MmditOutput::default();
        let text = Asked {
            image: false,
            ..Asked::UNGUIDED
        };
        self.forward_into(x, text, scratch, &mut out)?;
        Ok(out.text_logits)
    }

    /// A forward of the heads `heads` asks for into `out` (its vectors resized, an absent
    /// head's emptied), in the workspace of `scratch`.
    fn forward_into(
        &self,
        x: &MmditInput,
        heads: Asked,
        scratch: &mut Scratch,
        out: &mut MmditOutput,
    ) -> Result<()> {
        let Asked {
            image,
            text,
            guidance,
        } = heads;
        let shape = check_input(&self.cfg, x)?.guided(guidance.is_some())?;
        let ops = CpuOps {
            compute: self.project_to_hidden.compute(),
        };
        let ws = scratch.for_shape(self, &ops, shape)?;
        let context = x.encoder_hidden_states.to_vec();
        let cond = condition_rows(x.pooled_projections, x.micro_conds, x.batch);
        let time = time_row(x.timestep);
        let inputs = Inputs {
            ids: x.image_tokens,
            context: &context,
            cond: &cond,
            time: &time,
        };
        let image_len = match image {
            true => shape.logit_pixels() * self.cfg.codebook_size,
            false => 0,
        };
        out.image_logits.resize(image_len, 0.0);
        let vt = self.cfg.tokenizer_vocab_size.filter(|_| text);
        out.text_logits = vt.map(|vt| {
            let mut logits = out.text_logits.take().unwrap_or_default();
            logits.resize(x.batch * x.text_len * vt, 0.0);
            logits
        });
        let logits = LogitsOut {
            image: image.then_some(&mut out.image_logits),
            guidance,
            text: out.text_logits.as_mut(),
        };
        self.run(&ops, inputs, ws, logits)
    }
}
