//! The VQ-VAE on the CUDA kernels, in two halves that load separately (captioning needs only
//! the encoder, text-to-image only the decoder) or together from one opening of the weights
//! ([`load_vqvae`]): `encoder.rs` ([`CudaVqEncoder`]), `decoder.rs` ([`CudaVqDecoder`]), thin
//! wrappers that hold the device and the weights and run the one forward (`vqvae/forward.rs`)
//! with [`Cuda`]'s feature-map operations (`ops.rs`).
//!
//! Storage on the device (`cuda::backend`): convolution weights bf16 `[O, (k, k, C)]`
//! (patch-major, the layout of `conv2d_bf16`), biases and norm weights f32, feature maps bf16
//! `[B, h, w, C]`. The implicit GEMM reads 16-byte chunks of one pixel, so input channels must
//! be multiples of 8: the image's channels, the codebook width `E` and the latent channels are
//! stored zero-padded to the next multiple of 8 (zero codebook columns, zero weight rows and
//! columns, zero biases: the padding stays zero through `post_quant_conv` and adds nothing in
//! `conv_in`); block channels must be multiples of 8.
//!
//! Not supported on the device (a clear error at load): `norm_type: "spatial"` and the `relu`
//! and `mish` activations, which no public Muddit checkpoint uses.

mod decoder;
mod encoder;
mod ops;

use std::path::Path;
use std::sync::Arc;

pub use decoder::CudaVqDecoder;
pub use encoder::CudaVqEncoder;

use crate::cuda::backend::Heads;
use crate::cuda::{Cuda, Device};
use crate::error::{Error, Result};
use crate::model_dir::{build_from, open_config};
use crate::vqvae::{Activation, VqConfig};
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

/// The operations of a VQ half on `dev` and its activation (`what`: "encoder" or "decoder",
/// for the errors of a config the device cannot run): block channels multiples of 8, the
/// activation SiLU (fused into the GroupNorm) or GELU, the mid block's attention one head of
/// the last block's width (in a kernel slot of 64 or 128).
fn device_ops(dev: &Arc<Device>, cfg: &VqConfig, what: &str) -> Result<(Cuda, Activation)> {
    let bad = |message: String| Error::Config {
        path: "vqvae/config.json".into(),
        message,
    };
    if let Some(c) = cfg.block_out_channels.iter().find(|c| *c % 8 != 0) {
        return Err(bad(format!(
            "block channels {c}: the CUDA {what} needs multiples of 8"
        )));
    }
    let act = match cfg.activation().map_err(bad)? {
        act @ (Activation::Silu | Activation::Gelu) => act,
        other => {
            return Err(bad(format!(
                "`act_fn` {other:?} is not supported by the CUDA {what} (silu, gelu)"
            )))
        }
    };
    let last = *cfg.block_out_channels.last().unwrap_or(&0);
    let heads = cfg
        .mid_block_add_attention
        .then(|| Heads::new(1, last, "block_out_channels (mid-block attention)"))
        .transpose()?;
    Ok((Cuda::new(dev, heads), act))
}
