//! [`Ops`] on the CUDA kernels: the residual stream and the outputs f32, what the matrix
//! products read and write bf16; attention heads in the slots [`super::backend::Heads`] lays out
//! (the projections' outputs padded with zeros, `crate::backend::Backend::linear_heads`). The
//! fused paths: an activation or a residual add in the GEMM's epilogue.

use muddit_kernels::cuda::common::Act;
use muddit_kernels::cuda::gemm::{GemmOpts, GemmOut};

use super::backend::{Cuda, DLinear};
use super::Buffer;
use crate::error::{Error, Result};
use crate::ops::{Activation, Affine, AttnShape, Lookup, Ops, Out, Qkv};

impl Ops for Cuda {
    type Backend = Cuda;
    type F32 = Buffer<f32>;
    type Act = Buffer<u16>;

    fn f32s(&self, n: usize) -> Result<Buffer<f32>> {
        Ok(self.dev.zeros(n)?)
    }

    fn acts(&self, n: usize) -> Result<Buffer<u16>> {
        Ok(self.dev.zeros(n)?)
    }

    fn table_rows(&self, table: &Buffer<u16>, cols: usize) -> usize {
        table.len() / cols
    }

    fn out_width(&self, lin: &DLinear) -> usize {
        lin.mat().n
    }

    /// Only the ids go up, as `u32`.
    fn embed(&self, lookup: Lookup<'_, Self>, out: &mut Buffer<f32>) -> Result<()> {
        let (rows, d) = (lookup.ids.len(), out.len() / lookup.ids.len());
        let ids32: Vec<u32> = lookup.ids.iter().map(|&i| i as u32).collect();
        let ids = self.dev.upload(&ids32)?;
        let table = (lookup.tokens.ptr(), lookup.tokens.len() / d);
        let pos = Some((lookup.positions.ptr(), lookup.len));
        Ok(self
            .dev
            .embedding(ids.ptr(), table, pos, out.ptr(), rows, d)?)
    }

    fn layer_norm(
        &self,
        x: &Buffer<f32>,
        norm: Affine<'_, Self>,
        out: &mut Buffer<u16>,
    ) -> Result<()> {
        let d = norm.weight.len();
        let affine = (norm.weight.ptr(), norm.bias.ptr());
        let (x, rows) = (x.ptr(), x.len() / d);
        Ok(self
            .dev
            .layer_norm_affine(x, out.ptr(), rows, d, affine, norm.eps)?)
    }

    /// The epilogue `out` names: bf16, bf16 after an activation, f32, or added to f32.
    fn linear(&self, lin: &DLinear, x: &Buffer<u16>, out: Out<'_, Self>) -> Result<()> {
        let (w, a, rows) = (lin.mat(), x.ptr(), x.len() / lin.mat().k);
        let (dev, plain) = (&self.dev, GemmOpts::default());
        match out {
            Out::Act(y) => dev.gemm(GemmOut::Bf16, w, a, rows, y.ptr(), plain),
            Out::Activated(y, act) => {
                let opts = GemmOpts {
                    act: epilogue(act),
                    ..plain
                };
                dev.gemm(GemmOut::Bf16, w, a, rows, y.ptr(), opts)
            }
            Out::F32(y) => dev.gemm(GemmOut::F32, w, a, rows, y.ptr(), plain),
            Out::Residual(y) => dev.gemm(GemmOut::Residual, w, a, rows, y.ptr(), plain),
        }?;
        Ok(())
    }

    /// Heads in `Dp`-wide slots, the `Dh` true values first.
    fn attention(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut Buffer<u16>) -> Result<()> {
        let AttnShape {
            batch,
            len,
            heads,
            causal,
        } = shape;
        let Some(slots) = self.heads.filter(|slots| slots.h == heads) else {
            return Err(Error::input(
                "num_attention_heads",
                format!("{heads} heads, not the layout the weights were loaded with"),
            ));
        };
        let (q, k, v) = qkv;
        let qkv = (q.ptr(), k.ptr(), v.ptr());
        let (o, dims) = ((out.ptr(), slots.width()), (slots.dh, slots.dp));
        Ok(self
            .dev
            .attention(qkv, o, (batch, len, heads), dims, causal)?)
    }

    fn copy(&self, x: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
        Ok(self.dev.copy(x.ptr(), out.ptr(), x.len())?)
    }

    /// One copy per row.
    fn gather_rows(&self, x: &Buffer<u16>, rows: &[usize], out: &mut Buffer<u16>) -> Result<()> {
        let d = out.len() / rows.len();
        for (i, &r) in rows.iter().enumerate() {
            self.dev.copy(x.at(r * d)?, out.at(i * d)?, d)?;
        }
        Ok(())
    }
}

/// The GEMM epilogue's activation for `act`.
fn epilogue(act: Activation) -> Act {
    match act {
        Activation::GeluErf => Act::GeluErf,
        Activation::QuickGelu => Act::QuickGelu,
        Activation::GeluTanh => Act::GeluTanh,
    }
}
