//! The feature-map operations the VQ-VAE's one forward (`forward.rs`) is written against:
//! [`MapOps`] grows [`Ops`] by a feature map type and the convolutions, norms and code
//! search of the VQ-VAE. Each path one backend fuses is one method, the other backend's
//! implementation being the plain sequence: [`MapOps::norm_silu_conv`] (the CPU folds the
//! GroupNorm and its SiLU into the Winograd convolution's prologue, the device runs the
//! `group_norm` launch then the convolution), the residual of [`MapOps::conv2d`] and
//! [`MapOps::linear_residual`] (in the device GEMM's epilogue, an add on the CPU),
//! [`MapOps::conv_upsampled_2x`] (the CPU convolves the small map, the device upsamples first).
//!
//! [`CpuOps`] runs them on `muddit_kernels::cpu` (f32 [`FeatureMap`]s); `crate::cuda::Cuda` on
//! the CUDA kernels (bf16 maps, `cuda/ops.rs`).

use super::{Activation, FeatureMap, GroupNorm, EPS};
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::{CpuOps, LinearOf, Ops, TableOf};
use muddit_kernels::cpu::act;
use muddit_kernels::cpu::group_norm::{channel_affine, group_norm_};
use muddit_kernels::cpu::matmul::linear;
use muddit_kernels::cpu::winograd::Prologue;

/// A convolution in the storage of `O`'s backend.
pub type ConvOf<O> = <<O as Ops>::Backend as Backend>::Conv;

/// The geometry of a channel-last feature map `[batch, h, w, c]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl MapShape {
    /// `B H W`
    pub fn pixels(&self) -> usize {
        self.batch * self.h * self.w
    }
}

/// The VQ-VAE's operations on feature maps `[B, H, W, C]`; every operation but the in-place
/// ones (`_`) returns a new map.
pub trait MapOps: Ops {
    /// A feature map with its geometry.
    type Map;
    /// The codebook `[V, E]` as [`MapOps::nearest_codes`] reads it.
    type Codebook;
    /// Codebook ids `[N]`.
    type Codes;

    /// The geometry of `x`, channels as stored (a backend may pad them).
    fn shape(&self, x: &Self::Map) -> MapShape;

    /// The pixels of `x` as the rows `[B H W, C]` of a matrix product.
    fn rows<'a>(&self, x: &'a Self::Map) -> &'a Self::Act;

    /// A copy of `x`.
    fn copy_map(&self, x: &Self::Map) -> Result<Self::Map>;

    /// `image [B, C, H, W]` on the host, `shape.c = C` -> `[B, H, W, C]` (channels padded as
    /// the backend's convolutions read them).
    fn upload_image(&self, image: &[f32], shape: MapShape) -> Result<Self::Map>;

    /// `x [B, H, W, C]` -> `[B, C, H, W]` on the host.
    fn download_image(&self, x: &Self::Map) -> Result<Vec<f32>>;

    /// `[B, h, w, E]`: the rows `ids [B, h, w]` (checked by the caller) name in `codebook`, a
    /// table of `entries` rows; `grid = (B, h, w)`.
    fn code_rows(
        &self,
        codebook: &TableOf<Self>,
        entries: usize,
        ids: &[i64],
        grid: (usize, usize, usize),
    ) -> Result<Self::Map>;

    /// `conv(x) (+ residual)`: `[B, H, W, C] -> [B, Ho, Wo, O]`, stride and padding those the
    /// convolution was loaded with.
    fn conv2d(
        &self,
        conv: &ConvOf<Self>,
        x: &Self::Map,
        residual: Option<&Self::Map>,
    ) -> Result<Self::Map>;

    /// `conv(silu(norm(x))) (+ residual)`, a same-padded convolution; the residual is used
    /// up (the sum may be written over it).
    fn norm_silu_conv(
        &self,
        norm: &GroupNorm<Self::Backend>,
        conv: &ConvOf<Self>,
        x: &Self::Map,
        residual: Option<Self::Map>,
    ) -> Result<Self::Map>;

    /// `conv(upsample_nearest_2x(x))`: `[B, H, W, C] -> [B, 2H, 2W, O]`.
    fn conv_upsampled_2x(&self, conv: &ConvOf<Self>, x: &Self::Map) -> Result<Self::Map>;

    /// GroupNorm of `x` in place, then `act` if given.
    fn group_norm_(
        &self,
        norm: &GroupNorm<Self::Backend>,
        x: &mut Self::Map,
        act: Option<Activation>,
    ) -> Result<()>;

    /// `act(x)` in place.
    fn activate_(&self, x: &mut Self::Map, act: Activation) -> Result<()>;

    /// `x = x * scale + shift` with `scale`, `shift [B, h, w, C]` upsampled (nearest) to
    /// `x [B, H, W, C]` (H, W multiples of h, w): a `SpatialNorm`'s conditioning.
    fn modulate_nearest_(
        &self,
        x: &mut Self::Map,
        scale: &Self::Map,
        shift: &Self::Map,
    ) -> Result<()>;

    /// `out += x · Wᵀ + b`, `x [B H W, K]`, `out [B, H, W, N]`.
    fn linear_residual(
        &self,
        lin: &LinearOf<Self>,
        x: &Self::Act,
        out: &mut Self::Map,
    ) -> Result<()>;

    /// A 1x1 convolution to f32 values, `[B, H, W, C] -> [B, H, W, O]`: the latents.
    fn pointwise_f32(&self, conv: &ConvOf<Self>, x: &Self::Map) -> Result<Self::F32>;

    /// The nearest codebook row (L2) of each latent `z [N, dim]` -> ids `[N]`, ties to the
    /// lowest id (`torch.argmin`).
    fn nearest_codes(
        &self,
        z: &Self::F32,
        codebook: &Self::Codebook,
        dim: usize,
    ) -> Result<Self::Codes>;
}

/// The codebook as the CPU searches it: the rows and their squared norms in f64.
pub struct Codebook {
    /// `quantize.embedding.weight` `[V, E]`.
    pub rows: Vec<f32>,
    /// `|e_v|²` `[V]`.
    pub norms: Vec<f64>,
}

impl Codebook {
    /// The rows `[V, E]` of width `e` and their norms.
    pub fn new(rows: Vec<f32>, e: usize) -> Self {
        let norms = rows
            .chunks_exact(e)
            .map(|row| row.iter().map(|&x| x as f64 * x as f64).sum())
            .collect();
        Codebook { rows, norms }
    }

    /// Nearest entry of each latent `z [N, E]` -> ids `[N]`.
    ///
    /// Candidates are ranked by `|e|² - 2 z·e` from an f32 GEMM; every entry within a margin of
    /// the best (far wider than the GEMM's rounding) is then re-scored in f64, so the result is
    /// the argmin of the exact distance.
    pub fn nearest(&self, z: &[f32], e: usize) -> Vec<i64> {
        let v = self.norms.len();
        let n = z.len() / e;
        let mut dots = vec![0.0f32; n * v]; // [N, V]
        linear(z, &self.rows, None, n, e, v, &mut dots);
        z.chunks_exact(e)
            .zip(dots.chunks_exact(v))
            .map(|(zr, dr)| {
                let zz: f64 = zr.iter().map(|&x| x as f64 * x as f64).sum();
                let approx = |j: usize| self.norms[j] - 2.0 * dr[j] as f64;
                let best = (0..v).map(approx).fold(f64::INFINITY, f64::min);
                let margin = 1e-4 * (zz + best.abs()) + 1e-6;
                let exact = |j: usize| -> f64 {
                    let row = &self.rows[j * e..(j + 1) * e];
                    zr.iter()
                        .zip(row)
                        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                        .sum()
                };
                let mut pick = (f64::INFINITY, 0usize);
                for j in (0..v).filter(|&j| approx(j) <= best + margin) {
                    let d = exact(j);
                    if d < pick.0 {
                        pick = (d, j);
                    }
                }
                pick.1 as i64
            })
            .collect()
    }
}

/// `[B, C, H W] -> [B, H W, Cp]`, channels `C..Cp` zero.
pub(crate) fn to_nhwc(x: &[f32], batch: usize, (c, cp): (usize, usize), hw: usize) -> Vec<f32> {
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

/// `[B, H W, C] -> [B, C, H W]`
pub(crate) fn to_nchw(x: &[f32], batch: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for p in 0..hw {
            for ci in 0..c {
                out[(b * c + ci) * hw + p] = x[(b * hw + p) * c + ci];
            }
        }
    }
    out
}

/// The activation `act` in place.
fn activate(x: &mut [f32], act: Activation) {
    match act {
        Activation::Silu => act::silu_(x),
        Activation::Gelu => act::gelu_erf_(x),
        Activation::Relu => act::relu_(x),
        Activation::Mish => act::mish_(x),
    }
}

/// `y += r`
fn add_(y: &mut FeatureMap, r: Option<&FeatureMap>) {
    if let Some(r) = r {
        crate::nn::add_assign(&mut y.data, &r.data);
    }
}

impl MapOps for CpuOps {
    type Map = FeatureMap;
    type Codebook = Codebook;
    type Codes = Vec<i64>;

    fn shape(&self, x: &FeatureMap) -> MapShape {
        MapShape {
            batch: x.batch,
            h: x.h,
            w: x.w,
            c: x.c,
        }
    }

    fn rows<'a>(&self, x: &'a FeatureMap) -> &'a Vec<f32> {
        &x.data
    }

    fn copy_map(&self, x: &FeatureMap) -> Result<FeatureMap> {
        Ok(FeatureMap {
            data: x.data.clone(),
            ..*x
        })
    }

    fn upload_image(&self, image: &[f32], s: MapShape) -> Result<FeatureMap> {
        Ok(FeatureMap {
            data: to_nhwc(image, s.batch, (s.c, s.c), s.h * s.w),
            batch: s.batch,
            h: s.h,
            w: s.w,
            c: s.c,
        })
    }

    fn download_image(&self, x: &FeatureMap) -> Result<Vec<f32>> {
        Ok(to_nchw(&x.data, x.batch, x.c, x.h * x.w))
    }

    fn code_rows(
        &self,
        codebook: &Vec<f32>,
        entries: usize,
        ids: &[i64],
        (batch, h, w): (usize, usize, usize),
    ) -> Result<FeatureMap> {
        let c = codebook.len() / entries;
        let mut data = vec![0.0; ids.len() * c]; // [B, h, w, E]
        self.gather(codebook, ids, &mut data)?;
        Ok(FeatureMap {
            data,
            batch,
            h,
            w,
            c,
        })
    }

    fn conv2d(
        &self,
        conv: &ConvOf<Self>,
        x: &FeatureMap,
        residual: Option<&FeatureMap>,
    ) -> Result<FeatureMap> {
        let mut y = conv.forward(x);
        add_(&mut y, residual);
        Ok(y)
    }

    /// The norm and SiLU as the convolution's prologue: never written out where the
    /// convolution is a Winograd one, which also adds the residual in place.
    fn norm_silu_conv(
        &self,
        norm: &GroupNorm<Self::Backend>,
        conv: &ConvOf<Self>,
        x: &FeatureMap,
        residual: Option<FeatureMap>,
    ) -> Result<FeatureMap> {
        let (scale, shift) =
            channel_affine(&x.data, x.batch, norm.groups, &norm.weight, &norm.bias, EPS);
        let prologue = Prologue {
            scale: &scale,
            shift: &shift,
            silu: true,
        };
        Ok(match residual {
            Some(mut r) => {
                conv.forward_mapped_onto(x, prologue, &mut r);
                r
            }
            None => conv.forward_mapped(x, prologue),
        })
    }

    /// Without writing the upsampled map.
    fn conv_upsampled_2x(&self, conv: &ConvOf<Self>, x: &FeatureMap) -> Result<FeatureMap> {
        Ok(conv.forward_upsampled_2x(x))
    }

    /// SiLU fused into the norm's pass.
    fn group_norm_(
        &self,
        norm: &GroupNorm<Self::Backend>,
        x: &mut FeatureMap,
        act: Option<Activation>,
    ) -> Result<()> {
        let fused_silu = act == Some(Activation::Silu);
        let (w, b) = (&norm.weight, &norm.bias);
        group_norm_(&mut x.data, x.batch, norm.groups, w, b, EPS, fused_silu);
        match act {
            Some(act) if !fused_silu => activate(&mut x.data, act),
            _ => {}
        }
        Ok(())
    }

    fn activate_(&self, x: &mut FeatureMap, act: Activation) -> Result<()> {
        activate(&mut x.data, act);
        Ok(())
    }

    fn modulate_nearest_(
        &self,
        x: &mut FeatureMap,
        scale: &FeatureMap,
        shift: &FeatureMap,
    ) -> Result<()> {
        let (c, s) = (x.c, scale);
        for (row, px) in x.data.chunks_exact_mut(c).enumerate() {
            let (bi, r) = (row / (x.h * x.w), row % (x.h * x.w));
            let (sy, sx) = ((r / x.w) * s.h / x.h, (r % x.w) * s.w / x.w);
            let at = ((bi * s.h + sy) * s.w + sx) * c;
            for ((v, yv), bv) in px
                .iter_mut()
                .zip(&s.data[at..at + c])
                .zip(&shift.data[at..at + c])
            {
                *v = *v * yv + bv;
            }
        }
        Ok(())
    }

    fn linear_residual(
        &self,
        lin: &LinearOf<Self>,
        x: &Vec<f32>,
        out: &mut FeatureMap,
    ) -> Result<()> {
        let y = lin.forward(x); // [B H W, N]
        out.data.iter_mut().zip(&y).for_each(|(v, a)| *v += a);
        Ok(())
    }

    fn pointwise_f32(&self, conv: &ConvOf<Self>, x: &FeatureMap) -> Result<Vec<f32>> {
        Ok(conv.forward(x).data)
    }

    fn nearest_codes(&self, z: &Vec<f32>, codebook: &Codebook, dim: usize) -> Result<Vec<i64>> {
        Ok(codebook.nearest(z, dim))
    }
}
