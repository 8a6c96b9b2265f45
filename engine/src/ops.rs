//! The operations a model's forward is written against, once for every backend.
//!
//! A forward (`clip_text/forward.rs`) takes an [`Ops`]: the layers hold the weights in its
//! [`Backend`]'s storage, the activations are its own types, and every operation writes into an
//! output the forward allocated beforehand ([`Ops::f32s`], [`Ops::acts`]). A device backend thus
//! launches into buffers that every layer reuses, and the CPU allocates once per forward rather
//! than once per operation. A path that one backend fuses is one operation here, the other
//! backend's implementation being the plain sequence: an [`Out`] kind (an activation, a residual
//! add, a gated residual add, a row map: the device does each in its GEMM's epilogue),
//! [`Ops::qk_norm_rope`] (one launch on the device), [`Ops::modulate`].
//!
//! [`CpuOps`] runs on `muddit_kernels::cpu` (f32 activations); `crate::cuda::Cuda` on the CUDA
//! kernels (an f32 residual stream, bf16 activations, attention heads in the kernels' slots).

use std::cell::Cell;

use crate::backend::{Backend, Cpu};
use crate::error::Result;
use crate::nn::{attention_into, Input, Linear, NORM_EPS};
use muddit_kernels::cpu::packed::{Compute, Epilogue};
use muddit_kernels::cpu::{act, norm, rope};
use muddit_sampler::Guidance;
use rayon::prelude::*;

/// An element-wise activation after a matrix product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with erf.
    GeluErf,
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// GELU's tanh approximation.
    GeluTanh,
    /// `x * sigmoid(x)`.
    Silu,
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
    /// `out [R, N] += y` on every row, of a product of one row `[1, N]`.
    Broadcast(&'a mut O::F32),
    /// `out += gate * y`, the gate chunk `c` of each item's modulation: `Gated(out, mods, c)`.
    Gated(&'a mut O::F32, Chunks<'a, O>, usize),
    /// `y` into the rows `rows` of `out`, the others kept (q, k, v of one stream into the joint
    /// sequence's buffers).
    Rows(&'a mut O::Act, Rows),
    /// `act(y)` into the right part of a [`Ops::Cat`].
    Right(&'a mut O::Cat, Activation),
}

/// Rows `offset..offset + per` of each of `batch` items of `stride` rows: the text (`offset`
/// 0, `per = L`) or the image (`offset = L`, `per = N`) part of a joint `[B, L + N, ..]` buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub batch: usize,
    pub per: usize,
    pub stride: usize,
    pub offset: usize,
}

impl Rows {
    /// Every row of `batch` items of `per` rows.
    pub fn all(batch: usize, per: usize) -> Rows {
        Rows {
            batch,
            per,
            stride: per,
            offset: 0,
        }
    }

    /// Rows `offset..offset + per` of each item of `stride` rows.
    pub fn part(batch: usize, (per, stride, offset): (usize, usize, usize)) -> Rows {
        Rows {
            batch,
            per,
            stride,
            offset,
        }
    }

    /// The rows named: `batch * per`.
    pub fn count(&self) -> usize {
        self.batch * self.per
    }

    /// The first row of item `b`.
    pub fn start(&self, b: usize) -> usize {
        b * self.stride + self.offset
    }
}

/// Per-item modulation vectors: chunk `c` of item `b` is `mods[b, c * width..(c + 1) * width]`
/// of `mods [B, chunks * width]`, and applies to the `per` rows of item `b`.
pub struct Chunks<'a, O: Ops + ?Sized> {
    pub mods: &'a O::F32,
    pub chunks: usize,
    pub width: usize,
    pub per: usize,
}

impl<O: Ops + ?Sized> Clone for Chunks<'_, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<O: Ops + ?Sized> Copy for Chunks<'_, O> {}

/// Which way [`Ops::patches`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patches {
    /// 2x2 patches to pixels of half the grid (the down block).
    Merge,
    /// Pixels to 2x2 patches of twice the grid (the up block).
    Split,
}

/// An image grid of `[B, h, w, C]` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
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
    /// Token ids as a lookup reads them: `[i64]` on the CPU, `u32` on a device.
    type Ids: ?Sized;
    /// Two activations `[M, Ka]` and `[M, Kb]` that one product reads side by side as
    /// `[M, Ka + Kb]` ([`Ops::linear_cat`]): one buffer on a device, two on the CPU.
    type Cat;

    /// `n` f32 zeros.
    fn f32s(&self, n: usize) -> Result<Self::F32>;

    /// `n` activations, zero.
    fn acts(&self, n: usize) -> Result<Self::Act>;

    /// `values` in f32.
    fn upload(&self, values: &[f32]) -> Result<Self::F32>;

    /// `[rows, ka + kb]`, zero.
    fn cat(&self, rows: usize, ka: usize, kb: usize) -> Result<Self::Cat>;

    /// Rows of `table`, `cols` values each.
    fn table_rows(&self, table: &TableOf<Self>, cols: usize) -> usize;

    /// Output columns of `lin` as stored: its `out` features, or more where attention heads sit
    /// in wider slots ([`Backend::linear_heads`]).
    fn out_width(&self, lin: &LinearOf<Self>) -> usize;

    /// `out [B, L, D]`: the rows `lookup` names.
    fn embed(&self, lookup: Lookup<'_, Self>, out: &mut Self::F32) -> Result<()>;

    /// `out [R, D]`: row `ids[i]` of `table` at row `i` (ids checked by the caller).
    fn gather(&self, table: &TableOf<Self>, ids: &Self::Ids, out: &mut Self::Act) -> Result<()>;

    /// LayerNorm of the rows `x [M, D]` into `out [M, D]`, with `affine`'s weights and eps, or
    /// none and eps `NORM_EPS`.
    fn layer_norm(
        &self,
        x: &Self::F32,
        d: usize,
        affine: Option<Affine<'_, Self>>,
        out: &mut Self::Act,
    ) -> Result<()>;

    /// RMSNorm of the rows `x [M, D]` in place, `weight [D]`, eps `NORM_EPS`.
    fn rms_norm_(&self, x: &mut Self::Act, weight: &VectorOf<Self>) -> Result<()>;

    /// `LayerNorm(x) * (1 + scale) + shift` of the rows `x [M, D]` into `out`, `shift` and
    /// `scale` the chunks `(shift, scale)` of each item's modulation.
    fn modulate(
        &self,
        x: &Self::F32,
        mods: Chunks<'_, Self>,
        shift_scale: (usize, usize),
        out: &mut Self::Act,
    ) -> Result<()>;

    /// The rows `rows` of `x [.., H, Dh]` (q or k in a joint buffer) RMS-normalised per head
    /// (`weight [Dh]`), then rotated by the tables `(cos, sin)` `[S, Dh]` of the joint sequence.
    fn qk_norm_rope(
        &self,
        x: &mut Self::Act,
        rows: Rows,
        weight: &VectorOf<Self>,
        rope: (&Self::F32, &Self::F32),
    ) -> Result<()>;

    /// `x [M, K] · Wᵀ + b` into `out`, as `out` says.
    fn linear(&self, lin: &LinearOf<Self>, x: &Self::Act, out: Out<'_, Self>) -> Result<()>;

    /// [`Ops::linear`] of the same `x` with each of `products`, in any order (a backend may
    /// read `x` once for all of them).
    fn linears(
        &self,
        x: &Self::Act,
        products: Vec<(&LinearOf<Self>, Out<'_, Self>)>,
    ) -> Result<()> {
        for (lin, out) in products {
            self.linear(lin, x, out)?;
        }
        Ok(())
    }

    /// [`Ops::linear`] of the rows `rows` of `x`.
    fn linear_rows(
        &self,
        lin: &LinearOf<Self>,
        x: &Self::Act,
        rows: Rows,
        out: Out<'_, Self>,
    ) -> Result<()>;

    /// [`Ops::linear`] of the two parts of `x` side by side.
    fn linear_cat(&self, lin: &LinearOf<Self>, x: &Self::Cat, out: Out<'_, Self>) -> Result<()>;

    /// A 2x2 stride-2 convolution (`Patches::Merge`, held as a linear map of patches
    /// `[(ki, kj, C)] -> [O]`: `x [B, h, w, C]` -> `out [B, h/2, w/2, O]`, `h`, `w` even) or
    /// transposed convolution (`Patches::Split`, a linear map `[C] -> [(ki, kj, O)]`:
    /// `x [B, h, w, C]` -> `out [B, 2h, 2w, O]`); `grid` is `x`'s.
    fn patches(
        &self,
        lin: &LinearOf<Self>,
        x: (&Self::Act, Grid),
        dir: Patches,
        out: &mut Self::Act,
    ) -> Result<()>;

    /// Softmax attention, scale `1/sqrt(Dh)`, of the heads `qkv = (q, k, v)`, `[B, L, H, Dh]`
    /// each (as [`Backend::linear_heads`] lays them out), into `out`, alike.
    fn attention(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut Self::Act) -> Result<()>;

    /// [`Ops::attention`] into the left part of `out`.
    fn attention_cat(
        &self,
        qkv: Qkv<'_, Self>,
        shape: AttnShape,
        out: &mut Self::Cat,
    ) -> Result<()>;

    /// `out = act(x)` (or `x`) as activations, of one length.
    fn cast(&self, x: &Self::F32, act: Option<Activation>, out: &mut Self::Act) -> Result<()>;

    /// `out = x` in f32, of one length.
    fn widen(&self, x: &Self::Act, out: &mut Self::F32) -> Result<()>;

    /// Classifier-free guidance on the input of a linear head: `out = u + scale (c - u)` of the
    /// halves of `x = [u; c]`, `out` half as long as `x`.
    fn guide(&self, x: &Self::Act, scale: f32, out: &mut Self::Act) -> Result<()>;

    /// `out = x`, of one length.
    fn copy(&self, x: &Self::F32, out: &mut Self::F32) -> Result<()>;

    /// The rows `from` of `x` into the rows `to` of `out` (one count and row width).
    fn copy_rows(&self, x: (&Self::F32, Rows), out: (&mut Self::F32, Rows)) -> Result<()>;

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

/// [`Ops::Cat`] on the CPU: the two parts, read side by side by the packing of the product.
pub struct CpuCat {
    /// `[M, Ka]`
    pub left: Vec<f32>,
    /// `[M, Kb]`
    pub right: Vec<f32>,
    ka: usize,
}

thread_local! {
    /// The temporary of [`CpuOps::product`], kept by each thread between products: the steps
    /// of a run reuse memory already mapped, and nothing zeroes it (the product writes it all).
    static TEMPORARY: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl CpuOps {
    /// The product of `x` with `lin` where `out` says: `Rows` straight into each item's rows,
    /// `Residual`, `Broadcast` and `Gated` through a temporary.
    fn product(&self, lin: &Linear, x: Input<'_>, out: Out<'_, Self>) -> Result<()> {
        let n = lin.out_dim;
        match out {
            Out::Act(y) | Out::F32(y) => lin.apply(x, Epilogue::None, y),
            Out::Activated(y, activation) => activated(lin, x, activation, y),
            Out::Right(cat, activation) => activated(lin, x, activation, &mut cat.right),
            Out::Residual(y) => with_temporary(lin, x, |r| {
                // [M, N]
                y.par_chunks_mut(n)
                    .zip(r.par_chunks(n))
                    .with_min_len((16384 / n.max(1)).max(1))
                    .for_each(|(v, a)| v.iter_mut().zip(a).for_each(|(v, a)| *v += a));
            }),
            Out::Broadcast(y) => with_temporary(lin, x, |r| {
                // [1, N]
                for row in y.chunks_exact_mut(r.len()) {
                    row.iter_mut().zip(r).for_each(|(v, a)| *v += a);
                }
            }),
            Out::Gated(y, mods, gate) => with_temporary(lin, x, |r| gated_add_(y, r, mods, gate)),
            Out::Rows(y, rows) if rows.per == rows.stride || rows.batch == 1 => lin.apply(
                x,
                Epilogue::None,
                &mut y[rows.start(0) * n..][..rows.count() * n],
            ),
            Out::Rows(y, rows) => {
                for b in 0..rows.batch {
                    let item = x.row_range(lin.in_dim, b * rows.per..(b + 1) * rows.per);
                    let dst = &mut y[rows.start(b) * n..][..rows.per * n];
                    lin.apply(item, Epilogue::None, dst);
                }
            }
        }
        Ok(())
    }
}

/// `then(x · Wᵀ + b)`, the product in this thread's [`TEMPORARY`].
fn with_temporary(lin: &Linear, x: Input<'_>, then: impl FnOnce(&[f32])) {
    let mut y = TEMPORARY.take();
    // Only memory the buffer has not held yet is zeroed, and the product overwrites all of it.
    y.resize(x.rows(lin.in_dim) * lin.out_dim, 0.0);
    lin.apply(x, Epilogue::None, &mut y);
    then(&y);
    TEMPORARY.set(y);
}

/// `y = act(x · Wᵀ + b)`, GELU-tanh in the product's epilogue.
fn activated(lin: &Linear, x: Input<'_>, activation: Activation, y: &mut [f32]) {
    if activation == Activation::GeluTanh {
        return lin.apply(x, Epilogue::GeluTanh, y);
    }
    lin.apply(x, Epilogue::None, y);
    activate_(y, activation);
}

/// `y = act(y)`.
fn activate_(y: &mut [f32], activation: Activation) {
    match activation {
        Activation::GeluErf => act::gelu_erf_(y),
        Activation::QuickGelu => act::quick_gelu_(y),
        Activation::GeluTanh => act::gelu_tanh_(y),
        Activation::Silu => act::silu_(y),
    }
}

/// `x += gate * y` for the rows of `x, y [B, S, D]`, item `b`'s `gate [D]` chunk `gate` of its
/// modulation.
fn gated_add_(x: &mut [f32], y: &[f32], mods: Chunks<'_, CpuOps>, gate: usize) {
    let d = mods.width;
    let per_item = mods.per * d;
    for (b, (xb, yb)) in x.chunks_mut(per_item).zip(y.chunks(per_item)).enumerate() {
        let at = (b * mods.chunks + gate) * d;
        let gate = &mods.mods[at..at + d];
        xb.par_chunks_mut(d)
            .zip(yb.par_chunks(d))
            .with_min_len(64)
            .for_each(|(xr, yr)| {
                for ((xv, yv), g) in xr.iter_mut().zip(yr).zip(gate) {
                    *xv += g * yv;
                }
            });
    }
}

impl Ops for CpuOps {
    type Backend = Cpu;
    type F32 = Vec<f32>;
    type Act = Vec<f32>;
    type Ids = [i64];
    type Cat = CpuCat;

    fn f32s(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn acts(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn upload(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn cat(&self, rows: usize, ka: usize, kb: usize) -> Result<CpuCat> {
        Ok(CpuCat {
            left: vec![0.0; rows * ka],
            right: vec![0.0; rows * kb],
            ka,
        })
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

    fn gather(&self, table: &Vec<f32>, ids: &[i64], out: &mut Vec<f32>) -> Result<()> {
        let d = out.len() / ids.len().max(1);
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(d)) {
            row.copy_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
        }
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &Vec<f32>,
        d: usize,
        affine: Option<Affine<'_, Self>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        out.copy_from_slice(x);
        let Some(norm) = affine else {
            norm::layer_norm_(out, d, NORM_EPS);
            return Ok(());
        };
        norm::layer_norm_(out, d, norm.eps);
        for row in out.chunks_exact_mut(d) {
            for ((v, w), b) in row.iter_mut().zip(norm.weight).zip(norm.bias) {
                *v = *v * w + b;
            }
        }
        Ok(())
    }

    fn rms_norm_(&self, x: &mut Vec<f32>, weight: &Vec<f32>) -> Result<()> {
        norm::rms_norm_(x, weight, NORM_EPS);
        Ok(())
    }

    fn modulate(
        &self,
        x: &Vec<f32>,
        mods: Chunks<'_, Self>,
        (shift, scale): (usize, usize),
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let d = mods.width;
        let per_item = mods.per * d;
        for (b, (xb, ob)) in x.chunks(per_item).zip(out.chunks_mut(per_item)).enumerate() {
            let row = &mods.mods[b * mods.chunks * d..(b + 1) * mods.chunks * d];
            let chunk = |c: usize| &row[c * d..(c + 1) * d];
            norm::layer_norm_modulate(xb, chunk(shift), chunk(scale), NORM_EPS, ob);
        }
        Ok(())
    }

    /// `rms_norm_` per head, then the rotation, item by item, in one pass.
    fn qk_norm_rope(
        &self,
        x: &mut Vec<f32>,
        rows: Rows,
        weight: &Vec<f32>,
        (cos, sin): (&Vec<f32>, &Vec<f32>),
    ) -> Result<()> {
        let dh = weight.len();
        let width = x.len() / (rows.batch * rows.stride); // H * Dh
        let tables = rows.offset * dh..(rows.offset + rows.per) * dh;
        for b in 0..rows.batch {
            let part = &mut x[rows.start(b) * width..][..rows.per * width];
            let (c, s) = (&cos[tables.clone()], &sin[tables.clone()]);
            rope::rms_norm_rope_(part, weight, NORM_EPS, c, s);
        }
        Ok(())
    }

    fn linear(&self, lin: &Linear, x: &Vec<f32>, out: Out<'_, Self>) -> Result<()> {
        self.product(lin, Input::Rows(x), out)
    }

    /// One packing of `x` for all the products where each writes its result whole and in
    /// place ([`Linear::apply_many`]), item by item where all write the same part of the rows
    /// of their outputs; else one product after another.
    fn linears(&self, x: &Vec<f32>, products: Vec<(&Linear, Out<'_, Self>)>) -> Result<()> {
        let parts = match products.first() {
            Some((_, Out::Rows(_, r))) if r.per != r.stride && r.batch > 1 => Some(*r),
            _ => None,
        };
        let direct = |out: &Out<'_, Self>| match out {
            Out::Act(_) | Out::F32(_) => parts.is_none(),
            Out::Activated(_, a) | Out::Right(_, a) => {
                parts.is_none() && *a == Activation::GeluTanh
            }
            Out::Rows(_, r) => parts.map_or(r.per == r.stride || r.batch == 1, |p| p == *r),
            _ => false,
        };
        if !products.iter().all(|(_, out)| direct(out)) {
            for (lin, out) in products {
                self.linear(lin, x, out)?;
            }
            return Ok(());
        }
        let mut whole: Vec<(&Linear, Epilogue, &mut [f32])> = products
            .into_iter()
            .map(|(lin, out)| {
                let n = lin.out_dim;
                match out {
                    Out::Act(y) | Out::F32(y) => (lin, Epilogue::None, &mut y[..]),
                    Out::Activated(y, _) => (lin, Epilogue::GeluTanh, &mut y[..]),
                    Out::Right(cat, _) => (lin, Epilogue::GeluTanh, &mut cat.right[..]),
                    Out::Rows(y, r) => {
                        // From item 0's first row to item B-1's last.
                        let span = (r.batch - 1) * r.stride + r.per;
                        (lin, Epilogue::None, &mut y[r.start(0) * n..][..span * n])
                    }
                    _ => unreachable!("only direct outputs come here"),
                }
            })
            .collect();
        let Some(rows) = parts else {
            Linear::apply_many(x, &mut whole);
            return Ok(());
        };
        let k = x.len() / rows.count().max(1);
        for b in 0..rows.batch {
            let xb = &x[b * rows.per * k..][..rows.per * k];
            let mut item: Vec<(&Linear, Epilogue, &mut [f32])> = whole
                .iter_mut()
                .map(|(lin, epilogue, y)| {
                    let n = lin.out_dim;
                    (
                        *lin,
                        *epilogue,
                        &mut y[b * rows.stride * n..][..rows.per * n],
                    )
                })
                .collect();
            Linear::apply_many(xb, &mut item);
        }
        Ok(())
    }

    /// The rows gathered first.
    fn linear_rows(
        &self,
        lin: &Linear,
        x: &Vec<f32>,
        rows: Rows,
        out: Out<'_, Self>,
    ) -> Result<()> {
        let k = lin.in_dim;
        let mut picked = Vec::with_capacity(rows.count() * k);
        for b in 0..rows.batch {
            picked.extend_from_slice(&x[rows.start(b) * k..][..rows.per * k]);
        }
        self.product(lin, Input::Rows(&picked), out)
    }

    fn linear_cat(&self, lin: &Linear, x: &CpuCat, out: Out<'_, Self>) -> Result<()> {
        self.product(lin, Input::Concat(&x.left, x.ka, &x.right), out)
    }

    /// Merge: the patches gathered, then one product; split: one product, then its taps
    /// scattered.
    fn patches(
        &self,
        lin: &Linear,
        (x, g): (&Vec<f32>, Grid),
        dir: Patches,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // Pixel (b, i, j) of the small grid and its tap (ki, kj) in the large one.
        let small = match dir {
            Patches::Merge => (g.h / 2, g.w / 2),
            Patches::Split => (g.h, g.w),
        };
        let taps = (0..g.batch).flat_map(|b| {
            (0..small.0).flat_map(move |i| {
                (0..small.1).flat_map(move |j| TAPS.into_iter().map(move |t| (b, i, j, t)))
            })
        });
        let large_at = |(b, i, j, (ki, kj)): (usize, usize, usize, (usize, usize))| {
            (b * 2 * small.0 + 2 * i + ki) * 2 * small.1 + 2 * j + kj
        };
        match dir {
            Patches::Merge => {
                let d = x.len() / (g.batch * g.h * g.w);
                let mut patches = Vec::with_capacity(x.len()); // [B, h/2, w/2, (2, 2, C)]
                for tap in taps {
                    let at = large_at(tap) * d;
                    patches.extend_from_slice(&x[at..at + d]);
                }
                lin.forward_into(&patches, out);
            }
            Patches::Split => {
                let y = lin.forward(x); // [B, h, w, (2, 2, O)]
                let d = lin.out_dim / 4;
                for (src, tap) in y.chunks_exact(d).zip(taps) {
                    let at = large_at(tap) * d;
                    out[at..at + d].copy_from_slice(src);
                }
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

    fn attention_cat(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut CpuCat) -> Result<()> {
        self.attention(qkv, shape, &mut out.left)
    }

    fn cast(&self, x: &Vec<f32>, activation: Option<Activation>, out: &mut Vec<f32>) -> Result<()> {
        out.copy_from_slice(x);
        if let Some(activation) = activation {
            activate_(out, activation);
        }
        Ok(())
    }

    fn widen(&self, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        self.copy(x, out)
    }

    fn guide(&self, x: &Vec<f32>, scale: f32, out: &mut Vec<f32>) -> Result<()> {
        let (u, c) = x.split_at(out.len().min(x.len()));
        Ok(Guidance::Cfg { scale }.combine(u, c, out)?)
    }

    fn copy(&self, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        out.copy_from_slice(x);
        Ok(())
    }

    fn copy_rows(
        &self,
        (x, from): (&Vec<f32>, Rows),
        (out, to): (&mut Vec<f32>, Rows),
    ) -> Result<()> {
        let d = x.len() / (from.batch * from.stride);
        for b in 0..from.batch {
            let src = &x[from.start(b) * d..][..from.per * d];
            out[to.start(b) * d..][..src.len()].copy_from_slice(src);
        }
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

/// The taps `(ki, kj)` of a 2x2 kernel, in the order its patches are stored.
pub const TAPS: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];
