//! What a backend keeps a model's weights as, and how it reads them from a checkpoint.
//!
//! A model's layer structs (`mmdit::DualBlock`, ...) are written once, generic over a
//! [`Backend`]: their fields are the checkpoint's module names and hold the backend's storage
//! (`B::Linear`, `B::Vector`, `B::Table`). Loading walks the checkpoint once through [`Vb`]
//! (names and shapes checked there) and hands each tensor to the backend. [`Cpu`] packs the
//! matrices for `muddit_kernels::cpu::packed`; `crate::cuda::Cuda` uploads bf16 matrices and
//! f32 vectors to a device.

use crate::error::Result;
use crate::nn::{Conv2d, Linear};
use crate::weights::Vb;

/// A backend's storage for weights, and its readers. Every reader takes the [`Vb`] of the
/// module (`vb.pp("to_q")`) and reads its `weight` (and `bias`) tensors.
pub trait Backend {
    /// `nn.Linear` `[out, in]` with an optional bias `[out]` (also 1x1 convolutions).
    type Linear;
    /// A vector `[n]` kept in f32 (norm weights, biases).
    type Vector;
    /// A lookup table `[rows, cols]` (embeddings).
    type Table;
    /// `nn.Conv2d` with bias.
    type Conv;

    /// `weight [out, in]`, and `bias [out]` when `bias`.
    fn linear(&self, vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self::Linear>;

    /// A 1x1 `nn.Conv2d` without bias: `weight [out, in, 1, 1]`.
    fn conv1x1(&self, vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Self::Linear>;

    /// A linear map `in -> out` without bias from a weight already read and rearranged as
    /// `[out, in]` rows (e.g. a convolution kernel as a map from patches), kept as `vb` says for
    /// its `weight`.
    fn linear_rows(&self, vb: &Vb, rows: &[f32], in_out: (usize, usize)) -> Result<Self::Linear>;

    /// Tensor `name` of `vb`, `[n]`.
    fn vector(&self, vb: &Vb, name: &str, n: usize) -> Result<Self::Vector>;

    /// `weight [rows, cols]`.
    fn table(&self, vb: &Vb, rows: usize, cols: usize) -> Result<Self::Table>;

    /// `nn.Conv2d` with bias, `weight [c_out, c_in, k, k]`, whose output feeds further layers
    /// (a backend may store it for wider inputs and outputs, zero-padded).
    fn conv2d(&self, vb: &Vb, spec: Conv2dSpec) -> Result<Self::Conv>;

    /// The same for a convolution whose output leaves the model (exactly `c_out` channels).
    fn conv2d_to_output(&self, vb: &Vb, spec: Conv2dSpec) -> Result<Self::Conv> {
        self.conv2d(vb, spec)
    }

    /// A biased linear map `in -> out` one side of which is attention heads: the outputs of the
    /// q, k, v projections, the inputs of `to_out` / `proj_out`. A backend whose attention wants
    /// heads in wider slots lays them out here; by default a plain `linear`.
    fn linear_heads(
        &self,
        vb: &Vb,
        side: HeadSide,
        (i, o): (usize, usize),
    ) -> Result<Self::Linear> {
        let _ = side;
        self.linear(vb, i, o, true)
    }
}

/// Which side of a linear map is attention heads ([`Backend::linear_heads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSide {
    /// q, k, v: the outputs are heads.
    Outputs,
    /// `to_out`, `proj_out`: the first inputs are the attention's heads.
    Inputs,
}

/// The geometry of a convolution: channels, square kernel, stride and padding
/// `[top, bottom, left, right]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2dSpec {
    /// 3x3, stride 1, padding 1.
    pub fn same3(c_in: usize, c_out: usize) -> Self {
        Conv2dSpec {
            c_in,
            c_out,
            kernel: 3,
            stride: 1,
            pad: [1; 4],
        }
    }

    /// 1x1.
    pub fn pointwise(c_in: usize, c_out: usize) -> Self {
        Conv2dSpec {
            c_in,
            c_out,
            kernel: 1,
            stride: 1,
            pad: [0; 4],
        }
    }
}

/// The CPU backend: matrices packed at load for `muddit_kernels::cpu::packed` in the
/// arithmetic `vb.compute()` names, vectors and tables as f32.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Linear = Linear;
    type Vector = Vec<f32>;
    type Table = Vec<f32>;
    type Conv = Conv2d;

    fn linear(&self, vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        Linear::new(vb, in_dim, out_dim, bias)
    }

    fn conv1x1(&self, vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Linear> {
        Linear::conv1x1(vb, in_dim, out_dim)
    }

    fn linear_rows(&self, vb: &Vb, rows: &[f32], (i, o): (usize, usize)) -> Result<Linear> {
        Ok(Linear::from_rows(vb, rows, None, i, o))
    }

    fn conv2d(&self, vb: &Vb, spec: Conv2dSpec) -> Result<Conv2d> {
        Conv2d::new(vb, spec)
    }

    fn vector(&self, vb: &Vb, name: &str, n: usize) -> Result<Vec<f32>> {
        vb.get(name, &[n])
    }

    fn table(&self, vb: &Vb, rows: usize, cols: usize) -> Result<Vec<f32>> {
        vb.get("weight", &[rows, cols])
    }
}
