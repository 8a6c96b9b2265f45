//! Small layers shared by the models: their fields are the checkpoint's tensors.

use crate::backend::Conv2dSpec;
use crate::error::Result;
use crate::vqvae::FeatureMap;
use crate::weights::Vb;
use muddit_kernels::cpu::attention::{attention_with, AttnShape};
use muddit_kernels::cpu::conv::{conv2d, conv2d_upsampled_2x, patch_major_weight, Conv2dShape};
use muddit_kernels::cpu::group_norm::apply_channel_affine_;
use muddit_kernels::cpu::packed::{self, Compute, Epilogue, PackedMatrix};
use muddit_kernels::cpu::winograd::{self, Prologue, Winograd3x3};
use rayon::prelude::*;

/// `nn.Linear` (and 1x1 convolutions, whose `[out, in, 1, 1]` weight is the same matrix).
pub struct Linear {
    /// `[out, in]`, packed for the matrix-product kernels.
    pub weight: PackedMatrix,
    /// `[out]`
    pub bias: Option<Vec<f32>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    pub fn new(vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bias = if bias {
            Some(vb.get("bias", &[out_dim])?)
        } else {
            None
        };
        Self::read(vb, &[out_dim, in_dim], bias, in_dim, out_dim)
    }

    /// A 1x1 `nn.Conv2d` without bias, weight `[out, in, 1, 1]`.
    pub fn conv1x1(vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::read(vb, &[out_dim, in_dim, 1, 1], None, in_dim, out_dim)
    }

    /// Reads `weight` of `shape` (an `[out, in]` matrix), straight from its bits when stored as
    /// bf16.
    fn read(
        vb: &Vb,
        shape: &[usize],
        bias: Option<Vec<f32>>,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let compute = vb.compute();
        let packed = vb.with_bf16_bits("weight", shape, |bits| {
            PackedMatrix::from_bf16_bits(bits, out_dim, in_dim, compute)
        })?;
        if let Some(weight) = packed {
            return Ok(Linear {
                weight,
                bias,
                in_dim,
                out_dim,
            });
        }
        let weight = vb.get("weight", shape)?;
        Ok(Self::from_rows(vb, &weight, bias, in_dim, out_dim))
    }

    /// A layer from a weight already read as `[out, in]` rows (e.g. a reordered convolution
    /// kernel), stored as `vb` says for its `weight` tensor.
    pub fn from_rows(
        vb: &Vb,
        weight: &[f32],
        bias: Option<Vec<f32>>,
        in_dim: usize,
        out_dim: usize,
    ) -> Self {
        let weight = PackedMatrix::new(weight, out_dim, in_dim, vb.storage("weight"), vb.compute());
        Linear {
            weight,
            bias,
            in_dim,
            out_dim,
        }
    }

    /// The arithmetic of this layer's product (the attention next to it uses the same).
    pub fn compute(&self) -> muddit_kernels::cpu::packed::Compute {
        self.weight.compute()
    }

    /// `[M, in] -> [M, out]`
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.forward_with(Input::Rows(x), Epilogue::None)
    }

    /// `[M, in] -> [M, out]` with GELU-tanh applied to the outputs.
    pub fn forward_gelu(&self, x: &[f32]) -> Vec<f32> {
        self.forward_with(Input::Rows(x), Epilogue::GeluTanh)
    }

    /// `a [M, ka]` and `b [M, in - ka]` side by side `-> [M, out]`, without writing their
    /// concatenation.
    pub fn forward_concat(&self, a: &[f32], ka: usize, b: &[f32]) -> Vec<f32> {
        self.forward_with(Input::Concat(a, ka, b), Epilogue::None)
    }

    /// `x [M, in]` -> `out [M, out]`, every element written.
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) {
        self.apply(Input::Rows(x), Epilogue::None, out);
    }

    /// `x [M, in]` -> `out [M, out]` with `epilogue`, every element written.
    pub fn apply(&self, x: Input<'_>, epilogue: Epilogue, out: &mut [f32]) {
        let (w, bias) = (&self.weight, self.bias.as_deref());
        match x {
            Input::Rows(x) => packed::linear(x, w, bias, epilogue, out),
            Input::Concat(a, ka, b) => {
                let (m, kb) = (a.len() / ka.max(1), self.in_dim - ka);
                assert_eq!(b.len(), m * kb, "forward_concat: b is not [M, in - ka]");
                let x = packed::Concat { a, ka, b, kb };
                packed::linear_rows(&x, w, bias, epilogue, out);
            }
        }
    }

    /// [`Linear::apply`] of the rows `x [M, in]` with each linear map of `parts`, into its
    /// `out [M, out]` after its epilogue: `x` packed once where the maps allow
    /// ([`packed::linear_many`]).
    pub fn apply_many(x: &[f32], parts: &mut [(&Linear, Epilogue, &mut [f32])]) {
        let mut parts: Vec<packed::Part<'_>> = parts
            .iter_mut()
            .map(|(lin, epilogue, out)| packed::Part {
                w: &lin.weight,
                bias: lin.bias.as_deref(),
                epilogue: *epilogue,
                out,
            })
            .collect();
        packed::linear_many(x, &mut parts);
    }

    fn forward_with(&self, x: Input<'_>, epilogue: Epilogue) -> Vec<f32> {
        let mut out = vec![0.0; x.rows(self.in_dim) * self.out_dim];
        self.apply(x, epilogue, &mut out);
        out
    }
}

/// The left operand of [`Linear::apply`].
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// `[M, in]`
    Rows(&'a [f32]),
    /// `a [M, ka]` and `b [M, in - ka]` side by side: `Concat(a, ka, b)`.
    Concat(&'a [f32], usize, &'a [f32]),
}

impl Input<'_> {
    /// `M`, for a linear map of `in_dim` inputs.
    pub fn rows(&self, in_dim: usize) -> usize {
        match *self {
            Input::Rows(x) => x.len() / in_dim.max(1),
            Input::Concat(a, ka, _) => a.len() / ka.max(1),
        }
    }

    /// The rows `range` alone, for a linear map of `in_dim` inputs.
    pub fn row_range(self, in_dim: usize, range: std::ops::Range<usize>) -> Self {
        match self {
            Input::Rows(x) => Input::Rows(&x[range.start * in_dim..range.end * in_dim]),
            Input::Concat(a, ka, b) => {
                let kb = in_dim - ka;
                let a = &a[range.start * ka..range.end * ka];
                Input::Concat(a, ka, &b[range.start * kb..range.end * kb])
            }
        }
    }
}

/// `nn.Conv2d` with bias: 3x3 same-padded ones (the VQ-VAE's) as Winograd F(2x2, 3x3) where the
/// CPU transforms 16 channels at a time ([`winograd`]), every other as a direct implicit product.
pub struct Conv2d {
    weight: ConvWeight,
    bias: Vec<f32>,
    spec: Conv2dSpec,
}

enum ConvWeight {
    /// `[O, (kh, kw, C)]`, packed.
    Direct(PackedMatrix),
    Winograd(Winograd3x3),
}

impl Conv2d {
    /// `weight [O, C, k, k]` and `bias [O]` of `vb` for `spec`.
    pub fn new(vb: &Vb, spec: Conv2dSpec) -> Result<Self> {
        let Conv2dSpec {
            c_in,
            c_out,
            kernel,
            ..
        } = spec;
        let w = vb.get("weight", &[c_out, c_in, kernel, kernel])?;
        let weight = if spec == Conv2dSpec::same3(c_in, c_out) && winograd::suits(c_in, c_out) {
            ConvWeight::Winograd(Winograd3x3::new(&w, c_out, c_in, vb.compute()))
        } else {
            ConvWeight::Direct(PackedMatrix::new(
                &patch_major_weight(&w, c_out, c_in, kernel),
                c_out,
                kernel * kernel * c_in,
                vb.storage("weight"),
                vb.compute(),
            ))
        };
        Ok(Conv2d {
            weight,
            bias: vb.get("bias", &[c_out])?,
            spec,
        })
    }

    /// `[B, H, W, C] -> [B, Ho, Wo, O]`
    pub fn forward(&self, x: &FeatureMap) -> FeatureMap {
        self.forward_scaled(x, 1, None)
    }

    /// `[B, H, W, C] -> [B, Ho, Wo, O]` on `x` upsampled 2x (nearest), without writing the
    /// upsampled map.
    pub fn forward_upsampled_2x(&self, x: &FeatureMap) -> FeatureMap {
        self.forward_scaled(x, 2, None)
    }

    /// `[B, H, W, C] -> [B, Ho, Wo, O]` on `x` mapped per channel first (a group norm and its
    /// SiLU as a [`Prologue`], `[B, C]` rows): folded into a Winograd convolution, so the mapped
    /// map is never written; on a mapped copy otherwise.
    pub fn forward_mapped(&self, x: &FeatureMap, prologue: Prologue) -> FeatureMap {
        if matches!(self.weight, ConvWeight::Winograd(_)) {
            return self.forward_scaled(x, 1, Some(prologue));
        }
        let mut mapped = x.data.clone();
        let Prologue { scale, shift, silu } = prologue;
        apply_channel_affine_(&mut mapped, x.batch, scale, shift, silu);
        self.forward(&FeatureMap { data: mapped, ..*x })
    }

    /// `residual += conv(prologue(x))`, the residual `[B, H, W, O]` as the output: added in a
    /// Winograd convolution's output transform, so the convolution alone is never written; a
    /// pass after [`Conv2d::forward_mapped`] otherwise.
    pub fn forward_mapped_onto(
        &self,
        x: &FeatureMap,
        prologue: Prologue,
        residual: &mut FeatureMap,
    ) {
        let ConvWeight::Winograd(wg) = &self.weight else {
            let y = self.forward_mapped(x, prologue);
            return add_assign(&mut residual.data, &y.data);
        };
        assert!(
            (residual.batch, residual.h, residual.w, residual.c)
                == (x.batch, x.h, x.w, self.spec.c_out),
            "conv2d: the residual is not [B, H, W, O]"
        );
        let dims = (x.batch, x.h, x.w);
        let bias = Some(&self.bias[..]);
        winograd::conv3x3(
            &x.data,
            1,
            Some(prologue),
            wg,
            bias,
            dims,
            &mut residual.data,
            true,
        )
    }

    /// On `x` upsampled `up` times per side (1 or 2), through `prologue` (Winograd only).
    fn forward_scaled(&self, x: &FeatureMap, up: usize, prologue: Option<Prologue>) -> FeatureMap {
        let s = self.spec;
        let shape = Conv2dShape {
            batch: x.batch,
            height: up * x.h,
            width: up * x.w,
            c_in: s.c_in,
            c_out: s.c_out,
            kernel: s.kernel,
            stride: s.stride,
            pad: s.pad,
        };
        let (h, w) = shape.out_hw();
        let mut data = vec![0.0; x.batch * h * w * s.c_out];
        let bias = Some(&self.bias[..]);
        match (&self.weight, up) {
            (ConvWeight::Winograd(wg), _) => {
                let dims = (x.batch, h, w);
                winograd::conv3x3(&x.data, up, prologue, wg, bias, dims, &mut data, false)
            }
            (ConvWeight::Direct(wd), 1) => conv2d(&x.data, wd, bias, &shape, &mut data),
            (ConvWeight::Direct(wd), _) => {
                conv2d_upsampled_2x(&x.data, wd, bias, &shape, &mut data)
            }
        }
        FeatureMap {
            data,
            batch: x.batch,
            h,
            w,
            c: s.c_out,
        }
    }
}

/// `y += r` elementwise (`r` as long as `y`), on the thread pool: a map of the VQ decoder is
/// up to 256 MiB.
pub(crate) fn add_assign(y: &mut [f32], r: &[f32]) {
    assert_eq!(y.len(), r.len(), "add: the operands differ in length");
    const CHUNK: usize = 1 << 16;
    y.par_chunks_mut(CHUNK)
        .zip(r.par_chunks(CHUNK))
        .for_each(|(y, r)| y.iter_mut().zip(r).for_each(|(v, s)| *v += s));
}

/// Softmax attention `q, k, v [B, S, H, Dh] -> [B, S, H * Dh]` over `shape = (B, S, H)`,
/// causal when asked, with the products in `compute` arithmetic.
pub fn attention(
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize, usize),
    causal: bool,
    compute: Compute,
) -> Vec<f32> {
    let mut out = vec![0.0; qkv.0.len()];
    attention_into(qkv, shape, causal, compute, &mut out);
    out
}

/// [`attention`] into `out [B, S, H, Dh]`, every element written.
pub fn attention_into(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (batch, seq, heads): (usize, usize, usize),
    causal: bool,
    compute: Compute,
    out: &mut [f32],
) {
    let dh = q.len() / (batch * seq * heads);
    let shape = AttnShape::new(batch, seq, heads, dh, causal);
    attention_with(q, k, v, shape, compute, out);
}

/// The eps of every RMSNorm and LayerNorm in this family.
pub const NORM_EPS: f32 = 1e-6;

/// The diffusers sinusoidal embedding (`get_timestep_embedding` with `flip_sin_to_cos=True`,
/// `downscale_freq_shift=0`, max period 10000): `[cos(x f), sin(x f)]` with
/// `f_k = exp(-ln(10000) k / (dim/2))`, in `f32` as the reference computes it. `[M] -> [M, dim]`
pub fn sinusoidal_embedding(xs: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(xs.len() * dim);
    for &x in xs {
        out.extend(freqs.iter().map(|f| (x * f).cos()));
        out.extend(freqs.iter().map(|f| (x * f).sin()));
    }
    out
}
