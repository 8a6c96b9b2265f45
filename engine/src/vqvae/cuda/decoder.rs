//! The VQ-VAE decoder on the CUDA kernels: the layers of [`DecoderHalf`] with `Cuda` weights
//! (loaded once, as the CPU's), run by the one forward (`vqvae/forward.rs`). Only ids go up;
//! the pixels come down once, as `[B, H, W, out_channels]` bf16.

use std::path::Path;
use std::sync::Arc;

use crate::cuda::backend::pad8;
use crate::cuda::{Buffer, Cuda, Device};
use crate::error::{Error, Result};
use crate::vqvae::ops::MapOps;
use crate::vqvae::{read_codebook, Activation, DecoderHalf, VqConfig, ENCODER_TENSORS};
use crate::weights::Vb;
use muddit_kernels::cuda::to_bf16;

/// The decoding half of `VQModel` on a CUDA device (or its emulator).
pub struct CudaVqDecoder {
    pub cfg: VqConfig,
    /// The device and the attention heads: the forward's operations.
    ops: Cuda,
    activation: Activation,
    /// The codebook `[V, E']` bf16, `E' = pad8(E)`.
    codebook: Buffer<u16>,
    /// `post_quant_conv` `[lat', E']` and `decoder`.
    half: DecoderHalf<Cuda>,
}

impl CudaVqDecoder {
    /// Loads the decoder of `vqvae/` of a model folder (or that folder) onto `dev`: the config
    /// checks of [`crate::vqvae::load_vqvae`]; every tensor but the encoder's (which
    /// [`super::CudaVqEncoder`] reads) must be used.
    pub fn load(dev: &Arc<Device>, dir: &Path) -> Result<Self> {
        super::load_half(dev, dir, Self::new, &ENCODER_TENSORS)
    }

    /// Builds the decoder from the tensors [`crate::vqvae::VqModel::new`] reads for it.
    pub fn new(dev: &Arc<Device>, cfg: &VqConfig, vb: &Vb) -> Result<Self> {
        if cfg.norm_type != "group" {
            return Err(Error::Config {
                path: "vqvae/config.json".into(),
                message: format!(
                    "`norm_type` {:?} is not supported by the CUDA decoder (\"group\")",
                    cfg.norm_type
                ),
            });
        }
        let e = cfg.embed_dim();
        let ep = pad8(e);
        let codebook = read_codebook(vb, cfg)?;
        let mut table = vec![0.0; cfg.num_vq_embeddings * ep]; // [V, E']
        for (dst, src) in table.chunks_exact_mut(ep).zip(codebook.chunks_exact(e)) {
            dst[..e].copy_from_slice(src);
        }
        let (ops, activation) = super::device_ops(dev, cfg, "decoder")?;
        Ok(CudaVqDecoder {
            codebook: dev.upload(&to_bf16(&table))?,
            half: DecoderHalf::load(&ops, vb, cfg)?,
            ops,
            activation,
            cfg: cfg.clone(),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.ops.dev
    }

    /// ids `[B, h, w]` -> image `[B, out_channels, h * f, w * f]`, not clipped (as
    /// [`crate::vqvae::VqModel::decode`]); bad ids are errors.
    pub fn decode(&self, ids: &[i64], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let (ops, cb) = (&self.ops, &self.codebook);
        let x = (self.half).forward(ops, &self.cfg, self.activation, cb, (ids, (batch, h, w)))?;
        ops.download_image(&x)
    }
}
