//! The operations a model's forward is written against, once for every backend.
//!
//! A forward (`clip_text/forward.rs`) takes an [`Ops`]: the layers hold the weights in its
//! [`Backend`]'s storage, the activations are its own types, and every operation writes into an
//! output the forward allocated beforehand ([`Ops::f32s`], [`Ops::acts`]). A device backend thus
//! launches into buffers that every layer reuses, and the CPU allocates once per forward rather
//! than once per operation. A path that one backend fuses is one method here, the other
//! backend's implementation being the plain sequence: [`Ops::linear_act`] (the activation in the
//! device GEMM's epilogue), [`Ops::linear_residual`] (the residual add in it).
//!
//! [`CpuOps`] runs on `muddit_kernels::cpu` (f32 activations); `crate::cuda::Cuda` on the CUDA
//! kernels (an f32 residual stream, bf16 activations, attention heads in the kernels' slots).

use crate::backend::{Backend, Cpu};
use crate::error::Result;
use crate::nn::attention_into;
use muddit_kernels::cpu::packed::Compute;
use muddit_kernels::cpu::{act, norm};

/// An element-wise activation after a matrix product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with erf.
    GeluErf,
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// GELU's tanh approximation.
    GeluTanh,
}

/// A linear layer in the storage of `O`'s backend.
pub type LinearOf<O> = <<O as Ops>::Backend as Backend>::Linear;
/// A vector in the storage of `O`'s backend.
pub type VectorOf<O> = <<O as Ops>::Backend as Backend>::Vector;
/// A table in the storage of `O`'s backend.
pub type TableOf<O> = <<O as Ops>::Backend as Backend>::Table;

/// Where a product `y = x · Wᵀ + b` goes ([`Ops::linear`]), `[M, N]`.
pub enum Out<'a, O: Ops + ?Sized> {
    /// `out = y`.
    Act(&'a mut O::Act),
    /// `out = act(y)`: the device applies `act` in the product's epilogue.
    Activated(&'a mut O::Act, Activation),
    /// `out = y` in f32.
    F32(&'a mut O::F32),
    /// `out += y`, a residual stream: the device adds in the product's epilogue.
    Residual(&'a mut O::F32),
}

/// An affine LayerNorm's parameters (`nn.LayerNorm`): `weight`, `bias` `[D]`, `eps`.
pub struct Affine<'a, O: Ops + ?Sized> {
    pub weight: &'a VectorOf<O>,
    pub bias: &'a VectorOf<O>,
    pub eps: f32,
}

/// What a forward runs on. Tensors are row-major with the channel last; an operation reads and
/// writes whole buffers, their rows counted from their lengths.
pub trait Ops {
    /// The storage of the weights this runs.
    type Backend: Backend;
    /// f32 values: the residual stream and the outputs that leave the model.
    type F32;
    /// What matrix products read and write: f32 on the CPU, bf16 on a device.
    type Act;

    /// `n` f32 zeros.
    fn f32s(&self, n: usize) -> Result<Self::F32>;

    /// `n` activations, zero.
    fn acts(&self, n: usize) -> Result<Self::Act>;

    /// Rows of `table`, `cols` values each.
    fn table_rows(&self, table: &TableOf<Self>, cols: usize) -> usize;

    /// Output columns of `lin` as stored: its `out` features, or more where attention heads sit
    /// in wider slots ([`Backend::linear_heads`]).
    fn out_width(&self, lin: &LinearOf<Self>) -> usize;

    /// `out [B, L, D]`: the rows `lookup` names.
    fn embed(&self, lookup: Lookup<'_, Self>, out: &mut Self::F32) -> Result<()>;

    /// LayerNorm of the rows `x [M, D]` into `out [M, D]`.
    fn layer_norm(&self, x: &Self::F32, norm: Affine<'_, Self>, out: &mut Self::Act) -> Result<()>;

    /// `x [M, K] · Wᵀ + b` into `out`, as `out` says.
    fn linear(&self, lin: &LinearOf<Self>, x: &Self::Act, out: Out<'_, Self>) -> Result<()>;

    /// Softmax attention, scale `1/sqrt(Dh)`, of the heads `qkv = (q, k, v)`, `[B, L, H, Dh]`
    /// each (as [`Backend::linear_heads`] lays them out), into `out`, alike.
    fn attention(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut Self::Act) -> Result<()>;

    /// `out = x`, of one length.
    fn copy(&self, x: &Self::F32, out: &mut Self::F32) -> Result<()>;

    /// `out [R, D]`: row `rows[i]` of `x [M, D]` at row `i`, `R` the length of `rows`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize], out: &mut Self::Act) -> Result<()>;
}

/// An embedding lookup ([`Ops::embed`]): row `i` of `ids [B, L]` is `tokens[ids[i]] +
/// positions[i mod L]`, of the tables `[V, D]` and `[P, D]` (`P >= L`); the ids are checked
/// against `V` by the caller.
pub struct Lookup<'a, O: Ops + ?Sized> {
    pub tokens: &'a TableOf<O>,
    pub positions: &'a TableOf<O>,
    /// `[B, L]`
    pub ids: &'a [i64],
    /// `L`
    pub len: usize,
}

/// The shape of an attention ([`Ops::attention`]): `batch` items of `len` positions, `heads`
/// heads; `causal` masks the keys after each query.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    pub causal: bool,
}

/// The `(q, k, v)` heads of [`Ops::attention`].
pub type Qkv<'a, O> = (
    &'a <O as Ops>::Act,
    &'a <O as Ops>::Act,
    &'a <O as Ops>::Act,
);

/// The CPU kernels on f32 activations, the products in the arithmetic of the weights they use
/// ([`crate::weights::Vb::with_compute`]) and the attention's products in `compute`.
#[derive(Debug, Clone, Copy)]
pub struct CpuOps {
    pub compute: Compute,
}

impl Ops for CpuOps {
    type Backend = Cpu;
    type F32 = Vec<f32>;
    type Act = Vec<f32>;

    fn f32s(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn acts(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn table_rows(&self, table: &Vec<f32>, cols: usize) -> usize {
        table.len() / cols
    }

    fn out_width(&self, lin: &LinearOf<Self>) -> usize {
        lin.out_dim
    }

    fn embed(&self, lookup: Lookup<'_, Self>, out: &mut Vec<f32>) -> Result<()> {
        let (ids, len) = (lookup.ids, lookup.len);
        let d = out.len() / ids.len();
        for (i, (&id, row)) in ids.iter().zip(out.chunks_exact_mut(d)).enumerate() {
            let tok = &lookup.tokens[id as usize * d..(id as usize + 1) * d];
            let pos = &lookup.positions[(i % len) * d..(i % len + 1) * d];
            for ((v, t), p) in row.iter_mut().zip(tok).zip(pos) {
                *v = t + p;
            }
        }
        Ok(())
    }

    fn layer_norm(&self, x: &Vec<f32>, norm: Affine<'_, Self>, out: &mut Vec<f32>) -> Result<()> {
        let d = norm.weight.len();
        out.copy_from_slice(x);
        norm::layer_norm_(out, d, norm.eps);
        for row in out.chunks_exact_mut(d) {
            for ((v, w), b) in row.iter_mut().zip(norm.weight).zip(norm.bias) {
                *v = *v * w + b;
            }
        }
        Ok(())
    }

    fn linear(&self, lin: &LinearOf<Self>, x: &Vec<f32>, out: Out<'_, Self>) -> Result<()> {
        match out {
            Out::Act(y) | Out::F32(y) => lin.forward_into(x, y),
            Out::Activated(y, activation) => {
                lin.forward_into(x, y);
                match activation {
                    Activation::GeluErf => act::gelu_erf_(y),
                    Activation::QuickGelu => act::quick_gelu_(y),
                    Activation::GeluTanh => act::gelu_tanh_(y),
                }
            }
            Out::Residual(y) => {
                let r = lin.forward(x); // [M, N]
                y.iter_mut().zip(&r).for_each(|(v, a)| *v += a);
            }
        }
        Ok(())
    }

    fn attention(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut Vec<f32>) -> Result<()> {
        let (q, k, v) = qkv;
        let dims = (shape.batch, shape.len, shape.heads);
        attention_into((q, k, v), dims, shape.causal, self.compute, out);
        Ok(())
    }

    fn copy(&self, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        out.copy_from_slice(x);
        Ok(())
    }

    fn gather_rows(&self, x: &Vec<f32>, rows: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let d = out.len() / rows.len();
        for (&r, row) in rows.iter().zip(out.chunks_exact_mut(d)) {
            row.copy_from_slice(&x[r * d..(r + 1) * d]);
        }
        Ok(())
    }
}
