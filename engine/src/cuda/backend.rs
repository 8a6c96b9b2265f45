//! The CUDA backend's weight storage: matrices bf16 `[N, K]` (PyTorch's layout is the GEMM's),
//! biases, norm weights and tables on the device, read once from the checkpoint through the
//! model's own layer structs ([`crate::backend::Backend`]).
//!
//! Heads of `Dh < 64` (the test fixtures) are stored zero-padded to the attention kernels'
//! slot `Dp` (64 or 128): projections to heads get zero rows, projections from heads zero
//! columns ([`Heads`]). Public models have `Dh = 128`: no padding.

use std::sync::Arc;

use crate::backend::{Backend, Conv2dSpec, HeadSide};
use crate::error::{Error, Result};
use crate::weights::Vb;
use muddit_kernels::cpu::conv::patch_major_weight;
use muddit_kernels::cuda::gemm::{Conv, Mat};
use muddit_kernels::cuda::{to_bf16, Buffer, Device};

/// A linear layer on the device: bf16 `[N, K]`, optional f32 bias `[N]`.
pub struct DLinear {
    w: Buffer<u16>,
    bias: Option<Buffer<f32>>,
    n: usize,
    k: usize,
}

impl DLinear {
    /// `w [n, k]` rows (rounded to bf16), `bias [n]`.
    pub(crate) fn new(
        dev: &Device,
        w: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        k: usize,
    ) -> Result<Self> {
        debug_assert_eq!(w.len(), n * k);
        Ok(DLinear {
            w: dev.upload(&to_bf16(w))?,
            bias: bias.map(|b| dev.upload(b)).transpose()?,
            n,
            k,
        })
    }

    pub(crate) fn mat(&self) -> Mat {
        Mat {
            w: self.w.ptr(),
            bias: self.bias.as_ref().map(|b| b.ptr()),
            n: self.n,
            k: self.k,
        }
    }

    /// Output rows `r0..r0 + n` (no bias).
    pub(crate) fn rows(&self, r0: usize, n: usize) -> Result<Mat> {
        Ok(Mat {
            w: self.w.at(r0 * self.k)?,
            bias: None,
            n,
            k: self.k,
        })
    }
}

/// Channels padded for the implicit-GEMM convolutions (16-byte chunks of bf16).
pub(crate) fn pad8(c: usize) -> usize {
    c.next_multiple_of(8)
}

/// `nn.Conv2d` with bias: bf16 `[O', (k, k, C')]` (patch-major, the layout of `conv2d_bf16`)
/// with `C' >= C`, `O' >= O` zero-padded (zero weights and biases: the padding stays zero).
pub struct DConv {
    lin: DLinear,
    pub(crate) ksize: usize,
    /// `C'`
    pub(crate) c_in: usize,
    /// Stride and padding, as the implicit GEMM reads them.
    pub(crate) geometry: Conv,
}

impl DConv {
    /// The convolution of `spec`, stored for `c_in_pad` input and `c_out_pad` output channels;
    /// a stride and padding the kernels do not run are errors.
    fn new(
        dev: &Device,
        vb: &Vb,
        spec: Conv2dSpec,
        (c_in_pad, c_out_pad): (usize, usize),
    ) -> Result<Self> {
        let (c_in, c_out, ksize) = (spec.c_in, spec.c_out, spec.kernel);
        let geometry = kernel_geometry(spec)?;
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
            geometry,
        })
    }

    /// `O'`
    pub(crate) fn c_out(&self) -> usize {
        self.lin.mat().n
    }

    /// The weight `[O', (k, k, C')]` and bias as one GEMM reads them.
    pub(crate) fn mat(&self) -> Mat {
        self.lin.mat()
    }
}

/// The implicit GEMM's geometry of `spec`: same-padded stride 1, or diffusers' `Downsample2D`
/// (stride 2, padded 0 above and left, 1 below and right).
fn kernel_geometry(spec: Conv2dSpec) -> Result<Conv> {
    let k = spec.kernel;
    match (spec.stride, spec.pad) {
        (1, pad) if k % 2 == 1 && pad == [k / 2; 4] => Ok(Conv::same(k)),
        (2, [0, 1, 0, 1]) => Ok(Conv::downsample(k)),
        (stride, pad) => Err(Error::input(
            "vqvae",
            format!("a {k}x{k} convolution of stride {stride} and padding {pad:?} is not supported on the CUDA device"),
        )),
    }
}

/// Head layout: `H` heads of `Dh` values stored in `Dp`-wide slots.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) h: usize,
    pub(crate) dh: usize,
    pub(crate) dp: usize,
}

impl Heads {
    /// `h` heads of `dh` values in the attention kernels' slots (64 or 128); `what` names the
    /// config key in the error for wider heads.
    pub(crate) fn new(h: usize, dh: usize, what: &str) -> Result<Self> {
        let dp = match dh {
            1..=64 => 64,
            65..=128 => 128,
            _ => {
                return Err(Error::input(
                    what,
                    format!("{dh}: the CUDA attention kernels take heads of at most 128"),
                ))
            }
        };
        Ok(Heads { h, dh, dp })
    }

    pub(crate) fn width(&self) -> usize {
        self.h * self.dp
    }

    /// `w [H * Dh, K]` (+ bias) -> `[H * Dp, K]` with zero rows (and zero bias) in the padding.
    fn pad_out(&self, dev: &Device, w: &[f32], bias: Option<&[f32]>, k: usize) -> Result<DLinear> {
        let hd = self.width();
        let mut wp = vec![0.0; hd * k];
        let mut bp = bias.map(|_| vec![0.0; hd]);
        for h in 0..self.h {
            for j in 0..self.dh {
                let (src, dst) = (h * self.dh + j, h * self.dp + j);
                wp[dst * k..(dst + 1) * k].copy_from_slice(&w[src * k..(src + 1) * k]);
                if let (Some(bp), Some(b)) = (bp.as_mut(), bias) {
                    bp[dst] = b[src];
                }
            }
        }
        DLinear::new(dev, &wp, bp.as_deref(), hd, k)
    }

    /// `w [N, H * Dh + rest]` -> `[N, H * Dp + rest]`: zero columns where the attention output
    /// holds padding (its first `H * Dh` input columns are the attention heads).
    fn pad_in(&self, dev: &Device, w: &[f32], bias: Option<&[f32]>, n: usize) -> Result<DLinear> {
        let k = w.len() / n;
        let rest = k - self.h * self.dh;
        let kp = self.width() + rest;
        let mut wp = vec![0.0; n * kp];
        for r in 0..n {
            let (src, dst) = (&w[r * k..(r + 1) * k], &mut wp[r * kp..(r + 1) * kp]);
            for h in 0..self.h {
                dst[h * self.dp..h * self.dp + self.dh]
                    .copy_from_slice(&src[h * self.dh..(h + 1) * self.dh]);
            }
            dst[self.width()..].copy_from_slice(&src[self.h * self.dh..]);
        }
        DLinear::new(dev, &wp, bias, n, kp)
    }
}

/// The CUDA backend's loader: a device, and the head layout of the model being loaded
/// (`None`: no attention heads to lay out).
pub struct Cuda {
    pub(crate) dev: Arc<Device>,
    pub(crate) heads: Option<Heads>,
}

impl Cuda {
    /// The loader of a model on `dev` whose attention has `heads`.
    pub(crate) fn new(dev: &Arc<Device>, heads: Option<Heads>) -> Self {
        Cuda {
            dev: dev.clone(),
            heads,
        }
    }

    /// The loader of a model on `dev` with `h` attention heads of `dh` values; `what` names the
    /// config key in the error for heads the kernels cannot take.
    pub(crate) fn with_heads(
        dev: &Arc<Device>,
        (h, dh): (usize, usize),
        what: &str,
    ) -> Result<Self> {
        Ok(Cuda::new(dev, Some(Heads::new(h, dh, what)?)))
    }

    /// `weight [out, in]` rows and `bias [out]` as stored (widened to f32).
    fn read(
        vb: &Vb,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let w = vb.get("weight", &[out_dim, in_dim])?;
        let b = bias.then(|| vb.get("bias", &[out_dim])).transpose()?;
        Ok((w, b))
    }
}

impl Backend for Cuda {
    type Linear = DLinear;
    type Vector = Buffer<f32>;
    type Table = Buffer<u16>;
    type Conv = DConv;

    fn conv1x1(&self, vb: &Vb, in_dim: usize, out_dim: usize) -> Result<DLinear> {
        let w = vb.get("weight", &[out_dim, in_dim, 1, 1])?;
        DLinear::new(&self.dev, &w, None, out_dim, in_dim)
    }

    fn linear_rows(&self, _vb: &Vb, rows: &[f32], (i, o): (usize, usize)) -> Result<DLinear> {
        DLinear::new(&self.dev, rows, None, o, i)
    }

    /// Input and output channels padded to multiples of 8.
    fn conv2d(&self, vb: &Vb, spec: Conv2dSpec) -> Result<DConv> {
        let (i, o) = (spec.c_in, spec.c_out);
        DConv::new(&self.dev, vb, spec, (pad8(i), pad8(o)))
    }

    /// Input channels padded to multiples of 8, the output exact.
    fn conv2d_to_output(&self, vb: &Vb, spec: Conv2dSpec) -> Result<DConv> {
        DConv::new(&self.dev, vb, spec, (pad8(spec.c_in), spec.c_out))
    }

    fn linear(&self, vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<DLinear> {
        let (w, b) = Self::read(vb, in_dim, out_dim, bias)?;
        DLinear::new(&self.dev, &w, b.as_deref(), out_dim, in_dim)
    }

    fn vector(&self, vb: &Vb, name: &str, n: usize) -> Result<Buffer<f32>> {
        Ok(self.dev.upload(&vb.get(name, &[n])?)?)
    }

    fn table(&self, vb: &Vb, rows: usize, cols: usize) -> Result<Buffer<u16>> {
        Ok(self
            .dev
            .upload(&to_bf16(&vb.get("weight", &[rows, cols])?))?)
    }

    /// Heads zero-padded to the attention kernels' slots ([`Heads`]).
    fn linear_heads(&self, vb: &Vb, side: HeadSide, (i, o): (usize, usize)) -> Result<DLinear> {
        let (w, b) = Self::read(vb, i, o, true)?;
        let (dev, b) = (&self.dev, b.as_deref());
        match (self.heads, side) {
            (Some(heads), HeadSide::Outputs) => heads.pad_out(dev, &w, b, i),
            (Some(heads), HeadSide::Inputs) => heads.pad_in(dev, &w, b, o),
            (None, _) => DLinear::new(dev, &w, b, o, i),
        }
    }
}
