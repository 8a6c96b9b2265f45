//! Small layers shared by the models: their fields are the checkpoint's tensors.

use crate::error::Result;
use crate::weights::Vb;
use muddit_kernels::cpu::packed::{self, Epilogue, PackedMatrix};
use muddit_kernels::cpu::{act, norm};

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
        if let Some(bits) = vb.get_bf16_bits("weight", shape)? {
            let weight = PackedMatrix::from_bf16_bits(&bits, out_dim, in_dim, vb.compute());
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
        self.forward_with(x, Epilogue::None)
    }

    /// `[M, in] -> [M, out]` with GELU-tanh applied to the outputs.
    pub fn forward_gelu(&self, x: &[f32]) -> Vec<f32> {
        self.forward_with(x, Epilogue::GeluTanh)
    }

    /// `a [M, ka]` and `b [M, in - ka]` side by side `-> [M, out]`, without writing their
    /// concatenation.
    pub fn forward_concat(&self, a: &[f32], ka: usize, b: &[f32]) -> Vec<f32> {
        let (m, kb) = (a.len() / ka.max(1), self.in_dim - ka);
        assert_eq!(b.len(), m * kb, "forward_concat: b is not [M, in - ka]");
        let mut out = vec![0.0; m * self.out_dim];
        let x = packed::Concat { a, ka, b, kb };
        packed::linear_rows(
            &x,
            &self.weight,
            self.bias.as_deref(),
            Epilogue::None,
            &mut out,
        );
        out
    }

    fn forward_with(&self, x: &[f32], epilogue: Epilogue) -> Vec<f32> {
        let m = x.len() / self.in_dim;
        let mut out = vec![0.0; m * self.out_dim];
        packed::linear(x, &self.weight, self.bias.as_deref(), epilogue, &mut out);
        out
    }
}

/// RMSNorm with a weight, eps 1e-6 everywhere in this family.
pub struct RmsNorm {
    /// `[D]`
    pub weight: Vec<f32>,
}

pub const NORM_EPS: f32 = 1e-6;

impl RmsNorm {
    pub fn new(vb: &Vb, d: usize) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get("weight", &[d])?,
        })
    }

    /// In place over rows of `x [M, D]`.
    pub fn forward_(&self, x: &mut [f32]) {
        norm::rms_norm_(x, &self.weight, NORM_EPS);
    }
}

/// `linear_1 -> SiLU -> linear_2` (diffusers `TimestepEmbedding`, `PixArtAlphaTextProjection`).
pub struct Mlp {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl Mlp {
    pub fn new(vb: &Vb, in_dim: usize, dim: usize, bias: bool) -> Result<Self> {
        Ok(Mlp {
            linear_1: Linear::new(&vb.pp("linear_1"), in_dim, dim, bias)?,
            linear_2: Linear::new(&vb.pp("linear_2"), dim, dim, bias)?,
        })
    }

    /// `[M, in] -> [M, dim]`
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut h = self.linear_1.forward(x);
        act::silu_(&mut h);
        self.linear_2.forward(&h)
    }
}

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
