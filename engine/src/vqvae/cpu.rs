//! The VQ-VAE's forwards on the CPU kernels; the layers are [`VqModel`]'s with [`Cpu`] weights
//! (convolutions: [`crate::nn::Conv2d`]).

use super::{
    Activation, AttnBlock, Decoder, Encoder, FeatureMap, GroupNorm, MidBlock, Norm, ResnetBlock2D,
    SpatialNorm, VqModel, EPS,
};
use crate::backend::Cpu;
use crate::error::Result;
use crate::nn::attention;
use crate::nn::Conv2d;
use muddit_kernels::cpu::group_norm::{channel_affine, group_norm_};
use muddit_kernels::cpu::winograd::Prologue;
use muddit_kernels::cpu::{act, matmul::linear};

/// What the blocks need besides their input: the model's activation and, in a spatial decoder,
/// the codebook rows `zq [B, h, w, latent_channels]`.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    act: Activation,
    zq: Option<&'a FeatureMap>,
}

impl GroupNorm<Cpu> {
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

impl SpatialNorm<Cpu> {
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

impl Norm<Cpu> {
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

impl ResnetBlock2D<Cpu> {
    /// `[B, H, W, C_in] -> [B, H, W, C_out]`. Each map is freed as soon as it is used up (the
    /// input after the shortcut, `conv1`'s output after `conv2`), and a group norm with SiLU is
    /// folded into the convolution after it, so the normed maps are never written.
    fn forward(&self, x: FeatureMap, ctx: Ctx) -> FeatureMap {
        let h = normed_conv(&self.norm1, &self.conv1, &x, ctx);
        let skip = self.skip(x);
        let mut out = normed_conv(&self.norm2, &self.conv2, &h, ctx);
        drop(h);
        out.data.iter_mut().zip(&skip).for_each(|(v, s)| *v += s);
        out
    }

    /// The residual branch: `x`, or `conv_shortcut(x)` when the width changes.
    fn skip(&self, x: FeatureMap) -> Vec<f32> {
        match &self.conv_shortcut {
            Some(conv) => conv.forward(&x).data,
            None => x.data,
        }
    }
}

/// `conv(act(norm(x)))`: a group norm followed by SiLU as the convolution's prologue, any
/// other norm or activation on a copy of `x`.
fn normed_conv(norm: &Norm<Cpu>, conv: &Conv2d, x: &FeatureMap, ctx: Ctx) -> FeatureMap {
    match (norm, ctx.act) {
        (Norm::Group(g), Activation::Silu) => {
            let (scale, shift) =
                channel_affine(&x.data, x.batch, g.groups, &g.weight, &g.bias, EPS);
            let silu = true;
            conv.forward_mapped(
                x,
                Prologue {
                    scale: &scale,
                    shift: &shift,
                    silu,
                },
            )
        }
        _ => {
            let mut h = FeatureMap {
                data: x.data.clone(),
                ..*x
            };
            norm.forward_(&mut h, ctx.zq, Some(ctx.act));
            conv.forward(&h)
        }
    }
}

impl AttnBlock<Cpu> {
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
        let compute = self.to_q.compute();
        let a = attention((&q, &k, &v), (x.batch, x.h * x.w, 1), false, compute);
        let out = self.to_out.forward(&a);
        x.data.iter_mut().zip(&out).for_each(|(v, o)| *v += o);
    }
}

impl MidBlock<Cpu> {
    /// `[B, H, W, C] -> [B, H, W, C]`
    fn forward(&self, x: FeatureMap, ctx: Ctx) -> FeatureMap {
        let mut x = self.resnets[0].forward(x, ctx);
        for attn in &self.attentions {
            attn.forward_(&mut x, ctx.zq);
        }
        self.resnets[1].forward(x, ctx)
    }
}

impl Encoder<Cpu> {
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

impl Decoder<Cpu> {
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
    /// The id grid of an image size, or an error naming the size.
    pub fn grid(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        self.cfg.grid(height, width)
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
        self.cfg.check_image(image, batch, height, width)?;
        let x = FeatureMap {
            data: to_nhwc(image, batch, c, height * width),
            batch,
            h: height,
            w: width,
            c,
        };
        let z = self.encode.encoder.forward(&x, self.activation);
        Ok(self.encode.quant_conv.forward(&z))
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
        let z = self.decode.post_quant_conv.forward(&q);
        let x = self.decode.decoder.forward(&z, &q, self.activation);
        Ok(to_nchw(&x.data, batch, x.c, x.h * x.w))
    }
}
