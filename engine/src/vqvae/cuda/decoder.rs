//! The VQ-VAE decoder on the CUDA kernels: the layers of [`DecoderHalf`] with `Cuda` weights
//! (loaded once, as the CPU's), the same forward as the decoding half of `cpu.rs` (reference
//! section 4).
//!
//! Storage on the device (`cuda::backend`): convolution weights bf16 `[O, (k, k, C)]`
//! (patch-major, the layout of `conv2d_bf16`), biases and norm weights f32, feature maps bf16 `[B, h, w, C]`. The implicit
//! GEMM reads 16-byte chunks of one pixel, so input channels must be multiples of 8: the codebook
//! width `E` and the latent channels are stored zero-padded to the next multiple of 8 (zero
//! codebook columns, zero weight rows and columns, zero biases: the padding stays zero through
//! `post_quant_conv` and adds nothing in `conv_in`); block channels must be multiples of 8.
//!
//! One decode of ids `[B, h, w]`: codebook rows (`embedding`) -> `post_quant_conv` (a GEMM over
//! pixels) -> `conv_in` -> mid block (ResNet, single-head attention over the pixels when
//! `mid_block_add_attention`, ResNet) -> up blocks (ResNets, then nearest 2x + 3x3 conv but on
//! the last level) -> `conv_norm_out` + SiLU -> `conv_out`. A ResNet is GroupNorm + act ->
//! conv3x3 -> GroupNorm + act -> conv3x3 with the shortcut (identity or 1x1 GEMM) added in the
//! second conv's epilogue; SiLU is fused into the GroupNorm kernel, GELU a separate pass. Four
//! feature-map buffers of the largest map's size rotate through the forward. Only ids go up;
//! the pixels come down once, as `[B, H, W, out_channels]` bf16.
//!
//! The blocks' forwards and the rotating buffers are `blocks.rs`, shared with the encoder.
//!
//! Not supported on the device (a clear error at load): `norm_type: "spatial"` and the `relu`
//! and `mish` activations, which no public Muddit checkpoint uses.

use std::path::Path;
use std::sync::Arc;

use muddit_kernels::cuda::common::Act;
use muddit_kernels::cuda::vq::group_norm_workspace;

use super::blocks::{group, Map, Scratch, VqOps};
use crate::cuda::backend::pad8;
use crate::cuda::{Buffer, Cuda, Device};
use crate::error::{Error, Result};
use crate::vqvae::{read_codebook, DecoderHalf, VqConfig, ENCODER_TENSORS};
use crate::weights::Vb;
use muddit_kernels::cuda::to_bf16;

/// The decoding half of `VQModel` on a CUDA device (or its emulator).
pub struct CudaVqDecoder {
    pub cfg: VqConfig,
    /// The device, the activation and the attention heads.
    ops: VqOps,
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
        let (ops, backend) = VqOps::new(dev, cfg, "decoder")?;
        Ok(CudaVqDecoder {
            codebook: dev.upload(&to_bf16(&table))?,
            half: DecoderHalf::load(&backend, vb, cfg)?,
            ops,
            cfg: cfg.clone(),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.ops.dev
    }

    /// ids `[B, h, w]` -> image `[B, out_channels, h * f, w * f]`, not clipped (as
    /// [`crate::vqvae::VqModel::decode`]); bad ids are errors.
    pub fn decode(&self, ids: &[i64], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        self.cfg.check_ids(ids, batch, h, w)?;
        let dev = &self.ops.dev;
        let ids32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let ids = dev.upload(&ids32)?;
        let f = self.cfg.scale_factor();
        let px = batch * h * w;
        let sc = Scratch::new(
            dev,
            self.peak_elements(px),
            self.ops.attention_elements(px),
            group_norm_workspace(batch, h * f * w * f, self.cfg.norm_num_groups),
        )?;
        let q = Map {
            at: sc.other(&[])?,
            batch,
            h,
            w,
            c: pad8(self.cfg.embed_dim()),
        }; // [B, h, w, E']
        let v = self.cfg.num_vq_embeddings;
        dev.embedding(
            ids.ptr(),
            (self.codebook.ptr(), v),
            None,
            q.at,
            q.pixels(),
            q.c,
        )?;
        let ops = &self.ops;
        let z = ops.conv(&self.half.post_quant_conv, q, sc.other(&[q])?, None)?; // [B, h, w, lat']
        let x = self.decoder_forward(z, &sc)?; // [B, H, W, out_channels]
        let out = dev.read(sc.buffer_of(x)?, 0, x.pixels() * x.c)?;
        Ok(to_nchw(&out, x))
    }

    /// The decoder on `z [B, h, w, lat']`: `[B, H, W, out_channels]`.
    fn decoder_forward(&self, z: Map, sc: &Scratch) -> Result<Map> {
        let (d, ops) = (&self.half.decoder, &self.ops);
        let mut x = ops.conv(&d.conv_in, z, sc.other(&[z])?, None)?;
        x = ops.mid_block(&d.mid_block, x, sc)?;
        for block in &d.up_blocks {
            for r in &block.resnets {
                x = ops.resnet(r, x, sc)?;
            }
            if let Some(conv) = &block.upsampler {
                let up = Map {
                    h: 2 * x.h,
                    w: 2 * x.w,
                    ..x.into(sc.other(&[x])?, x.c)
                }; // [B, 2h, 2w, C]
                self.ops
                    .dev
                    .upsample2x(x.at, up.at, x.batch, (x.h, x.w, x.c))?;
                x = ops.conv(conv, up, sc.other(&[up])?, None)?;
            }
        }
        // `conv_act` is always SiLU, whatever `act_fn` says.
        let t = x.into(sc.other(&[x])?, x.c);
        ops.group_norm(group(&d.conv_norm_out)?, x, t, Some(Act::Silu), sc)?;
        ops.conv(&d.conv_out, t, sc.other(&[t])?, None)
    }

    /// Elements of the largest feature map of a decode of `px = B h w` ids (each of the four
    /// rotating buffers holds one).
    fn peak_elements(&self, px: usize) -> usize {
        let cfg = &self.cfg;
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let mut peak = px
            * pad8(cfg.embed_dim())
                .max(pad8(cfg.latent_channels))
                .max(rev[0]);
        for (i, &c_out) in rev.iter().enumerate() {
            let level = px << (2 * i);
            let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
            peak = peak.max(level * c_in.max(c_out));
            if i + 1 < rev.len() {
                peak = peak.max(4 * level * c_out);
            }
        }
        let full = px << (2 * (rev.len() - 1));
        peak.max(full * cfg.block_out_channels[0].max(cfg.out_channels))
    }
}

/// bf16 `[B, H, W, C]` -> f32 `[B, C, H, W]`.
fn to_nchw(x: &[u16], m: Map) -> Vec<f32> {
    let hw = m.h * m.w;
    let mut out = vec![0.0; x.len()];
    for b in 0..m.batch {
        for p in 0..hw {
            for c in 0..m.c {
                out[(b * m.c + c) * hw + p] =
                    half::bf16::from_bits(x[(b * hw + p) * m.c + c]).to_f32();
            }
        }
    }
    out
}
