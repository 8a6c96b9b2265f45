//! The VQ-VAE encoder and quantizer on the CUDA kernels: the layers of [`EncoderHalf`] with
//! `Cuda` weights (loaded once, as the CPU's), the same forward as the encoding half of
//! `cpu.rs` (reference section 4), on the blocks of `blocks.rs`.
//!
//! One encode of an image `[B, 3, H, W]` in `[0, 1]`: the host lays it out as bf16
//! `[B, H, W, C']` with the input channels zero-padded to `C' = pad8(in_channels)` (and
//! `conv_in`'s weight columns for them zero) -> `conv_in` -> down blocks (ResNets, then but on the
//! last level `Downsample2D`: a 3x3 stride-2 conv padded 0 above and left, 1 below and right) ->
//! mid block -> `conv_norm_out` + SiLU -> `conv_out` (to `lat' = pad8(latent_channels)`, zero
//! rows) -> `quant_conv`, a GEMM over pixels to f32 latents `z [B, h, w, E]` -> `vq_nearest`: the
//! exact squared distance to each f32 codebook row in f64, lowest id on ties (the CPU's rule).
//! The ids stay on the device for the transformer ([`CudaVqEncoder::encode_on_device`]).
//!
//! The feature maps are bf16 and every convolution rounds its output, so the latents differ
//! from the CPU's f32 ones by about 1% (relative L2); an id differs only where two codebook
//! entries are that close to a latent (see `tests/src/cuda_pipeline_checks.rs`).

use muddit_kernels::cuda::gemm::{Conv, GemmOpts, GemmOut};
use std::path::Path;
use std::sync::Arc;

use muddit_kernels::cuda::common::Act;
use muddit_kernels::cuda::vq::group_norm_workspace;

use super::blocks::{Map, Scratch, VqOps};
use crate::cuda::backend::pad8;
use crate::cuda::{Buffer, Cuda, Device};
use crate::error::Result;
use crate::vqvae::{read_codebook, EncoderHalf, FeatureMap, VqConfig, DECODER_TENSORS};
use crate::weights::Vb;
use muddit_kernels::cuda::to_bf16;

/// The encoding half of `VQModel` on a CUDA device (or its emulator): image to ids.
pub struct CudaVqEncoder {
    pub cfg: VqConfig,
    /// The device, the activation and the attention heads.
    ops: VqOps,
    /// `encoder` (`conv_in` reading `C' = pad8(in_channels)`, `conv_out` writing `lat'`) and
    /// `quant_conv` `[E, lat']`.
    half: EncoderHalf<Cuda>,
    /// The codebook `[V, E]` f32: the search reads the CPU's exact values.
    codebook: Buffer<f32>,
}

/// The device latents of one encode: f32 `[B, h, w, E]`.
struct Latents {
    z: Buffer<f32>,
    batch: usize,
    h: usize,
    w: usize,
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
        let (ops, backend) = VqOps::new(dev, cfg, "encoder")?;
        Ok(CudaVqEncoder {
            half: EncoderHalf::load(&backend, vb, cfg)?,
            codebook: dev.upload(&codebook)?,
            ops,
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
        let lat = self.latents(image, batch, height, width)?;
        let px = lat.batch * lat.h * lat.w;
        let ids = self.ops.dev.zeros::<u32>(px)?;
        let v = self.cfg.num_vq_embeddings;
        let cb = (self.codebook.ptr(), v);
        self.ops
            .dev
            .vq_nearest(lat.z.ptr(), cb, ids.ptr(), px, self.cfg.embed_dim())?;
        Ok(ids)
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
        let lat = self.latents(image, batch, height, width)?;
        Ok(FeatureMap {
            data: self.ops.dev.read(&lat.z, 0, lat.z.len())?,
            batch: lat.batch,
            h: lat.h,
            w: lat.w,
            c: self.cfg.embed_dim(),
        })
    }

    /// The encoder and `quant_conv` on the device: f32 latents `[B, h, w, E]`.
    fn latents(&self, image: &[f32], batch: usize, height: usize, width: usize) -> Result<Latents> {
        let c = self.cfg.in_channels;
        let (h, w) = self.cfg.check_image(image, batch, height, width)?;
        let dev = &self.ops.dev;
        let cp = pad8(c);
        let x = dev.upload(&to_bf16(&to_nhwc_padded(
            image,
            batch,
            c,
            cp,
            height * width,
        )))?;
        let x = Map {
            at: x.ptr(),
            batch,
            h: height,
            w: width,
            c: cp,
        }; // [B, H, W, C']
        let px = batch * height * width;
        let sc = Scratch::new(
            dev,
            self.peak_elements(px),
            self.ops.attention_elements(batch * h * w),
            group_norm_workspace(batch, height * width, self.cfg.norm_num_groups),
        )?;
        let y = self.encoder_forward(x, &sc)?; // [B, h, w, lat']
        let e = self.cfg.embed_dim();
        let z = dev.zeros::<f32>(y.pixels() * e)?; // [B, h, w, E]
        let plain = GemmOpts::default();
        dev.gemm(
            GemmOut::F32,
            self.half.quant_conv.mat(),
            y.at,
            y.pixels(),
            z.ptr(),
            plain,
        )?;
        Ok(Latents {
            z,
            batch,
            h: y.h,
            w: y.w,
        })
    }

    /// The encoder on `x [B, H, W, C']`: `[B, h, w, lat']`.
    fn encoder_forward(&self, x: Map, sc: &Scratch) -> Result<Map> {
        let (enc, ops) = (&self.half.encoder, &self.ops);
        let mut x = ops.conv(&enc.conv_in, x, sc.other(&[x])?, None)?; // [B, H, W, C0]
        for block in &enc.down_blocks {
            for r in &block.resnets {
                x = ops.resnet(r, x, sc)?;
            }
            if let Some(conv) = &block.downsampler {
                let out = sc.other(&[x])?;
                let geom = (x.h, x.w, x.c);
                let down = Conv::downsample(3);
                let (h, w) = ops
                    .dev
                    .conv2d(conv.mat(), x.at, x.batch, geom, down, None, out)?;
                x = Map {
                    h,
                    w,
                    ..x.into(out, conv.c_out())
                }; // [B, h / 2, w / 2, C]
            }
        }
        x = ops.mid_block(&enc.mid_block, x, sc)?;
        // `conv_act` is always SiLU, whatever `act_fn` says.
        let t = x.into(sc.other(&[x])?, x.c);
        ops.group_norm(&enc.conv_norm_out, x, t, Some(Act::Silu), sc)?;
        ops.conv(&enc.conv_out, t, sc.other(&[t])?, None)
    }

    /// Elements of the largest feature map of an encode of `px = B H W` pixels (each of the
    /// four rotating buffers holds one; the input has its own).
    fn peak_elements(&self, px: usize) -> usize {
        let ch = &self.cfg.block_out_channels;
        let mut peak = px * ch[0];
        for (i, &c_out) in ch.iter().enumerate() {
            let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
            peak = peak.max((px >> (2 * i)) * c_in.max(c_out));
        }
        let last = px >> (2 * (ch.len() - 1));
        peak.max(last * pad8(self.cfg.latent_channels))
    }
}

/// f32 `[B, C, H W]` -> `[B, H W, C']`, channels `C..C'` zero.
fn to_nhwc_padded(x: &[f32], batch: usize, c: usize, cp: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; batch * hw * cp];
    for b in 0..batch {
        for ci in 0..c {
            for p in 0..hw {
                out[(b * hw + p) * cp + ci] = x[(b * c + ci) * hw + p];
            }
        }
    }
    out
}
