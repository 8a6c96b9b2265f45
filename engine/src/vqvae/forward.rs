//! The VQ-VAE's forwards (reference section 4), written once over [`MapOps`]: the CPU runs
//! them with [`crate::ops::CpuOps`] (`cpu.rs`), the device with `crate::cuda::Cuda`
//! (`cuda/`).
//!
//! Encoding an image `[B, C, H, W]`: `conv_in` -> down blocks (ResNets, then but on the last
//! level a stride-2 3x3 conv) -> mid block (ResNet, single-head attention over the pixels when
//! `mid_block_add_attention`, ResNet) -> `conv_norm_out` + SiLU -> `conv_out` -> `quant_conv`
//! to f32 latents `[B, h, w, E]` -> the nearest codebook ids. Decoding ids `[B, h, w]`:
//! codebook rows -> `post_quant_conv` -> `conv_in` -> mid block -> up blocks (ResNets, then but
//! on the last level nearest 2x + 3x3 conv) -> `conv_norm_out` + SiLU -> `conv_out`. A ResNet
//! is norm + act -> conv3x3 -> norm + act -> conv3x3 plus the shortcut (identity or 1x1), a
//! GroupNorm with SiLU fused into the convolution after it ([`MapOps::norm_silu_conv`]).
//! Each map is freed as soon as it is used up.

use super::ops::{MapOps, MapShape};
use super::{
    Activation, AttnBlock, Decoder, DecoderHalf, Encoder, EncoderHalf, MidBlock, Norm,
    ResnetBlock2D, SpatialNorm, VqConfig,
};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::{AttnShape, LinearOf, Out};

/// What the blocks need besides their input: the model's activation and, in a spatial decoder,
/// the codebook rows `zq [B, h, w, latent_channels]`.
struct Ctx<'a, M> {
    act: Activation,
    zq: Option<&'a M>,
}

impl<M> Clone for Ctx<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Ctx<'_, M> {}

/// An image on the host, `[batch, C, height, width]`.
pub(crate) struct Image<'a> {
    pub pixels: &'a [f32],
    pub batch: usize,
    pub height: usize,
    pub width: usize,
}

impl<B: Backend> SpatialNorm<B> {
    /// In place on `x [B, H, W, C]` given `zq [B, h, w, Z]` (H, W multiples of h, w). The 1x1
    /// convs run at zq's size: they commute with nearest upsampling.
    fn forward_<O: MapOps<Backend = B>>(&self, ops: &O, x: &mut O::Map, zq: &O::Map) -> Result<()> {
        ops.group_norm_(&self.norm_layer, x, None)?;
        let y = ops.conv2d(&self.conv_y, zq, None)?; // [B, h, w, C]
        let b = ops.conv2d(&self.conv_b, zq, None)?;
        ops.modulate_nearest_(x, &y, &b)
    }
}

impl<B: Backend> Norm<B> {
    /// In place on `x [B, H, W, C]`, then `act`.
    fn forward_<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        x: &mut O::Map,
        zq: Option<&O::Map>,
        act: Option<Activation>,
    ) -> Result<()> {
        match (self, zq) {
            (Norm::Group(g), _) => ops.group_norm_(g, x, act),
            (Norm::Spatial(s), Some(zq)) => {
                s.forward_(ops, x, zq)?;
                act.map_or(Ok(()), |act| ops.activate_(x, act))
            }
            (Norm::Spatial(_), None) => Err(Error::input(
                "vqvae",
                "a spatial norm outside the decoder, which alone has the codebook rows",
            )),
        }
    }

    /// `conv(act(norm(x))) (+ residual)`: a group norm with SiLU fused into the convolution
    /// (which may write the sum over the residual), any other norm or activation on a copy of
    /// `x`.
    fn conv<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        conv: &B::Conv,
        x: &O::Map,
        ctx: Ctx<O::Map>,
        residual: Option<O::Map>,
    ) -> Result<O::Map> {
        match (self, ctx.act) {
            (Norm::Group(g), Activation::Silu) => ops.norm_silu_conv(g, conv, x, residual),
            _ => {
                let mut h = ops.copy_map(x)?;
                self.forward_(ops, &mut h, ctx.zq, Some(ctx.act))?;
                ops.conv2d(conv, &h, residual.as_ref())
            }
        }
    }
}

impl<B: Backend> ResnetBlock2D<B> {
    /// `[B, H, W, C_in] -> [B, H, W, C_out]`; the input is freed once the shortcut has read
    /// it, the shortcut added in `conv2` (in place where the backend can).
    fn forward<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        x: O::Map,
        ctx: Ctx<O::Map>,
    ) -> Result<O::Map> {
        let h = self.norm1.conv(ops, &self.conv1, &x, ctx, None)?; // [B, H, W, C_out]
        let skip = match &self.conv_shortcut {
            Some(conv) => ops.conv2d(conv, &x, None)?,
            None => x,
        };
        self.norm2.conv(ops, &self.conv2, &h, ctx, Some(skip))
    }
}

impl<B: Backend> AttnBlock<B> {
    /// `x [B, H, W, C]` updated in place: one head of width C over the H W pixels, the output
    /// projection added to `x`.
    fn forward_<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        x: &mut O::Map,
        zq: Option<&O::Map>,
    ) -> Result<()> {
        let s = ops.shape(x);
        let mut h = ops.copy_map(x)?;
        if let (Some(norm), Some(zq)) = (&self.spatial_norm, zq) {
            norm.forward_(ops, &mut h, zq)?;
        }
        if let Some(norm) = &self.group_norm {
            ops.group_norm_(norm, &mut h, None)?;
        }
        let project = |lin: &LinearOf<O>| -> Result<O::Act> {
            let mut y = ops.acts(s.pixels() * ops.out_width(lin))?; // [B, HW, 1, C]
            ops.linear(lin, ops.rows(&h), Out::Act(&mut y))?;
            Ok(y)
        };
        let (q, k, v) = (
            project(&self.to_q)?,
            project(&self.to_k)?,
            project(&self.to_v)?,
        );
        let mut a = ops.acts(s.pixels() * ops.out_width(&self.to_q))?;
        let shape = AttnShape {
            batch: s.batch,
            len: s.h * s.w,
            heads: 1,
            causal: false,
        };
        ops.attention((&q, &k, &v), shape, &mut a)?;
        ops.linear_residual(&self.to_out, &a, x)
    }
}

impl<B: Backend> MidBlock<B> {
    /// `[B, H, W, C] -> [B, H, W, C]`
    fn forward<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        x: O::Map,
        ctx: Ctx<O::Map>,
    ) -> Result<O::Map> {
        let mut x = self.resnets[0].forward(ops, x, ctx)?;
        for attn in &self.attentions {
            attn.forward_(ops, &mut x, ctx.zq)?;
        }
        self.resnets[1].forward(ops, x, ctx)
    }
}

impl<B: Backend> Encoder<B> {
    /// `[B, H, W, in] -> [B, H / f, W / f, latent_channels]`
    fn forward<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        x: &O::Map,
        act: Activation,
    ) -> Result<O::Map> {
        let ctx = Ctx { act, zq: None };
        let mut x = ops.conv2d(&self.conv_in, x, None)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(ops, x, ctx)?;
            }
            if let Some(down) = &block.downsampler {
                x = ops.conv2d(down, &x, None)?; // [B, H / 2, W / 2, C]
            }
        }
        let mut x = self.mid_block.forward(ops, x, ctx)?;
        // `conv_act` is always SiLU, whatever `act_fn` says.
        ops.group_norm_(&self.conv_norm_out, &mut x, Some(Activation::Silu))?;
        ops.conv2d(&self.conv_out, &x, None)
    }
}

impl<B: Backend> Decoder<B> {
    /// `z [B, h, w, latent_channels] -> [B, h f, w f, out_channels]`; `quant [B, h, w, E]`
    /// (the codebook rows) conditions a spatial decoder's norms.
    fn forward<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        z: &O::Map,
        quant: &O::Map,
        act: Activation,
    ) -> Result<O::Map> {
        let spatial = matches!(self.conv_norm_out, Norm::Spatial(_));
        let ctx = Ctx {
            act,
            zq: spatial.then_some(quant),
        };
        let x = ops.conv2d(&self.conv_in, z, None)?;
        let mut x = self.mid_block.forward(ops, x, ctx)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                crate::cancel::check()?;
                x = resnet.forward(ops, x, ctx)?;
            }
            if let Some(conv) = &block.upsampler {
                x = ops.conv_upsampled_2x(conv, &x)?; // [B, 2H, 2W, C]
            }
        }
        // `conv_act` is always SiLU, whatever `act_fn` says.
        self.conv_norm_out
            .forward_(ops, &mut x, ctx.zq, Some(Activation::Silu))?;
        ops.conv2d(&self.conv_out, &x, None)
    }
}

impl<B: Backend> EncoderHalf<B> {
    /// `image [B, in_channels, H, W]` in `[0, 1]` (checked here) -> the latents after
    /// `quant_conv`, f32 `[B, h, w, E]`, and their geometry.
    pub(crate) fn latents<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        cfg: &VqConfig,
        act: Activation,
        image: Image,
    ) -> Result<(O::F32, MapShape)> {
        let Image {
            pixels,
            batch,
            height,
            width,
        } = image;
        let (h, w) = cfg.check_image(pixels, batch, height, width)?;
        let shape = MapShape {
            batch,
            h: height,
            w: width,
            c: cfg.in_channels,
        };
        let x = ops.upload_image(pixels, shape)?; // [B, H, W, C]
        let y = self.encoder.forward(ops, &x, act)?; // [B, h, w, latent_channels]
        let z = ops.pointwise_f32(&self.quant_conv, &y)?; // [B, h, w, E]
        let c = cfg.embed_dim();
        Ok((z, MapShape { batch, h, w, c }))
    }
}

impl<B: Backend> DecoderHalf<B> {
    /// ids `[B, h, w]` (checked here) -> `[B, h f, w f, out_channels]`, the rows read from
    /// `codebook` (`num_vq_embeddings` rows as `ops` stores them).
    pub(crate) fn forward<O: MapOps<Backend = B>>(
        &self,
        ops: &O,
        cfg: &VqConfig,
        act: Activation,
        codebook: &B::Table,
        (ids, grid): (&[i64], (usize, usize, usize)),
    ) -> Result<O::Map> {
        let (batch, h, w) = grid;
        cfg.check_ids(ids, batch, h, w)?;
        let q = ops.code_rows(codebook, cfg.num_vq_embeddings, ids, grid)?; // [B, h, w, E]
        let z = ops.conv2d(&self.post_quant_conv, &q, None)?; // [B, h, w, latent_channels]
        self.decoder.forward(ops, &z, &q, act)
    }
}
