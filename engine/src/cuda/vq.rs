//! The VQ-VAE decoder on the CUDA kernels: the same checkpoint names and the same forward as
//! the decoding half of [`crate::vqvae::VqModel`] (reference section 4), weights uploaded once.
//!
//! Storage on the device: convolution weights bf16 `[O, (k, k, C)]` (patch-major, the layout of
//! `conv2d_bf16`), biases and norm weights f32, feature maps bf16 `[B, h, w, C]`. The implicit
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
//! The blocks (`DConv`, `DGroupNorm`, `DResnet`, `DMidBlock`), the rotating buffers
//! (`Scratch`) and their forwards (`VqOps`) are shared with the encoder (`vq_encoder.rs`).
//!
//! Not supported on the device (a clear error at load): `norm_type: "spatial"` and the `relu`
//! and `mish` activations, which no public Muddit checkpoint uses.

use std::path::Path;
use std::sync::Arc;

use muddit_kernels::cpu::conv::patch_major_weight;
use muddit_kernels::cuda::ops::{group_norm_workspace, GemmOut};
use muddit_kernels::cuda::params::Act;

use super::device::{to_bf16, Buffer, Device, Ptr};
use super::mmdit::{DLinear, Heads};
use super::ops::{GemmOpts, Mat};
use crate::error::{Error, Result};
use crate::nn::Linear;
use crate::vqvae::{vqvae_dir, Activation, VqConfig};
use crate::weights::{Vb, Weights};

/// Channels padded for the implicit GEMM (16-byte chunks of bf16).
pub(super) fn pad8(c: usize) -> usize {
    c.next_multiple_of(8)
}

/// `nn.Conv2d` with bias: bf16 `[O', (k, k, C')]` with `C' >= C`, `O' >= O` zero-padded.
pub(super) struct DConv {
    lin: DLinear,
    ksize: usize,
    c_in: usize,
}

impl DConv {
    /// A `ksize x ksize` convolution `c_in -> c_out`, stored for `c_in_pad` input and
    /// `c_out_pad` output channels.
    pub(super) fn new(
        dev: &Device,
        vb: &Vb,
        (c_in, c_in_pad): (usize, usize),
        (c_out, c_out_pad): (usize, usize),
        ksize: usize,
    ) -> Result<Self> {
        let w = vb.get("weight", &[c_out, c_in, ksize, ksize])?;
        let w = patch_major_weight(&w, c_out, c_in, ksize); // [O, (k, k, C)]
        let bias = vb.get("bias", &[c_out])?;
        let taps = ksize * ksize;
        let k = taps * c_in_pad;
        let mut wp = vec![0.0; c_out_pad * k]; // [O', (k, k, C')]
        for o in 0..c_out {
            for t in 0..taps {
                let src = &w[(o * taps + t) * c_in..(o * taps + t + 1) * c_in];
                wp[o * k + t * c_in_pad..][..c_in].copy_from_slice(src);
            }
        }
        let mut bp = vec![0.0; c_out_pad];
        bp[..c_out].copy_from_slice(&bias);
        Ok(DConv {
            lin: DLinear::new(dev, &wp, Some(&bp), c_out_pad, k)?,
            ksize,
            c_in: c_in_pad,
        })
    }

    /// 3x3, stride 1, padding 1, channels already multiples of 8.
    pub(super) fn same3(dev: &Device, vb: &Vb, c_in: usize, c_out: usize) -> Result<Self> {
        Self::new(dev, vb, (c_in, c_in), (c_out, c_out), 3)
    }

    pub(super) fn pointwise(dev: &Device, vb: &Vb, c_in: usize, c_out: usize) -> Result<Self> {
        Self::new(dev, vb, (c_in, c_in), (c_out, c_out), 1)
    }

    pub(super) fn c_out(&self) -> usize {
        self.lin.mat().n
    }

    /// The weight `[O', (k, k, C')]` and bias as one GEMM reads them.
    pub(super) fn mat(&self) -> Mat {
        self.lin.mat()
    }
}

/// `nn.GroupNorm(groups, C, eps=1e-6)`: f32 weight and bias `[C]`.
pub(super) struct DGroupNorm {
    weight: Buffer<f32>,
    bias: Buffer<f32>,
}

impl DGroupNorm {
    pub(super) fn new(dev: &Device, vb: &Vb, c: usize) -> Result<Self> {
        Ok(DGroupNorm {
            weight: dev.upload(&vb.get("weight", &[c])?)?,
            bias: dev.upload(&vb.get("bias", &[c])?)?,
        })
    }
}

/// `ResnetBlock2D` without time embedding.
pub(super) struct DResnet {
    norm1: DGroupNorm,
    conv1: DConv,
    norm2: DGroupNorm,
    conv2: DConv,
    conv_shortcut: Option<DConv>,
}

impl DResnet {
    pub(super) fn new(dev: &Device, vb: &Vb, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(DResnet {
            norm1: DGroupNorm::new(dev, &vb.pp("norm1"), c_in)?,
            conv1: DConv::same3(dev, &vb.pp("conv1"), c_in, c_out)?,
            norm2: DGroupNorm::new(dev, &vb.pp("norm2"), c_out)?,
            conv2: DConv::same3(dev, &vb.pp("conv2"), c_out, c_out)?,
            conv_shortcut: (c_in != c_out)
                .then(|| DConv::pointwise(dev, &vb.pp("conv_shortcut"), c_in, c_out))
                .transpose()?,
        })
    }
}

/// The mid block's single-head attention over pixels (one head of width C, padded to `Dp`).
pub(super) struct DAttention {
    group_norm: DGroupNorm,
    to_q: DLinear,
    to_k: DLinear,
    to_v: DLinear,
    to_out: DLinear,
    heads: Heads,
}

impl DAttention {
    fn new(dev: &Device, vb: &Vb, c: usize) -> Result<Self> {
        let heads = Heads::new(1, c, "block_out_channels (mid-block attention)")?;
        let lin = |name: &str| Linear::new(&vb.pp(name), c, c, true);
        Ok(DAttention {
            group_norm: DGroupNorm::new(dev, &vb.pp("group_norm"), c)?,
            to_q: heads.pad_out(dev, &lin("to_q")?)?,
            to_k: heads.pad_out(dev, &lin("to_k")?)?,
            to_v: heads.pad_out(dev, &lin("to_v")?)?,
            to_out: heads.pad_in(dev, &lin("to_out.0")?)?,
            heads,
        })
    }
}

/// `UNetMidBlock2D`: ResNet, (attention), ResNet.
pub(super) struct DMidBlock {
    resnets: Vec<DResnet>,
    attentions: Vec<DAttention>,
}

impl DMidBlock {
    /// The mid block at `c` channels, with its attention when `attention`.
    pub(super) fn new(dev: &Device, vb: &Vb, c: usize, attention: bool) -> Result<Self> {
        Ok(DMidBlock {
            resnets: (0..2)
                .map(|i| DResnet::new(dev, &vb.pp("resnets").pp(i), c, c))
                .collect::<Result<_>>()?,
            attentions: if attention {
                vec![DAttention::new(dev, &vb.pp("attentions.0"), c)?]
            } else {
                Vec::new()
            },
        })
    }

    /// Elements of each of the attention's q, k, v, o buffers for `pixels` pixels (0 without
    /// attention).
    pub(super) fn attention_elements(&self, pixels: usize) -> usize {
        self.attentions
            .first()
            .map_or(0, |a| pixels * a.heads.width())
    }
}

/// `UpDecoderBlock2D`: ResNets, then (but on the last level) nearest 2x + 3x3 conv.
struct DUpBlock {
    resnets: Vec<DResnet>,
    upsampler: Option<DConv>,
}

/// `decoder`.
struct DDecoder {
    conv_in: DConv,
    mid_block: DMidBlock,
    up_blocks: Vec<DUpBlock>,
    conv_norm_out: DGroupNorm,
    conv_out: DConv,
}

/// A feature map `[B, h, w, c]` in one of the rotating buffers.
#[derive(Clone, Copy)]
pub(super) struct Map {
    pub(super) at: Ptr<u16>,
    pub(super) batch: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c: usize,
}

impl Map {
    pub(super) fn pixels(&self) -> usize {
        self.batch * self.h * self.w
    }

    /// The same geometry with `c` channels in buffer `at`.
    pub(super) fn into(self, at: Ptr<u16>, c: usize) -> Map {
        Map { at, c, ..self }
    }
}

/// The buffers of one encode or decode: four feature-map buffers (each op writes one that none
/// of its inputs occupies), the attention's q, k, v, o `[B, h w, 1, Dp]` and the GroupNorm
/// statistics.
pub(super) struct Scratch {
    maps: [Buffer<u16>; 4],
    qkvo: Option<[Buffer<u16>; 4]>,
    stats: Buffer<f64>,
}

impl Scratch {
    /// Four maps of `cap` elements, attention buffers of `attention` elements (none if 0) and
    /// `stats` f64 of GroupNorm workspace.
    pub(super) fn new(dev: &Device, cap: usize, attention: usize, stats: usize) -> Result<Self> {
        let map = || dev.zeros::<u16>(cap);
        let qkvo = || dev.zeros::<u16>(attention);
        Ok(Scratch {
            maps: [map()?, map()?, map()?, map()?],
            qkvo: match attention {
                0 => None,
                _ => Some([qkvo()?, qkvo()?, qkvo()?, qkvo()?]),
            },
            stats: dev.zeros(stats)?,
        })
    }

    /// A feature-map buffer that none of `busy` occupies.
    pub(super) fn other(&self, busy: &[Map]) -> Result<Ptr<u16>> {
        self.maps
            .iter()
            .map(|b| b.ptr())
            .find(|p| busy.iter().all(|m| m.at.addr != p.addr))
            .ok_or_else(|| Error::input("vqvae", "no free feature-map buffer"))
    }

    /// The buffer holding `m`.
    pub(super) fn buffer_of(&self, m: Map) -> Result<&Buffer<u16>> {
        self.maps
            .iter()
            .find(|b| b.ptr().addr == m.at.addr)
            .ok_or_else(|| Error::input("vqvae", "feature map outside its buffers"))
    }
}

/// The activation of the ResNet blocks on the device (`silu`, fused into the GroupNorm, or
/// `gelu`), or a clear error naming `act_fn`.
pub(super) fn device_act(cfg: &VqConfig, what: &str) -> Result<Act> {
    let bad = |message: String| Error::Config {
        path: "vqvae/config.json".into(),
        message,
    };
    if let Some(c) = cfg.block_out_channels.iter().find(|c| *c % 8 != 0) {
        return Err(bad(format!(
            "block channels {c}: the CUDA {what} needs multiples of 8"
        )));
    }
    match cfg.activation().map_err(bad)? {
        Activation::Silu => Ok(Act::Silu),
        Activation::Gelu => Ok(Act::GeluErf),
        other => Err(bad(format!(
            "`act_fn` {other:?} is not supported by the CUDA {what} (silu, gelu)"
        ))),
    }
}

/// The blocks' forwards on one device, shared by the encoder and the decoder: the model's
/// activation and GroupNorm groups.
#[derive(Clone, Copy)]
pub(super) struct VqOps<'a> {
    pub(super) dev: &'a Device,
    pub(super) act: Act,
    pub(super) groups: usize,
}

impl VqOps<'_> {
    /// `ResnetBlock2D`: `x [B, h, w, C_in]` -> `[B, h, w, C_out]`.
    pub(super) fn resnet(&self, r: &DResnet, x: Map, sc: &Scratch) -> Result<Map> {
        let t = x.into(sc.other(&[x])?, x.c);
        self.group_norm(&r.norm1, x, t, Some(self.act), sc)?;
        let u = self.conv3(&r.conv1, t, sc.other(&[x, t])?, None)?;
        self.group_norm(&r.norm2, u, u, Some(self.act), sc)?;
        let skip = match &r.conv_shortcut {
            Some(conv) => self.pointwise(conv, x, sc.other(&[x, t, u])?, None)?,
            None => x,
        };
        // t is free again: conv2 reads u and the skip.
        self.conv3(&r.conv2, u, t.at, Some(skip.at))
    }

    /// `UNetMidBlock2D`: `x [B, h, w, C]` -> `[B, h, w, C]`.
    pub(super) fn mid_block(&self, mid: &DMidBlock, x: Map, sc: &Scratch) -> Result<Map> {
        let x = self.resnet(&mid.resnets[0], x, sc)?;
        for attn in &mid.attentions {
            self.attention(attn, x, sc)?;
        }
        self.resnet(&mid.resnets[1], x, sc)
    }

    /// The mid block's attention, `x [B, h, w, C]` updated in place (residual in the epilogue).
    fn attention(&self, a: &DAttention, x: Map, sc: &Scratch) -> Result<()> {
        let dev = self.dev;
        let t = x.into(sc.other(&[x])?, x.c);
        self.group_norm(&a.group_norm, x, t, None, sc)?;
        let Some([q, k, v, o]) = &sc.qkvo else {
            return Err(Error::input("vqvae", "attention buffers missing"));
        };
        let (rows, plain) = (x.pixels(), GemmOpts::default());
        for (lin, buf) in [(&a.to_q, q), (&a.to_k, k), (&a.to_v, v)] {
            dev.gemm(GemmOut::Bf16, lin.mat(), t.at, rows, buf.ptr(), plain)?; // [B, P, 1, Dp]
        }
        let (hd, shape) = (a.heads.width(), (x.batch, x.h * x.w, 1));
        let qkv = (q.ptr(), k.ptr(), v.ptr());
        dev.attention(qkv, o.ptr(), hd, shape, a.heads.dh, a.heads.dp)?;
        let residual = GemmOpts {
            res: Some(x.at),
            ..GemmOpts::default()
        };
        dev.gemm(GemmOut::Bf16, a.to_out.mat(), o.ptr(), rows, x.at, residual)
    }

    /// GroupNorm of `x` into `out` (may be `x`), then `act` (SiLU fused).
    pub(super) fn group_norm(
        &self,
        n: &DGroupNorm,
        x: Map,
        out: Map,
        act: Option<Act>,
        sc: &Scratch,
    ) -> Result<()> {
        let silu = act == Some(Act::Silu);
        let geom = (x.batch, x.h * x.w, x.c);
        let affine = (n.weight.ptr(), n.bias.ptr());
        let stats = sc.stats.ptr();
        self.dev
            .group_norm(x.at, out.at, affine, stats, geom, self.groups, silu)?;
        match act {
            Some(a) if !silu => self.dev.act(a, out.at, out.at, x.pixels() * x.c),
            _ => Ok(()),
        }
    }

    /// A 3x3 (same) convolution of `x` into `out`, `+ res` when given.
    pub(super) fn conv3(
        &self,
        conv: &DConv,
        x: Map,
        out: Ptr<u16>,
        res: Option<Ptr<u16>>,
    ) -> Result<Map> {
        debug_assert_eq!(x.c, conv.c_in);
        let geom = (x.h, x.w, x.c);
        self.dev
            .conv2d_same(conv.mat(), x.at, x.batch, geom, conv.ksize, res, out)?;
        Ok(x.into(out, conv.c_out()))
    }

    /// A 1x1 convolution (a GEMM over pixels) of `x` into `out`.
    pub(super) fn pointwise(
        &self,
        conv: &DConv,
        x: Map,
        out: Ptr<u16>,
        res: Option<Ptr<u16>>,
    ) -> Result<Map> {
        let opts = GemmOpts {
            res,
            ..GemmOpts::default()
        };
        self.dev
            .gemm(GemmOut::Bf16, conv.mat(), x.at, x.pixels(), out, opts)?;
        Ok(x.into(out, conv.c_out()))
    }
}

/// The decoding half of `VQModel` on a CUDA device (or its emulator).
pub struct CudaVqDecoder {
    pub cfg: VqConfig,
    dev: Arc<Device>,
    /// `silu` (fused into the GroupNorm) or `gelu`.
    act: Act,
    /// `quantize.embedding.weight` `[V, E']` bf16, `E' = pad8(E)`.
    codebook: Buffer<u16>,
    /// `[lat', E']`
    post_quant_conv: DConv,
    decoder: DDecoder,
}

impl CudaVqDecoder {
    /// Loads the decoder of `vqvae/` of a model folder (or that folder) onto `dev`: the config
    /// checks of [`crate::vqvae::load_vqvae`]; every tensor but the encoder's (which
    /// [`super::CudaVqEncoder`] reads) must be used.
    pub fn load(dev: &Arc<Device>, dir: &Path) -> Result<Self> {
        let dir = vqvae_dir(dir)?;
        let cfg = VqConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_dir(&dir)?;
        let model = Self::new(dev, &cfg, &Vb::new(&weights))?;
        weights.ensure_all_used_but(&super::vq_encoder::ENCODER_TENSORS)?;
        Ok(model)
    }

    /// Builds the decoder from the tensors [`crate::vqvae::VqModel::new`] reads for it.
    pub fn new(dev: &Arc<Device>, cfg: &VqConfig, vb: &Vb) -> Result<Self> {
        let act = device_act(cfg, "decoder")?;
        if cfg.norm_type != "group" {
            return Err(Error::Config {
                path: "vqvae/config.json".into(),
                message: format!(
                    "`norm_type` {:?} is not supported by the CUDA decoder (\"group\")",
                    cfg.norm_type
                ),
            });
        }
        let (e, lat, v) = (cfg.embed_dim(), cfg.latent_channels, cfg.num_vq_embeddings);
        let (ep, latp) = (pad8(e), pad8(lat));
        let codebook = vb.pp("quantize.embedding").get("weight", &[v, e])?;
        let mut table = vec![0.0; v * ep]; // [V, E']
        for (dst, src) in table.chunks_exact_mut(ep).zip(codebook.chunks_exact(e)) {
            dst[..e].copy_from_slice(src);
        }
        let dev_ref: &Device = dev;
        Ok(CudaVqDecoder {
            codebook: dev.upload(&to_bf16(&table))?,
            post_quant_conv: DConv::new(
                dev_ref,
                &vb.pp("post_quant_conv"),
                (e, ep),
                (lat, latp),
                1,
            )?,
            decoder: DDecoder::new(dev_ref, &vb.pp("decoder"), cfg)?,
            act,
            cfg: cfg.clone(),
            dev: dev.clone(),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    fn ops(&self) -> VqOps<'_> {
        VqOps {
            dev: &self.dev,
            act: self.act,
            groups: self.cfg.norm_num_groups,
        }
    }

    /// ids `[B, h, w]` -> image `[B, out_channels, h * f, w * f]`, not clipped (as
    /// [`crate::vqvae::VqModel::decode`]); bad ids are errors.
    pub fn decode(&self, ids: &[i64], batch: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        self.cfg.check_ids(ids, batch, h, w)?;
        let dev = &self.dev;
        let ids32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let ids = dev.upload(&ids32)?;
        let f = self.cfg.scale_factor();
        let px = batch * h * w;
        let sc = Scratch::new(
            dev,
            self.peak_elements(px),
            self.decoder.mid_block.attention_elements(px),
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
        dev.embedding(ids.ptr(), self.codebook.ptr(), v, q.at, q.pixels(), q.c)?;
        let ops = self.ops();
        let z = ops.pointwise(&self.post_quant_conv, q, sc.other(&[q])?, None)?; // [B, h, w, lat']
        let x = self.decoder_forward(z, &sc)?; // [B, H, W, out_channels]
        let out = dev.read(sc.buffer_of(x)?, 0, x.pixels() * x.c)?;
        Ok(to_nchw(&out, x))
    }

    /// The decoder on `z [B, h, w, lat']`: `[B, H, W, out_channels]`.
    fn decoder_forward(&self, z: Map, sc: &Scratch) -> Result<Map> {
        let (d, ops) = (&self.decoder, self.ops());
        let mut x = ops.conv3(&d.conv_in, z, sc.other(&[z])?, None)?;
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
                self.dev.upsample2x(x.at, up.at, x.batch, (x.h, x.w, x.c))?;
                x = ops.conv3(conv, up, sc.other(&[up])?, None)?;
            }
        }
        // `conv_act` is always SiLU, whatever `act_fn` says.
        let t = x.into(sc.other(&[x])?, x.c);
        ops.group_norm(&d.conv_norm_out, x, t, Some(Act::Silu), sc)?;
        ops.conv3(&d.conv_out, t, sc.other(&[t])?, None)
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

impl DDecoder {
    fn new(dev: &Device, vb: &Vb, cfg: &VqConfig) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                let vb = vb.pp("up_blocks").pp(i);
                Ok(DUpBlock {
                    resnets: (0..cfg.layers_per_block + 1)
                        .map(|j| {
                            let c = if j == 0 { c_in } else { c_out };
                            DResnet::new(dev, &vb.pp("resnets").pp(j), c, c_out)
                        })
                        .collect::<Result<_>>()?,
                    upsampler: (i + 1 < rev.len())
                        .then(|| DConv::same3(dev, &vb.pp("upsamplers.0.conv"), c_out, c_out))
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        let (first, last) = (cfg.block_out_channels[0], rev[0]);
        let lat = cfg.latent_channels;
        let mid = vb.pp("mid_block");
        Ok(DDecoder {
            conv_in: DConv::new(dev, &vb.pp("conv_in"), (lat, pad8(lat)), (last, last), 3)?,
            mid_block: DMidBlock::new(dev, &mid, last, cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: DGroupNorm::new(dev, &vb.pp("conv_norm_out"), first)?,
            conv_out: DConv::new(
                dev,
                &vb.pp("conv_out"),
                (first, first),
                (cfg.out_channels, cfg.out_channels),
                3,
            )?,
        })
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
