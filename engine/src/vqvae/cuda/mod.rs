//! The VQ-VAE on the CUDA kernels, in two halves that load separately (captioning needs only
//! the encoder, text-to-image only the decoder) or together from one opening of the weights
//! ([`load_vqvae`]): `encoder.rs` ([`CudaVqEncoder`]), `decoder.rs` ([`CudaVqDecoder`]), both
//! on the blocks' forwards of `blocks.rs`.

mod blocks;
mod decoder;
mod encoder;

use std::path::Path;
use std::sync::Arc;

pub use decoder::CudaVqDecoder;
pub use encoder::CudaVqEncoder;

use crate::cuda::Device;
use crate::error::Result;
use crate::model_dir::{build_from, open_config};
use crate::vqvae::VqConfig;
use crate::weights::{Vb, Weights};
use crate::Compute;

/// Loads both halves of `vqvae/` of a model folder (or that folder) onto `dev` from one
/// opening of its weights: every tensor must be used by one or the other.
pub fn load_vqvae(dev: &Arc<Device>, dir: &Path) -> Result<(CudaVqEncoder, CudaVqDecoder)> {
    let (dir, cfg) = open_config(dir, "vqvae", VqConfig::from_file)?;
    let halves = |vb: &Vb| {
        Ok((
            CudaVqEncoder::new(dev, &cfg, vb)?,
            CudaVqDecoder::new(dev, &cfg, vb)?,
        ))
    };
    build_from(&dir, Compute::F32, halves, Weights::ensure_all_used)
}

/// Loads one half of `vqvae/` of a model folder (or that folder) onto `dev` with `new`: the
/// config checks of [`crate::vqvae::load_vqvae`]; every tensor but those under the other half's
/// prefixes (`other_half`) must be used.
fn load_half<T>(
    dev: &Arc<Device>,
    dir: &Path,
    new: fn(&Arc<Device>, &VqConfig, &Vb) -> Result<T>,
    other_half: &[&str],
) -> Result<T> {
    let (dir, cfg) = open_config(dir, "vqvae", VqConfig::from_file)?;
    let check = |w: &Weights| w.ensure_all_used_but(other_half);
    build_from(&dir, Compute::F32, |vb| new(dev, &cfg, vb), check)
}
