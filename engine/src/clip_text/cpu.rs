//! The CLIP text encoder's forward on the CPU kernels; the layers are [`ClipTextModel`]'s with
//! [`Cpu`] weights.

use super::{
    token_row_place, Activation, ClipMlp, ClipTextModel, ClipTextOutput, EncoderLayer, LayerNorm,
    SelfAttention,
};
use crate::backend::Cpu;
use crate::error::Result;
use crate::nn::attention;
use muddit_kernels::cpu::{act, norm};

impl LayerNorm<Cpu> {
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

impl SelfAttention<Cpu> {
    /// `[B, L, D] -> [B, L, D]`, causal, scale `1/sqrt(Dh)`.
    fn forward(&self, x: &[f32], batch: usize, len: usize, heads: usize) -> Vec<f32> {
        let (q, k, v) = (
            self.q_proj.forward(x),
            self.k_proj.forward(x),
            self.v_proj.forward(x),
        ); // [B, L, H, Dh] each
        let compute = self.q_proj.compute();
        let out = attention((&q, &k, &v), (batch, len, heads), true, compute);
        self.out_proj.forward(&out)
    }
}

impl ClipMlp<Cpu> {
    /// `[B, L, D] -> [B, L, D]` through `[B, L, I]`.
    fn forward(&self, x: &[f32], activation: Activation) -> Vec<f32> {
        let ClipMlp { fc1, fc2 } = self;
        let mut h = fc1.forward(x); // [B, L, I]
        match activation {
            Activation::GeluErf => act::gelu_erf_(&mut h),
            Activation::QuickGelu => act::quick_gelu_(&mut h),
            Activation::GeluTanh => act::gelu_tanh_(&mut h),
        }
        fc2.forward(&h)
    }
}

impl EncoderLayer<Cpu> {
    /// `x [B, L, D]` updated in place.
    fn forward(&self, x: &mut [f32], batch: usize, len: usize, heads: usize, act: Activation) {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(x), batch, len, heads);
        x.iter_mut().zip(&attn).for_each(|(v, a)| *v += a);
        let mlp = self.mlp.forward(&self.layer_norm2.forward(x), act);
        x.iter_mut().zip(&mlp).for_each(|(v, m)| *v += m);
    }
}

impl ClipTextModel {
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
