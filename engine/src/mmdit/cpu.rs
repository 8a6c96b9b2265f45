//! The MM-DiT forward on the CPU kernels (`muddit_kernels::cpu`), f32 activations allocated per
//! call; the layers are [`Mmdit`]'s with [`Cpu`] weights.

use super::{
    check_input, rope_tables, DualBlock, FeedForward, Mlp, Mmdit, MmditInput, MmditOutput,
    Modulation, Qkv, RmsNorm, SingleBlock, DUAL_ATTN, DUAL_MLP, MICRO_CONDS, SINGLE, SIN_DIM,
};
use crate::backend::Cpu;
use crate::error::Result;
use crate::nn::{attention, sinusoidal_embedding, NORM_EPS};
use muddit_kernels::cpu::{act, norm, rope};
use rayon::prelude::*;

impl RmsNorm<Cpu> {
    /// In place over rows of `x [M, D]`.
    fn forward_(&self, x: &mut [f32]) {
        norm::rms_norm_(x, &self.weight, NORM_EPS);
    }
}

impl Mlp<Cpu> {
    /// `[M, in] -> [M, dim]`
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut h = self.linear_1.forward(x);
        act::silu_(&mut h);
        self.linear_2.forward(&h)
    }
}

impl Qkv<Cpu> {
    /// `[M, D] -> (q, k, v)`, each `[M, H, Dh]`, q and k normalised per head.
    fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut q, mut k) = (self.q.forward(x), self.k.forward(x));
        self.norm_q.forward_(&mut q);
        self.norm_k.forward_(&mut k);
        (q, k, self.v.forward(x))
    }
}

impl FeedForward<Cpu> {
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

/// `LayerNorm(x) * (1 + scale) + shift` for `x [B, S, D]`, each batch item's `shift` and `scale`
/// `[D]` taken from its row of `mods [B, chunks * D]` as `m` names them.
fn modulate(x: &[f32], mods: &[f32], m: Modulation, d: usize, batch: usize) -> Vec<f32> {
    let per_item = x.len() / batch;
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        let row = &mods[b * m.chunks * d..(b + 1) * m.chunks * d];
        let chunk = |c: usize| &row[c * d..(c + 1) * d];
        let range = b * per_item..(b + 1) * per_item;
        norm::layer_norm_modulate(
            &x[range.clone()],
            chunk(m.shift),
            chunk(m.scale),
            NORM_EPS,
            &mut out[range],
        );
    }
    out
}

/// `x += gate * y` for `x, y [B, S, D]`, each batch item's `gate [D]` from its row of `mods`.
fn gated_add_(x: &mut [f32], y: &[f32], mods: &[f32], m: Modulation, d: usize, batch: usize) {
    let per_item = x.len() / batch;
    for b in 0..batch {
        let at = (b * m.chunks + m.gate) * d;
        let gate = &mods[at..at + d];
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
        let compute = self.project_to_hidden.compute();
        attention((&q, &k, &v), (g.batch, g.seq(), h), false, compute)
    }
}

impl DualBlock<Cpu> {
    /// `image [B, N, D]`, `text [B, L, D]` updated in place; `temb_silu [B, D]`.
    fn forward(
        &self,
        model: &Mmdit,
        image: &mut [f32],
        text: &mut [f32],
        temb_silu: &[f32],
        g: &Geometry,
    ) {
        let (d, b) = (model.cfg.inner_dim(), g.batch);
        let mods = self.norm1.forward(temb_silu); // [B, 6D]
        let mods_c = self.norm1_context.forward(temb_silu); // [B, 6D]
        let (qi, ki, vi) = self
            .attn_image
            .forward(&modulate(image, &mods, DUAL_ATTN, d, b));
        let (qt, kt, vt) = self
            .attn_text
            .forward(&modulate(text, &mods_c, DUAL_ATTN, d, b));
        let joint = |t: &[f32], i: &[f32]| concat_seq(t, i, b);
        let attn = model.attend(joint(&qt, &qi), joint(&kt, &ki), joint(&vt, &vi), g);
        let (attn_text, attn_image) = split_seq(&attn, g.text * d, b);

        let out = self.to_out.forward(&attn_image);
        gated_add_(image, &out, &mods, DUAL_ATTN, d, b);
        let mlp = self.ff.forward(&modulate(image, &mods, DUAL_MLP, d, b));
        gated_add_(image, &mlp, &mods, DUAL_MLP, d, b);
        let out = self.to_add_out.forward(&attn_text);
        gated_add_(text, &out, &mods_c, DUAL_ATTN, d, b);
        let mlp = self
            .ff_context
            .forward(&modulate(text, &mods_c, DUAL_MLP, d, b));
        gated_add_(text, &mlp, &mods_c, DUAL_MLP, d, b);
    }
}

impl SingleBlock<Cpu> {
    /// `x [B, L + N, D]` updated in place; `temb_silu [B, D]`.
    fn forward(&self, model: &Mmdit, x: &mut [f32], temb_silu: &[f32], g: &Geometry) {
        let d = model.cfg.inner_dim();
        let mods = self.norm.forward(temb_silu); // [B, 3D]
        let y = modulate(x, &mods, SINGLE, d, g.batch);
        let mlp = self.proj_mlp.forward_gelu(&y); // [B, S, 4D]
        let (q, k, v) = self.attn.forward(&y);
        let attn = model.attend(q, k, v, g); // [B, S, D]
                                             // proj_out of [attn; mlp] ([B, S, 5D]), read side by side.
        let out = self.proj_out.forward_concat(&attn, d, &mlp);
        gated_add_(x, &out, &mods, SINGLE, d, g.batch);
    }
}

impl super::Downsample<Cpu> {
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

impl super::Upsample<Cpu> {
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
        let (cos, sin) = rope_tables(&self.cfg, x.text_len, rows, cols);
        let g = Geometry {
            batch: x.batch,
            text: x.text_len,
            rows,
            cols,
            cos,
            sin,
        };

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
}
