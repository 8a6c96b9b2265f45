//! The VQ-VAE blocks' forwards on the CUDA kernels, shared by the encoder (`encoder.rs`) and
//! the decoder (`decoder.rs`): ResNets (GroupNorm + act -> conv3x3, twice, the shortcut added
//! in the second conv's epilogue; SiLU fused into the GroupNorm kernel, GELU a separate pass),
//! the mid block's single-head attention over pixels, and the four rotating feature-map
//! buffers (`Scratch`) they write into. The layers are `crate::vqvae`'s with `Cuda` weights.

use muddit_kernels::cuda::gemm::{Conv, GemmOpts, GemmOut};
use std::sync::Arc;

use muddit_kernels::cuda::common::Act;

use crate::cuda::backend::{DConv, Heads};
use crate::cuda::{Buffer, Cuda, Device, Ptr};
use crate::error::{Error, Result};
use crate::vqvae::{Activation, AttnBlock, GroupNorm, MidBlock, Norm, ResnetBlock2D, VqConfig};

/// The CUDA loader of a VQ half: the mid block's attention is one head of the last block's
/// width (in a kernel slot of 64 or 128).
fn loader(dev: &Arc<Device>, cfg: &VqConfig) -> Result<(Cuda, Option<Heads>)> {
    let last = *cfg.block_out_channels.last().unwrap_or(&0);
    let heads = cfg
        .mid_block_add_attention
        .then(|| Heads::new(1, last, "block_out_channels (mid-block attention)"))
        .transpose()?;
    Ok((Cuda::new(dev, heads), heads))
}

/// The group norm of a block (the CUDA halves refuse `norm_type: "spatial"` at load).
pub(super) fn group(n: &Norm<Cuda>) -> Result<&GroupNorm<Cuda>> {
    match n {
        Norm::Group(g) => Ok(g),
        Norm::Spatial(_) => Err(Error::input(
            "vqvae",
            "spatial norms are not supported on the CUDA device",
        )),
    }
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
fn device_act(cfg: &VqConfig, what: &str) -> Result<Act> {
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
/// activation and attention heads.
pub(super) struct VqOps {
    pub(super) dev: Arc<Device>,
    pub(super) act: Act,
    /// The mid block's attention heads, when it has attention.
    pub(super) heads: Option<Heads>,
}

impl VqOps {
    /// The forwards of a VQ half on `dev` (`what`: "encoder" or "decoder", for the errors of a
    /// config the device cannot run), and the loader of its layers.
    pub(super) fn new(dev: &Arc<Device>, cfg: &VqConfig, what: &str) -> Result<(Self, Cuda)> {
        let act = device_act(cfg, what)?;
        let (cuda, heads) = loader(dev, cfg)?;
        let ops = VqOps {
            dev: dev.clone(),
            act,
            heads,
        };
        Ok((ops, cuda))
    }

    /// Elements of each of the attention's q, k, v, o buffers for `pixels` pixels (0 without
    /// attention).
    pub(super) fn attention_elements(&self, pixels: usize) -> usize {
        self.heads.map_or(0, |h| pixels * h.width())
    }

    /// `ResnetBlock2D`: `x [B, h, w, C_in]` -> `[B, h, w, C_out]`.
    pub(super) fn resnet(&self, r: &ResnetBlock2D<Cuda>, x: Map, sc: &Scratch) -> Result<Map> {
        let t = x.into(sc.other(&[x])?, x.c);
        self.group_norm(group(&r.norm1)?, x, t, Some(self.act), sc)?;
        let u = self.conv(&r.conv1, t, sc.other(&[x, t])?, None)?;
        self.group_norm(group(&r.norm2)?, u, u, Some(self.act), sc)?;
        let skip = match &r.conv_shortcut {
            Some(conv) => self.conv(conv, x, sc.other(&[x, t, u])?, None)?,
            None => x,
        };
        // t is free again: conv2 reads u and the skip.
        self.conv(&r.conv2, u, t.at, Some(skip.at))
    }

    /// `UNetMidBlock2D`: `x [B, h, w, C]` -> `[B, h, w, C]`.
    pub(super) fn mid_block(&self, mid: &MidBlock<Cuda>, x: Map, sc: &Scratch) -> Result<Map> {
        let x = self.resnet(&mid.resnets[0], x, sc)?;
        for attn in &mid.attentions {
            self.attention(attn, x, sc)?;
        }
        self.resnet(&mid.resnets[1], x, sc)
    }

    /// The mid block's attention, `x [B, h, w, C]` updated in place (residual in the epilogue).
    fn attention(&self, a: &AttnBlock<Cuda>, x: Map, sc: &Scratch) -> Result<()> {
        let dev = &self.dev;
        let (Some(heads), Some(norm)) = (self.heads, &a.group_norm) else {
            return Err(Error::input(
                "vqvae",
                "mid-block attention without its heads or group norm",
            ));
        };
        let t = x.into(sc.other(&[x])?, x.c);
        self.group_norm(norm, x, t, None, sc)?;
        let Some([q, k, v, o]) = &sc.qkvo else {
            return Err(Error::input("vqvae", "attention buffers missing"));
        };
        let (rows, plain) = (x.pixels(), GemmOpts::default());
        for (lin, buf) in [(&a.to_q, q), (&a.to_k, k), (&a.to_v, v)] {
            dev.gemm(GemmOut::Bf16, lin.mat(), t.at, rows, buf.ptr(), plain)?; // [B, P, 1, Dp]
        }
        let (hd, shape) = (heads.width(), (x.batch, x.h * x.w, 1));
        let qkv = (q.ptr(), k.ptr(), v.ptr());
        dev.attention(qkv, (o.ptr(), hd), shape, (heads.dh, heads.dp), false)?;
        let residual = GemmOpts {
            res: Some(x.at),
            ..GemmOpts::default()
        };
        Ok(dev.gemm(GemmOut::Bf16, a.to_out.mat(), o.ptr(), rows, x.at, residual)?)
    }

    /// GroupNorm of `x` into `out` (may be `x`), then `act` (SiLU fused).
    pub(super) fn group_norm(
        &self,
        n: &GroupNorm<Cuda>,
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
            .group_norm(x.at, out.at, affine, stats, geom, n.groups, silu)?;
        match act {
            Some(a) if !silu => Ok(self.dev.act(a, out.at, out.at, x.pixels() * x.c)?),
            _ => Ok(()),
        }
    }

    /// A same-padded stride-1 convolution of `x` into `out`, `+ res` when given: a 1x1 one as
    /// a GEMM over pixels, a wider one (3x3) as the implicit-GEMM convolution.
    pub(super) fn conv(
        &self,
        conv: &DConv,
        x: Map,
        out: Ptr<u16>,
        res: Option<Ptr<u16>>,
    ) -> Result<Map> {
        if conv.ksize == 1 {
            let opts = GemmOpts {
                res,
                ..GemmOpts::default()
            };
            self.dev
                .gemm(GemmOut::Bf16, conv.mat(), x.at, x.pixels(), out, opts)?;
        } else {
            debug_assert_eq!(x.c, conv.c_in);
            let geom = (x.h, x.w, x.c);
            let same = Conv::same(conv.ksize);
            self.dev
                .conv2d(conv.mat(), x.at, x.batch, geom, same, res, out)?;
        }
        Ok(x.into(out, conv.c_out()))
    }
}
