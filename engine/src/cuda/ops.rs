//! [`Ops`] on the CUDA kernels: the residual stream and the outputs f32, what the matrix
//! products read and write bf16; attention heads in the slots [`super::backend::Heads`] lays out
//! (the projections' outputs padded with zeros, `crate::backend::Backend::linear_heads`). The
//! fused paths: an activation, a residual add (gated or not) and the row maps of the joint
//! sequence in the GEMM's epilogue, per-head RMSNorm and RoPE in one launch.

use muddit_kernels::cuda::common::{Act, RowMap};
use muddit_kernels::cuda::gemm::{Conv, GemmOpts, GemmOut};

use super::backend::{Cuda, DLinear, Heads};
use super::{Buffer, Ptr};
use crate::error::{Error, Result};
use crate::ops::{
    Activation, Affine, AttnShape, Chunks, Grid, Lookup, Ops, Out, Patches, Qkv, Rows, TAPS,
};

/// [`Ops::Cat`] on a device: one buffer `[M, Ka + Kb]`.
pub struct DCat {
    buf: Buffer<u16>,
    /// `Ka`, `Kb`
    left: usize,
    right: usize,
}

impl DCat {
    /// `Ka + Kb`
    fn width(&self) -> usize {
        self.left + self.right
    }

    fn rows(&self) -> usize {
        self.buf.len() / self.width().max(1)
    }
}

impl Cuda {
    /// The head layout of the model this runs, or an error naming `heads` when it is another.
    fn slots(&self, heads: usize) -> Result<Heads> {
        let slots = self.layout()?;
        if slots.h != heads {
            return Err(Error::input(
                "num_attention_heads",
                format!("{heads} heads, not the layout the weights were loaded with"),
            ));
        }
        Ok(slots)
    }

    /// The head layout the weights were loaded with.
    fn layout(&self) -> Result<Heads> {
        self.heads.ok_or_else(|| {
            Error::input(
                "num_attention_heads",
                "the weights were loaded without heads",
            )
        })
    }

    /// The product of `m` rows of `a` (through `opts`' row map and stride) with `lin`, written
    /// where `out` says.
    fn product(
        &self,
        lin: &DLinear,
        (a, m): (Ptr<u16>, usize),
        opts: GemmOpts,
        out: Out<'_, Self>,
    ) -> Result<()> {
        let (w, dev) = (lin.mat(), &self.dev);
        match out {
            Out::Act(y) => dev.gemm(GemmOut::Bf16, w, a, m, y.ptr(), opts),
            Out::Activated(y, act) => {
                let opts = GemmOpts {
                    act: epilogue(act),
                    ..opts
                };
                dev.gemm(GemmOut::Bf16, w, a, m, y.ptr(), opts)
            }
            Out::F32(y) => dev.gemm(GemmOut::F32, w, a, m, y.ptr(), opts),
            Out::Residual(y) => dev.gemm(GemmOut::Residual, w, a, m, y.ptr(), opts),
            Out::Broadcast(y) => {
                // Every output row reads the one row of `a`.
                let opts = GemmOpts {
                    a_map: RowMap::part(1, 0, 0),
                    ..opts
                };
                let rows = y.len() / w.n;
                dev.gemm(GemmOut::Residual, w, a, rows, y.ptr(), opts)
            }
            Out::Gated(y, mods, gate) => {
                let gate = (
                    mods.mods.at(gate * mods.width)?,
                    mods.chunks * mods.width,
                    mods.per,
                );
                let opts = GemmOpts {
                    gate: Some(gate),
                    ..opts
                };
                dev.gemm(GemmOut::Residual, w, a, m, y.ptr(), opts)
            }
            Out::Rows(y, rows) => {
                let opts = GemmOpts {
                    c_map: row_map(rows),
                    ..opts
                };
                dev.gemm(GemmOut::Bf16, w, a, m, y.ptr(), opts)
            }
            Out::Right(cat, act) => {
                let opts = GemmOpts {
                    ldc: cat.width(),
                    act: epilogue(act),
                    ..opts
                };
                dev.gemm(GemmOut::Bf16, w, a, m, cat.buf.at(cat.left)?, opts)
            }
        }?;
        Ok(())
    }
}

/// Ids as the kernels read them (checked against their table by the callers).
pub(crate) fn ids_u32(ids: &[i64]) -> Vec<u32> {
    ids.iter().map(|&i| i as u32).collect()
}

/// The kernels' row map of `rows`.
fn row_map(rows: Rows) -> RowMap {
    RowMap::part(rows.per, rows.stride, rows.offset)
}

impl Ops for Cuda {
    type Backend = Cuda;
    type F32 = Buffer<f32>;
    type Act = Buffer<u16>;
    type Ids = Buffer<u32>;
    type Cat = DCat;

    fn f32s(&self, n: usize) -> Result<Buffer<f32>> {
        Ok(self.dev.zeros(n)?)
    }

    fn acts(&self, n: usize) -> Result<Buffer<u16>> {
        Ok(self.dev.zeros(n)?)
    }

    fn upload(&self, values: &[f32]) -> Result<Buffer<f32>> {
        Ok(self.dev.upload(values)?)
    }

    fn cat(&self, rows: usize, ka: usize, kb: usize) -> Result<DCat> {
        Ok(DCat {
            buf: self.dev.zeros(rows * (ka + kb))?,
            left: ka,
            right: kb,
        })
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
        let ids = self.dev.upload(&ids_u32(lookup.ids))?;
        let table = (lookup.tokens.ptr(), lookup.tokens.len() / d);
        let pos = Some((lookup.positions.ptr(), lookup.len));
        Ok(self
            .dev
            .embedding(ids.ptr(), table, pos, out.ptr(), rows, d)?)
    }

    fn gather(&self, table: &Buffer<u16>, ids: &Buffer<u32>, out: &mut Buffer<u16>) -> Result<()> {
        let (rows, d) = (ids.len(), out.len() / ids.len().max(1));
        let table = (table.ptr(), table.len() / d);
        Ok(self
            .dev
            .embedding(ids.ptr(), table, None, out.ptr(), rows, d)?)
    }

    fn layer_norm(
        &self,
        x: &Buffer<f32>,
        d: usize,
        affine: Option<Affine<'_, Self>>,
        out: &mut Buffer<u16>,
    ) -> Result<()> {
        let (dev, rows) = (&self.dev, x.len() / d);
        match affine {
            Some(norm) => {
                let weights = (norm.weight.ptr(), norm.bias.ptr());
                dev.layer_norm_affine(x.ptr(), out.ptr(), rows, d, weights, norm.eps)
            }
            None => dev.layer_norm(x.ptr(), out.ptr(), rows, d, None),
        }?;
        Ok(())
    }

    fn rms_norm_(&self, x: &mut Buffer<u16>, weight: &Buffer<f32>) -> Result<()> {
        let d = weight.len();
        let (x, rows) = (x.ptr(), x.len() / d);
        Ok(self.dev.rms_norm(x, x, weight.ptr(), rows, d)?)
    }

    fn modulate(
        &self,
        x: &Buffer<f32>,
        mods: Chunks<'_, Self>,
        (shift, scale): (usize, usize),
        out: &mut Buffer<u16>,
    ) -> Result<()> {
        let d = mods.width;
        let at = |c: usize| mods.mods.at(c * d);
        let item = (at(shift)?, at(scale)?, mods.chunks * d, mods.per);
        let rows = x.len() / d;
        Ok(self
            .dev
            .layer_norm(x.ptr(), out.ptr(), rows, d, Some(item))?)
    }

    /// One launch over the rows, heads in `Dp`-wide slots.
    fn qk_norm_rope(
        &self,
        x: &mut Buffer<u16>,
        rows: Rows,
        weight: &Buffer<f32>,
        (cos, sin): (&Buffer<f32>, &Buffer<f32>),
    ) -> Result<()> {
        let dh = weight.len();
        let width = x.len() / (rows.batch * rows.stride); // H * Dp
        let slots = self.layout()?;
        let geom = (slots.h, slots.dh, slots.dp);
        let tables = (cos.ptr(), sin.ptr(), cos.len() / dh);
        let map = row_map(rows);
        Ok(self.dev.qk_norm_rope(
            x.ptr(),
            width,
            map,
            rows.count(),
            geom,
            weight.ptr(),
            tables,
        )?)
    }

    /// The epilogue `out` names: bf16 (after an activation, through a row map, into a part of
    /// a wider buffer), f32, or added to f32 (gated).
    fn linear(&self, lin: &DLinear, x: &Buffer<u16>, out: Out<'_, Self>) -> Result<()> {
        let rows = x.len() / lin.mat().k;
        self.product(lin, (x.ptr(), rows), GemmOpts::default(), out)
    }

    /// The rows read through the GEMM's row map.
    fn linear_rows(
        &self,
        lin: &DLinear,
        x: &Buffer<u16>,
        rows: Rows,
        out: Out<'_, Self>,
    ) -> Result<()> {
        let opts = GemmOpts {
            a_map: row_map(rows),
            ..GemmOpts::default()
        };
        self.product(lin, (x.ptr(), rows.count()), opts, out)
    }

    fn linear_cat(&self, lin: &DLinear, x: &DCat, out: Out<'_, Self>) -> Result<()> {
        self.product(lin, (x.buf.ptr(), x.rows()), GemmOpts::default(), out)
    }

    /// Merge: an implicit-GEMM convolution, 2x2 stride 2; split: four GEMMs, one per tap,
    /// whose row maps scatter the pixels into the doubled grid.
    fn patches(
        &self,
        lin: &DLinear,
        (x, g): (&Buffer<u16>, Grid),
        dir: Patches,
        out: &mut Buffer<u16>,
    ) -> Result<()> {
        let (dev, px) = (&self.dev, g.batch * g.h * g.w);
        if dir == Patches::Merge {
            let geom = (g.h, g.w, x.len() / px);
            let conv = Conv::valid(2, 2);
            dev.conv2d(lin.mat(), x.ptr(), g.batch, geom, conv, None, out.ptr())?;
            return Ok(());
        }
        let d = lin.mat().n / 4;
        // Tap (ki, kj) of pixel (b, i, j) lands on (b, 2i + ki, 2j + kj): rows of two output
        // pixels (2D wide), item rows r = b * h + i at 2r + ki.
        for (kk, (ki, kj)) in TAPS.into_iter().enumerate() {
            let opts = GemmOpts {
                ldc: 2 * d,
                c_map: RowMap::part(g.w, 2 * g.w, ki * g.w),
                ..GemmOpts::default()
            };
            let tap = lin.rows(kk * d, d)?;
            dev.gemm(GemmOut::Bf16, tap, x.ptr(), px, out.at(kj * d)?, opts)?;
        }
        Ok(())
    }

    /// Heads in `Dp`-wide slots, the `Dh` true values first.
    fn attention(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut Buffer<u16>) -> Result<()> {
        let slots = self.slots(shape.heads)?;
        self.attend(qkv, shape, (out.ptr(), slots.width()))
    }

    fn attention_cat(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: &mut DCat) -> Result<()> {
        self.attend(qkv, shape, (out.buf.ptr(), out.width()))
    }

    fn cast(&self, x: &Buffer<f32>, act: Option<Activation>, out: &mut Buffer<u16>) -> Result<()> {
        let act = act.map_or(Act::None, epilogue);
        Ok(self.dev.act(act, x.ptr(), out.ptr(), x.len())?)
    }

    fn widen(&self, x: &Buffer<u16>, out: &mut Buffer<f32>) -> Result<()> {
        Ok(self.dev.act(Act::None, x.ptr(), out.ptr(), x.len())?)
    }

    fn guide(&self, x: &Buffer<u16>, scale: f32, out: &mut Buffer<u16>) -> Result<()> {
        Ok(self.dev.guide(x.ptr(), scale, out.ptr(), out.len())?)
    }

    fn copy(&self, x: &Buffer<f32>, out: &mut Buffer<f32>) -> Result<()> {
        Ok(self.dev.copy(x.ptr(), out.ptr(), x.len())?)
    }

    /// One copy per item.
    fn copy_rows(
        &self,
        (x, from): (&Buffer<f32>, Rows),
        (out, to): (&mut Buffer<f32>, Rows),
    ) -> Result<()> {
        let d = x.len() / (from.batch * from.stride);
        for b in 0..from.batch {
            let (src, dst) = (x.at(from.start(b) * d)?, out.at(to.start(b) * d)?);
            self.dev.copy(src, dst, from.per * d)?;
        }
        Ok(())
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

impl Cuda {
    /// Softmax attention of `qkv` into `out` (an address and its row stride).
    fn attend(&self, qkv: Qkv<'_, Self>, shape: AttnShape, out: (Ptr<u16>, usize)) -> Result<()> {
        let slots = self.slots(shape.heads)?;
        let (q, k, v) = qkv;
        let qkv = (q.ptr(), k.ptr(), v.ptr());
        let dims = (slots.dh, slots.dp);
        let shape3 = (shape.batch, shape.len, shape.heads);
        Ok(self.dev.attention(qkv, out, shape3, dims, shape.causal)?)
    }
}

/// The GEMM epilogue's activation for `act`.
fn epilogue(act: Activation) -> Act {
    match act {
        Activation::GeluErf => Act::GeluErf,
        Activation::QuickGelu => Act::QuickGelu,
        Activation::GeluTanh => Act::GeluTanh,
        Activation::Silu => Act::Silu,
    }
}
