//! The VQ-VAE encoder and quantizer on the CUDA kernels: the layers of [`EncoderHalf`] with
//! `Cuda` weights (loaded once, as the CPU's), run by the one forward (`vqvae/forward.rs`).
//! The image goes up as bf16 `[B, H, W, C']` (`C' = pad8(in_channels)`, `conv_in`'s weight
//! columns for the padding zero); `quant_conv` writes f32 latents `z [B, h, w, E]`, and
//! `vq_nearest` picks the exact squared distance to each f32 codebook row in f64, lowest id on
//! ties (the CPU's rule). The ids stay on the device for the transformer
//! ([`CudaVqEncoder::encode_on_device`]).
//!
//! The feature maps are bf16 and every convolution rounds its output, so the latents differ
//! from the CPU's f32 ones by about 1% (relative L2); an id differs only where two codebook
//! entries are that close to a latent (see `tests/src/cuda_pipeline_checks.rs`).

use std::path::Path;
use std::sync::Arc;

use crate::cuda::{Buffer, Cuda, Device};
use crate::error::Result;
use crate::vqvae::forward::Image;
use crate::vqvae::ops::{MapOps, MapShape};
use crate::vqvae::{read_codebook, Activation, EncoderHalf, FeatureMap, VqConfig, DECODER_TENSORS};
use crate::weights::Vb;

/// The encoding half of `VQModel` on a CUDA device (or its emulator): image to ids.
pub struct CudaVqEncoder {
    pub cfg: VqConfig,
    /// The device and the attention heads: the forward's operations.
    ops: Cuda,
    activation: Activation,
    /// `encoder` (`conv_in` reading `C' = pad8(in_channels)`, `conv_out` writing `lat'`) and
    /// `quant_conv` `[E, lat']`.
    half: EncoderHalf<Cuda>,
    /// The codebook `[V, E]` f32: the search reads the CPU's exact values.
    codebook: Buffer<f32>,
}

impl CudaVqEncoder {
    /// Loads the encoder of `vqvae/` of a model folder (or that folder) onto `dev`: the config
    /// checks of [`crate::vqvae::load_vqvae`]; every tensor but the decoder's must be used.
    pub fn load(dev: &Arc<Device>, dir: &Path) -> Result<Self> {
        super::load_half(dev, dir, Self::new, &DECODER_TENSORS)
    }

    /// Builds the encoder and quantizer from the tensors [`crate::vqvae::VqModel::new`] reads
    /// for them.
    pub fn new(dev: &Arc<Device>, cfg: &VqConfig, vb: &Vb) -> Result<Self> {
        let codebook = read_codebook(vb, cfg)?;
        let (ops, activation) = super::device_ops(dev, cfg, "encoder")?;
        Ok(CudaVqEncoder {
            half: EncoderHalf::load(&ops, vb, cfg)?,
            codebook: dev.upload(&codebook)?,
            ops,
            activation,
            cfg: cfg.clone(),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.ops.dev
    }

    /// `image [B, in_channels, H, W]` in `[0, 1]` -> ids `[B, H / f, W / f]`, as
    /// [`crate::vqvae::VqModel::encode`].
    pub fn encode(
        &self,
        image: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Vec<i64>> {
        let ids = self.encode_on_device(image, batch, height, width)?;
        let ids = self.ops.dev.read(&ids, 0, ids.len())?;
        Ok(ids.into_iter().map(i64::from).collect())
    }

    /// [`CudaVqEncoder::encode`] with the ids `[B, h, w]` left on the device.
    pub fn encode_on_device(
        &self,
        image: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Buffer<u32>> {
        let (z, _) = self.latents(image, batch, height, width)?;
        let e = self.cfg.embed_dim();
        self.ops.nearest_codes(&z, &self.codebook, e)
    }

    /// `image [B, in_channels, H, W]` in `[0, 1]` -> the latents after `quant_conv`,
    /// `[B, h, w, E]` channel-last, as [`crate::vqvae::VqModel::encode_latents`].
    pub fn encode_latents(
        &self,
        image: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<FeatureMap> {
        let (z, s) = self.latents(image, batch, height, width)?;
        Ok(FeatureMap {
            data: self.ops.dev.read(&z, 0, z.len())?,
            batch: s.batch,
            h: s.h,
            w: s.w,
            c: s.c,
        })
    }

    /// The encoder and `quant_conv` on the device: f32 latents `[B, h, w, E]`.
    fn latents(
        &self,
        pixels: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<(Buffer<f32>, MapShape)> {
        let image = Image {
            pixels,
            batch,
            height,
            width,
        };
        (self.half).latents(&self.ops, &self.cfg, self.activation, image)
    }
}
