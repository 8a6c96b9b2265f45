//! [`MapOps`] on the CUDA kernels: feature maps bf16 `[B, h, w, C']` in buffers of their own
//! (allocated per operation, freed when dropped), channels zero-padded to multiples of 8 where
//! the implicit-GEMM convolutions read them (`cuda::backend::DConv`). The fused paths: the
//! residual of a convolution or of `to_out` in the GEMM's epilogue, SiLU in the GroupNorm
//! kernel; GELU is a separate pass. A 1x1 convolution is a GEMM over pixels, any other the
//! implicit-GEMM convolution.

use muddit_kernels::cuda::common::Act;
use muddit_kernels::cuda::gemm::{GemmOpts, GemmOut};
use muddit_kernels::cuda::to_bf16;
use muddit_kernels::cuda::vq::group_norm_workspace;

use crate::cuda::backend::{pad8, DConv, DLinear};
use crate::cuda::ops::ids_u32;
use crate::cuda::{Buffer, Cuda, Ptr};
use crate::error::{Error, Result};
use crate::ops::Ops;
use crate::vqvae::ops::{to_nchw, to_nhwc, MapOps, MapShape};
use crate::vqvae::{Activation, GroupNorm};

/// A feature map on the device: bf16 `[B, h, w, C']` and its geometry.
pub struct DeviceMap {
    data: Buffer<u16>,
    shape: MapShape,
}

impl Cuda {
    /// A zero map of `shape`.
    fn map(&self, shape: MapShape) -> Result<DeviceMap> {
        Ok(DeviceMap {
            data: self.dev.zeros(shape.pixels() * shape.c)?,
            shape,
        })
    }

    /// `conv(x) (+ residual)` of `x`, into a new map.
    fn convolve(&self, conv: &DConv, x: &DeviceMap, res: Option<Ptr<u16>>) -> Result<DeviceMap> {
        let s = x.shape;
        let (h, w) = conv.geometry.out_hw(s.h, s.w);
        let out = self.map(MapShape {
            h,
            w,
            c: conv.c_out(),
            ..s
        })?;
        if conv.ksize == 1 {
            let opts = GemmOpts {
                res,
                ..GemmOpts::default()
            };
            let (a, y) = (x.data.ptr(), out.data.ptr());
            self.dev
                .gemm(GemmOut::Bf16, conv.mat(), a, s.pixels(), y, opts)?;
        } else {
            debug_assert_eq!(s.c, conv.c_in);
            let geom = (s.h, s.w, s.c);
            let (a, y) = (x.data.ptr(), out.data.ptr());
            self.dev
                .conv2d(conv.mat(), a, s.batch, geom, conv.geometry, res, y)?;
        }
        Ok(out)
    }
}

impl Cuda {
    /// GroupNorm of `x` into `out` (which may be `x`), SiLU fused when `silu`.
    fn group_norm_into(
        &self,
        norm: &GroupNorm<Cuda>,
        x: &DeviceMap,
        out: &DeviceMap,
        silu: bool,
    ) -> Result<()> {
        let s = x.shape;
        let work = group_norm_workspace(s.batch, s.h * s.w, norm.groups);
        let stats = self.dev.zeros::<f64>(work)?;
        let geom = (s.batch, s.h * s.w, s.c);
        let affine = (norm.weight.ptr(), norm.bias.ptr());
        let (a, y) = (x.data.ptr(), out.data.ptr());
        Ok(self
            .dev
            .group_norm(a, y, affine, stats.ptr(), geom, norm.groups, silu)?)
    }
}

/// The device's pass of `act`: SiLU and GELU; the loaders refuse the others.
fn device_act(act: Activation) -> Result<Act> {
    match act {
        Activation::Silu => Ok(Act::Silu),
        Activation::Gelu => Ok(Act::GeluErf),
        other => Err(Error::input(
            "act_fn",
            format!("{other:?} is not supported on the CUDA device (silu, gelu)"),
        )),
    }
}

impl MapOps for Cuda {
    type Map = DeviceMap;
    type Codebook = Buffer<f32>;
    type Codes = Buffer<u32>;

    fn shape(&self, x: &DeviceMap) -> MapShape {
        x.shape
    }

    fn rows<'a>(&self, x: &'a DeviceMap) -> &'a Buffer<u16> {
        &x.data
    }

    fn copy_map(&self, x: &DeviceMap) -> Result<DeviceMap> {
        let out = self.map(x.shape)?;
        self.dev.copy(x.data.ptr(), out.data.ptr(), x.data.len())?;
        Ok(out)
    }

    /// Channels padded to `pad8(C)` with zeros, uploaded as bf16.
    fn upload_image(&self, image: &[f32], s: MapShape) -> Result<DeviceMap> {
        let cp = pad8(s.c);
        let x = to_nhwc(image, s.batch, (s.c, cp), s.h * s.w);
        Ok(DeviceMap {
            data: self.dev.upload(&to_bf16(&x))?,
            shape: MapShape { c: cp, ..s },
        })
    }

    fn download_image(&self, x: &DeviceMap) -> Result<Vec<f32>> {
        let s = x.shape;
        let bits = self.dev.read(&x.data, 0, s.pixels() * s.c)?;
        let values: Vec<f32> = bits
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect();
        Ok(to_nchw(&values, s.batch, s.c, s.h * s.w))
    }

    /// Only the ids go up; the rows are the codebook's `E'` padded ones.
    fn code_rows(
        &self,
        codebook: &Buffer<u16>,
        entries: usize,
        ids: &[i64],
        (batch, h, w): (usize, usize, usize),
    ) -> Result<DeviceMap> {
        let c = codebook.len() / entries;
        let ids = self.dev.upload(&ids_u32(ids))?;
        let mut out = self.map(MapShape { batch, h, w, c })?; // [B, h, w, E']
        self.gather(codebook, &ids, &mut out.data)?;
        Ok(out)
    }

    /// The residual added in the epilogue.
    fn conv2d(
        &self,
        conv: &DConv,
        x: &DeviceMap,
        residual: Option<&DeviceMap>,
    ) -> Result<DeviceMap> {
        self.convolve(conv, x, residual.map(|r| r.data.ptr()))
    }

    /// The `group_norm` launch (SiLU fused) into a map of its own, then the convolution.
    fn norm_silu_conv(
        &self,
        norm: &GroupNorm<Cuda>,
        conv: &DConv,
        x: &DeviceMap,
        residual: Option<DeviceMap>,
    ) -> Result<DeviceMap> {
        let t = self.map(x.shape)?;
        self.group_norm_into(norm, x, &t, true)?;
        self.conv2d(conv, &t, residual.as_ref())
    }

    /// `upsample2x` into a map of its own, then the convolution.
    fn conv_upsampled_2x(&self, conv: &DConv, x: &DeviceMap) -> Result<DeviceMap> {
        let s = x.shape;
        let up = self.map(MapShape {
            h: 2 * s.h,
            w: 2 * s.w,
            ..s
        })?; // [B, 2h, 2w, C]
        let (a, y) = (x.data.ptr(), up.data.ptr());
        self.dev.upsample2x(a, y, s.batch, (s.h, s.w, s.c))?;
        self.conv2d(conv, &up, None)
    }

    /// SiLU fused into the norm's kernel, GELU a pass after it.
    fn group_norm_(
        &self,
        norm: &GroupNorm<Cuda>,
        x: &mut DeviceMap,
        act: Option<Activation>,
    ) -> Result<()> {
        let silu = act == Some(Activation::Silu);
        self.group_norm_into(norm, x, x, silu)?;
        match act {
            Some(act) if !silu => self.activate_(x, act),
            _ => Ok(()),
        }
    }

    fn activate_(&self, x: &mut DeviceMap, act: Activation) -> Result<()> {
        let at = x.data.ptr();
        Ok(self.dev.act(device_act(act)?, at, at, x.data.len())?)
    }

    /// Not on the device: its loaders refuse `norm_type: "spatial"`.
    fn modulate_nearest_(&self, _: &mut DeviceMap, _: &DeviceMap, _: &DeviceMap) -> Result<()> {
        Err(Error::input(
            "vqvae",
            "spatial norms are not supported on the CUDA device",
        ))
    }

    /// The add in the GEMM's epilogue.
    fn linear_residual(&self, lin: &DLinear, x: &Buffer<u16>, out: &mut DeviceMap) -> Result<()> {
        let rows = out.shape.pixels();
        let opts = GemmOpts {
            res: Some(out.data.ptr()),
            ..GemmOpts::default()
        };
        let (a, y) = (x.ptr(), out.data.ptr());
        Ok(self.dev.gemm(GemmOut::Bf16, lin.mat(), a, rows, y, opts)?)
    }

    /// A GEMM over the pixels with an f32 output.
    fn pointwise_f32(&self, conv: &DConv, x: &DeviceMap) -> Result<Buffer<f32>> {
        if conv.ksize != 1 {
            return Err(Error::input(
                "vqvae",
                "latents from a convolution wider than 1x1",
            ));
        }
        let rows = x.shape.pixels();
        let z = self.dev.zeros::<f32>(rows * conv.c_out())?;
        let plain = GemmOpts::default();
        self.dev
            .gemm(GemmOut::F32, conv.mat(), x.data.ptr(), rows, z.ptr(), plain)?;
        Ok(z)
    }

    /// `vq_nearest`: the exact squared distance to each f32 row in f64.
    fn nearest_codes(
        &self,
        z: &Buffer<f32>,
        codebook: &Buffer<f32>,
        dim: usize,
    ) -> Result<Buffer<u32>> {
        let n = z.len() / dim;
        let ids = self.dev.zeros::<u32>(n)?;
        let cb = (codebook.ptr(), codebook.len() / dim);
        self.dev.vq_nearest(z.ptr(), cb, ids.ptr(), n, dim)?;
        Ok(ids)
    }
}
