//! The VQ-VAE on the CPU kernels: [`VqModel`]'s layers with [`crate::backend::Cpu`] weights,
//! run by the one forward (`forward.rs`) with [`CpuOps`] (`ops.rs`); images and ids cross in
//! host layouts.

use super::forward::Image;
use super::ops::MapOps;
use super::{FeatureMap, VqModel};
use crate::error::Result;
use crate::ops::CpuOps;
use crate::Compute;

impl VqModel {
    /// The operations of this model: the mid-block attention's products in the arithmetic of
    /// its weights.
    fn ops(&self) -> CpuOps {
        let attention = self.encode.encoder.mid_block.attentions.first();
        CpuOps {
            compute: attention.map_or(Compute::F32, |a| a.to_q.compute()),
        }
    }

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
        let image = Image {
            pixels: image,
            batch,
            height,
            width,
        };
        let (z, s) = self
            .encode
            .latents(&self.ops(), &self.cfg, self.activation, image)?;
        Ok(FeatureMap {
            data: z,
            batch: s.batch,
            h: s.h,
            w: s.w,
            c: s.c,
        })
    }

    /// Nearest codebook entry (L2) of each latent `[N, E]` -> ids `[N]`. Ties go to the lowest
    /// id, as `torch.argmin`: candidates ranked by an f32 GEMM, re-scored in f64.
    pub fn nearest_codes(&self, z: &[f32]) -> Vec<i64> {
        self.codebook.nearest(z, self.cfg.embed_dim())
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
        self.ops()
            .nearest_codes(&z.data, &self.codebook, self.cfg.embed_dim())
    }

    /// ids `[B, h, w]` -> image `[B, out_channels, h * f, w * f]`, not clipped.
    pub fn decode(&self, ids: &[i64], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let ops = self.ops();
        let rows = &self.codebook.rows;
        let x =
            (self.decode).forward(&ops, &self.cfg, self.activation, rows, (ids, (batch, h, w)))?;
        ops.download_image(&x)
    }
}
