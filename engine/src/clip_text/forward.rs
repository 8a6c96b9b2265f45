//! The CLIP text encoder's forward (reference section 3), written once over [`Ops`]: the CPU
//! runs it with [`CpuOps`] ([`ClipTextModel::forward`]), the device with
//! [`crate::cuda::Cuda`] ([`super::cuda::CudaClipText::encode`]).
//!
//! Over ids `[B, L]`: `X = token_embedding[ids] + position_embedding[l]`; per layer
//! `X += out_proj(attention(q, k, v of layer_norm1(X), causal))`, then
//! `X += fc2(act(fc1(layer_norm2(X))))`; after layer `n - 2` a copy of `X` is the penultimate
//! hidden state; `final_layer_norm(X)` is the last hidden state, and `text_projection` of its
//! row at each item's end-of-text position (chosen on the host from the ids) the pooled
//! vector. The buffers are allocated once per forward ([`Workspace`]) and reused by every layer.

use super::{ClipTextModel, EncoderLayer, LayerNorm, SelfAttention};
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::{Activation, Affine, AttnShape, CpuOps, Lookup, Ops, Out};

/// One forward's outputs, in the types of the `O` that ran it.
pub struct ClipOutputs<O: Ops> {
    /// `[B, projection_dim]`
    pub text_embeds: O::F32,
    /// `[B, L, D]`: output of layer `n - 1` of `n` (`hidden_states[-2]`), before the final norm.
    pub penultimate: O::F32,
    /// `[B, L, D]`: output of the last layer after `final_layer_norm`.
    pub last_hidden_state: O::Act,
}

/// The outputs of a CPU forward.
pub type ClipTextOutput = ClipOutputs<CpuOps>;

/// The activations of one forward, which every layer overwrites.
struct Workspace<A> {
    /// `[B, L, D]`: a normed copy of the residual stream.
    normed: A,
    /// `[B, L, H, Dh]` each, `Dh` as the backend lays heads out.
    q: A,
    k: A,
    v: A,
    /// `[B, L, H, Dh]`: the attention's output.
    heads: A,
    /// `[B, L, I]`: the MLP's hidden layer.
    hidden: A,
}

impl<A> Workspace<A> {
    /// For `rows = B L` rows of width `d`, heads `head_width` wide in all, an MLP of `i`.
    fn new<O: Ops<Act = A>>(
        ops: &O,
        rows: usize,
        d: usize,
        head_width: usize,
        i: usize,
    ) -> Result<Self> {
        Ok(Workspace {
            normed: ops.acts(rows * d)?,
            q: ops.acts(rows * head_width)?,
            k: ops.acts(rows * head_width)?,
            v: ops.acts(rows * head_width)?,
            heads: ops.acts(rows * head_width)?,
            hidden: ops.acts(rows * i)?,
        })
    }
}

impl ClipTextModel {
    /// `ids [B, L]` (L at most `max_position_embeddings`) -> text features, see [`ClipOutputs`].
    pub fn forward(&self, ids: &[i64], batch: usize) -> Result<ClipTextOutput> {
        let ops = CpuOps {
            compute: self.text_projection.compute(),
        };
        self.run(&ops, ids, batch)
    }
}

impl<B: Backend> ClipTextModel<B> {
    /// `ids [B, L]` -> the outputs on `ops`; bad ids are errors.
    pub(crate) fn run<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        ids: &[i64],
        batch: usize,
    ) -> Result<ClipOutputs<O>> {
        let (cfg, tm) = (&self.cfg, &self.text_model);
        let (d, emb) = (cfg.hidden_size, &tm.embeddings);
        let len = cfg.check_ids(ids, batch, ops.table_rows(&emb.token_embedding, d))?;
        let rows = batch * len;
        let head_width = tm
            .layers
            .first()
            .map_or(d, |l| ops.out_width(&l.self_attn.q_proj));
        let mut ws = Workspace::new(ops, rows, d, head_width, cfg.intermediate_size)?;
        let mut x = ops.f32s(rows * d)?; // [B, L, D]
        let lookup = Lookup {
            tokens: &emb.token_embedding,
            positions: &emb.position_embedding,
            ids,
            len,
        };
        ops.embed(lookup, &mut x)?;
        let mut penultimate = ops.f32s(rows * d)?;
        let shape = AttnShape {
            batch,
            len,
            heads: cfg.num_attention_heads,
            causal: true,
        };
        for (i, layer) in tm.layers.iter().enumerate() {
            layer.forward(ops, &mut x, &mut ws, shape, self.activation)?;
            if i + 2 == tm.layers.len() {
                ops.copy(&x, &mut penultimate)?;
            }
        }
        let mut last_hidden_state = ops.acts(rows * d)?;
        tm.final_layer_norm
            .forward(ops, &x, &mut last_hidden_state)?;
        let eos: Vec<usize> = ids
            .chunks_exact(len)
            .enumerate()
            .map(|(b, row)| b * len + cfg.eos_position(row))
            .collect();
        let mut pooled = ops.acts(batch * d)?; // [B, D]
        ops.gather_rows(&last_hidden_state, &eos, &mut pooled)?;
        let mut text_embeds = ops.f32s(batch * cfg.projection_dim)?;
        ops.linear(&self.text_projection, &pooled, Out::F32(&mut text_embeds))?;
        Ok(ClipOutputs {
            text_embeds,
            penultimate,
            last_hidden_state,
        })
    }
}

impl<B: Backend> EncoderLayer<B> {
    /// `x [B, L, D]` in place: `x += self_attn(layer_norm1(x))`, then
    /// `x += fc2(act(fc1(layer_norm2(x))))`.
    fn forward<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        x: &mut O::F32,
        ws: &mut Workspace<O::Act>,
        shape: AttnShape,
        act: Activation,
    ) -> Result<()> {
        self.layer_norm1.forward(ops, x, &mut ws.normed)?;
        self.self_attn.heads(ops, ws, shape)?;
        ops.linear(&self.self_attn.out_proj, &ws.heads, Out::Residual(x))?;
        self.layer_norm2.forward(ops, x, &mut ws.normed)?;
        let hidden = Out::Activated(&mut ws.hidden, act); // [B, L, I]
        ops.linear(&self.mlp.fc1, &ws.normed, hidden)?;
        ops.linear(&self.mlp.fc2, &ws.hidden, Out::Residual(x))
    }
}

impl<B: Backend> SelfAttention<B> {
    /// `ws.normed [B, L, D]` -> `ws.heads [B, L, H, Dh]`: the attention of its q, k and v
    /// projections.
    fn heads<O: Ops<Backend = B>>(
        &self,
        ops: &O,
        ws: &mut Workspace<O::Act>,
        shape: AttnShape,
    ) -> Result<()> {
        ops.linear(&self.q_proj, &ws.normed, Out::Act(&mut ws.q))?;
        ops.linear(&self.k_proj, &ws.normed, Out::Act(&mut ws.k))?;
        ops.linear(&self.v_proj, &ws.normed, Out::Act(&mut ws.v))?;
        ops.attention((&ws.q, &ws.k, &ws.v), shape, &mut ws.heads)
    }
}

impl<B: Backend> LayerNorm<B> {
    /// `x [M, D]` -> `out [M, D]`.
    fn forward<O: Ops<Backend = B>>(&self, ops: &O, x: &O::F32, out: &mut O::Act) -> Result<()> {
        let norm = Affine {
            weight: &self.weight,
            bias: &self.bias,
            eps: self.eps,
        };
        ops.layer_norm(x, self.width, Some(norm), out)
    }
}
