//! The engine side of each kernel: takes [`Ptr`]s instead of raw addresses, checks that every
//! element the launch reaches lies inside its buffer, then plans (`muddit_kernels::cuda::ops`)
//! and runs it. These are the only callers of [`Device::launch`] in the engine.

use muddit_kernels::cuda::ops::{self, GemmOut};
use muddit_kernels::cuda::params::*;

use super::device::{Device, Ptr};
use crate::error::Result;
use crate::nn::NORM_EPS;

/// GroupNorm eps of every norm of the VQ-VAE family.
const GROUP_NORM_EPS: f32 = 1e-6;

/// Elements a `rows`-row strided matrix needs: `(last row) * stride + width`.
fn span(rows: usize, stride: usize, width: usize) -> usize {
    match rows {
        0 => 0,
        r => (r - 1) * stride + width,
    }
}

/// Elements reached by `m` logical rows through `map` with row stride `stride`.
fn mapped_span(map: RowMap, m: usize, stride: usize, width: usize) -> usize {
    match m {
        0 => 0,
        // Row maps are monotonic: the last logical row is the furthest physical one.
        m => map.row(m - 1) * stride + width,
    }
}

/// A weight matrix `[N, K]` bf16 with its optional f32 bias `[N]`, as one GEMM reads it.
#[derive(Clone, Copy)]
pub struct Mat {
    pub w: Ptr<u16>,
    pub bias: Option<Ptr<f32>>,
    pub n: usize,
    pub k: usize,
}

/// Geometry of one implicit-GEMM convolution: square kernel, stride, zero padding above and
/// left (below and right follow from the output size `out_hw`).
#[derive(Clone, Copy)]
struct Conv {
    ksize: usize,
    stride: usize,
    pad: usize,
    out_hw: (usize, usize),
}

/// The row maps, strides, activation and gate of one GEMM; `Default` is dense and plain.
#[derive(Clone, Copy)]
pub struct GemmOpts {
    /// 0: `K`.
    pub lda: usize,
    /// 0: `N`.
    pub ldc: usize,
    pub act: Act,
    pub a_map: RowMap,
    pub c_map: RowMap,
    /// Residual only: `(gate [items, gate_stride], gate_stride, rows_per_item)`.
    pub gate: Option<(Ptr<f32>, usize, usize)>,
    /// `Bf16` only: a bf16 residual added after the activation, indexed as C (may be C).
    pub res: Option<Ptr<u16>>,
}

impl Default for GemmOpts {
    fn default() -> Self {
        GemmOpts {
            lda: 0,
            ldc: 0,
            act: Act::None,
            a_map: RowMap::IDENTITY,
            c_map: RowMap::IDENTITY,
            gate: None,
            res: None,
        }
    }
}

impl Device {
    /// `C = epilogue(A · Wᵀ + bias)`: A bf16 `[m, K]`, C bf16 (`Bf16`) or f32 (`F32`,
    /// `Residual`: `C += gate * (..)`) `[m, N]`; `c` must be of the element type `out` writes.
    /// K is split (`ops::split_k`) where the output has too few tiles to fill the device.
    pub fn gemm<C>(
        &self,
        out: GemmOut,
        mat: Mat,
        a: Ptr<u16>,
        m: usize,
        c: Ptr<C>,
        o: GemmOpts,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let (lda, ldc) = (
            if o.lda == 0 { mat.k } else { o.lda },
            if o.ldc == 0 { mat.n } else { o.ldc },
        );
        let c_bytes = std::mem::size_of::<C>();
        let want = if out == GemmOut::Bf16 { 2 } else { 4 };
        if c_bytes != want {
            return Err(muddit_kernels::cuda::CudaError::InvalidLaunch {
                op: OP,
                reason: format!("{out:?} output needs {want}-byte elements"),
            }
            .into());
        }
        let mut p = GemmParams {
            a: a.need(mapped_span(o.a_map, m, lda, mat.k), OP, "A")?,
            w: mat.w.need(mat.n * mat.k, OP, "W")?,
            bias: match mat.bias {
                Some(b) => b.need(mat.n, OP, "bias")?,
                None => 0,
            },
            c: c.need(mapped_span(o.c_map, m, ldc, mat.n), OP, "C")?,
            res: match o.res {
                Some(r) => r.need(mapped_span(o.c_map, m, ldc, mat.n), OP, "res")?,
                None => 0,
            },
            m: m as i32,
            n: mat.n as i32,
            k: mat.k as i32,
            lda: lda as i32,
            ldc: ldc as i32,
            act: o.act as i32,
            rows_per_item: i32::MAX,
            a_map: o.a_map,
            c_map: o.c_map,
            ..GemmParams::default()
        };
        if let Some((gate, stride, per_item)) = o.gate {
            let items = m.div_ceil(per_item);
            p.gate = gate.need(span(items, stride, mat.n), OP, "gate")?;
            p.gate_stride = stride as i32;
            p.rows_per_item = per_item as i32;
        }
        let splits = ops::split_k(m, mat.n, mat.k, self.gemm_slots());
        let scratch = ops::split_k_scratch(m, mat.n, mat.k, splits);
        if scratch > 0 {
            p.partial = self.split_scratch(scratch)?.need(scratch, OP, "partials")?;
        }
        for launch in ops::gemm_split(out, p, splits)? {
            // SAFETY: every address comes from a `Ptr` of this device, checked above to hold
            // the rows the maps and strides reach (A, C, res), N x K (W), N (bias), the gate rows
            // and the split-K partials.
            unsafe { self.launch(&launch) }?;
        }
        Ok(())
    }

    /// `out [B, ho, wo, N] = conv(x [B, h, w, c]) (+ bias)`, kernel `ksize`, `stride`, no padding.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &self,
        mat: Mat,
        x: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
        ksize: usize,
        stride: usize,
        out: Ptr<u16>,
    ) -> Result<()> {
        let out_hw = (
            (h.saturating_sub(ksize)) / stride.max(1) + 1,
            (w.saturating_sub(ksize)) / stride.max(1) + 1,
        );
        let conv = Conv {
            ksize,
            stride,
            pad: 0,
            out_hw,
        };
        self.conv(mat, x, batch, (h, w, c), conv, None, out)
    }

    /// `out [B, h, w, N] = conv(x [B, h, w, c]) (+ bias) (+ res)`: an odd `ksize`, stride 1,
    /// zero padding `ksize / 2` on every side (the VQ decoder's 3x3 convolutions); `res` bf16
    /// `[B, h, w, N]` may be `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_same(
        &self,
        mat: Mat,
        x: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
        ksize: usize,
        res: Option<Ptr<u16>>,
        out: Ptr<u16>,
    ) -> Result<()> {
        let conv = Conv {
            ksize,
            stride: 1,
            pad: ksize / 2,
            out_hw: (h, w),
        };
        self.conv(mat, x, batch, (h, w, c), conv, res, out)
    }

    /// `out [B, ho, wo, N] = conv(x [B, h, w, c]) (+ bias)`: diffusers' `Downsample2D` of the
    /// VQ encoder, a `ksize` kernel at stride 2 with zero padding 0 above and left and 1 below
    /// and right, so `ho = (h + 1 - ksize) / 2 + 1` (`h / 2` for 3x3 and even `h`); returns
    /// `(ho, wo)`.
    pub fn conv2d_downsample(
        &self,
        mat: Mat,
        x: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
        ksize: usize,
        out: Ptr<u16>,
    ) -> Result<(usize, usize)> {
        let side = |n: usize| (n + 1).saturating_sub(ksize) / 2 + 1;
        let conv = Conv {
            ksize,
            stride: 2,
            pad: 0,
            out_hw: (side(h), side(w)),
        };
        self.conv(mat, x, batch, (h, w, c), conv, None, out)?;
        Ok(conv.out_hw)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        mat: Mat,
        x: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
        conv: Conv,
        res: Option<Ptr<u16>>,
        out: Ptr<u16>,
    ) -> Result<()> {
        const OP: &str = "conv2d";
        let (ho, wo) = conv.out_hw;
        let m = batch * ho * wo;
        let p = GemmParams {
            a: x.need(batch * h * w * c, OP, "x")?,
            w: mat.w.need(mat.n * mat.k, OP, "W")?,
            bias: match mat.bias {
                Some(b) => b.need(mat.n, OP, "bias")?,
                None => 0,
            },
            c: out.need(m * mat.n, OP, "out")?,
            res: match res {
                Some(r) => r.need(m * mat.n, OP, "res")?,
                None => 0,
            },
            conv: ConvGeom {
                h: h as i32,
                w: w as i32,
                c: c as i32,
                ho: ho as i32,
                wo: wo as i32,
                ksize: conv.ksize as i32,
                stride: conv.stride as i32,
                pad_t: conv.pad as i32,
                pad_l: conv.pad as i32,
                ..ConvGeom::default()
            },
            ..GemmParams::dense(0, 0, 0, m, mat.n, mat.k)
        };
        let launch = ops::conv2d(p)?;
        // SAFETY: image, weight, bias, residual and output ranges checked above; the kernel
        // reads only pixels inside the image (padding taps are zero-filled).
        unsafe { self.launch(&launch) }
    }

    /// RMSNorm (eps 1e-6) of bf16 rows `[rows, d]`, in place allowed; weight f32 `[d]`.
    pub fn rms_norm(
        &self,
        x: Ptr<u16>,
        out: Ptr<u16>,
        weight: Ptr<f32>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        let launch = ops::rms_norm(RmsNormParams {
            x: x.need(rows * d, OP, "x")?,
            out: out.need(rows * d, OP, "out")?,
            weight: weight.need(d, OP, "weight")?,
            rows: rows as i32,
            d: d as i32,
            x_stride: d as i32,
            out_stride: d as i32,
            eps: NORM_EPS,
            pad_: 0,
        })?;
        // SAFETY: rows x d elements of x and out, d of the weight, checked above.
        unsafe { self.launch(&launch) }
    }

    /// LayerNorm (eps 1e-6) of f32 rows `[rows, d]` to bf16: with `mods = Some((shift, scale,
    /// item_stride, rows_per_item))` times `1 + scale` plus `shift` per item, else plain.
    pub fn layer_norm(
        &self,
        x: Ptr<f32>,
        out: Ptr<u16>,
        rows: usize,
        d: usize,
        mods: Option<(Ptr<f32>, Ptr<f32>, usize, usize)>,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let mut p = LayerNormParams {
            x: x.need(rows * d, OP, "x")?,
            out: out.need(rows * d, OP, "out")?,
            rows: rows as i32,
            d: d as i32,
            x_stride: d as i32,
            out_stride: d as i32,
            rows_per_item: i32::MAX,
            item_stride: 0,
            scale_add: 1.0,
            eps: NORM_EPS,
            ..LayerNormParams::default()
        };
        if let Some((shift, scale, item_stride, per_item)) = mods {
            let need = span(rows.div_ceil(per_item), item_stride, d);
            p.shift = shift.need(need, OP, "shift")?;
            p.scale = scale.need(need, OP, "scale")?;
            p.item_stride = item_stride as i32;
            p.rows_per_item = per_item as i32;
        }
        let launch = ops::layer_norm(p)?;
        // SAFETY: x, out and the modulation rows checked above.
        unsafe { self.launch(&launch) }
    }

    /// LayerNorm of f32 rows `[rows, d]` to bf16 with affine f32 `weight`, `bias` `[d]` and
    /// `eps` (CLIP's `nn.LayerNorm`).
    pub fn layer_norm_affine(
        &self,
        x: Ptr<f32>,
        out: Ptr<u16>,
        rows: usize,
        d: usize,
        (weight, bias): (Ptr<f32>, Ptr<f32>),
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let launch = ops::layer_norm(LayerNormParams {
            x: x.need(rows * d, OP, "x")?,
            out: out.need(rows * d, OP, "out")?,
            scale: weight.need(d, OP, "weight")?,
            shift: bias.need(d, OP, "bias")?,
            rows: rows as i32,
            d: d as i32,
            x_stride: d as i32,
            out_stride: d as i32,
            rows_per_item: i32::MAX,
            item_stride: 0,
            scale_add: 0.0,
            eps,
        })?;
        // SAFETY: rows x d elements of x and out, d of the weight and bias, checked above.
        unsafe { self.launch(&launch) }
    }

    /// Per-head RMSNorm (weight f32 `[head_dim]`) and rotary positions (`cos, sin [seq,
    /// head_dim]`) of `heads` heads at column `h * head_stride` of `rows` rows through `map`,
    /// in place. Heads narrower than their stride (zero-padded for attention) are one launch
    /// each.
    #[allow(clippy::too_many_arguments)]
    pub fn qk_norm_rope(
        &self,
        x: Ptr<u16>,
        stride: usize,
        map: RowMap,
        rows: usize,
        (heads, head_dim, head_stride): (usize, usize, usize),
        weight: Ptr<f32>,
        (cos, sin, seq): (Ptr<f32>, Ptr<f32>, usize),
    ) -> Result<()> {
        const OP: &str = "qk_norm_rope";
        let reach = mapped_span(map, rows, stride, heads * head_stride);
        x.need(reach, OP, "x")?;
        let base = QkNormRopeParams {
            weight: weight.need(head_dim, OP, "weight")?,
            cos: cos.need(seq * head_dim, OP, "cos")?,
            sin: sin.need(seq * head_dim, OP, "sin")?,
            rows: rows as i32,
            head_dim: head_dim as i32,
            seq: seq as i32,
            x_stride: stride as i32,
            out_stride: stride as i32,
            map,
            eps: NORM_EPS,
            ..QkNormRopeParams::default()
        };
        let launches: Vec<(u64, usize)> = if head_dim == head_stride {
            vec![(x.addr, heads)]
        } else {
            (0..heads)
                .map(|h| Ok((x.at(h * head_stride)?.addr, 1)))
                .collect::<Result<_>>()?
        };
        for (addr, heads) in launches {
            let launch = ops::qk_norm_rope(QkNormRopeParams {
                x: addr,
                out: addr,
                heads: heads as i32,
                ..base
            })?;
            // SAFETY: every row the map reaches holds `heads * head_stride` elements (checked
            // above); the tables hold `seq` rows and physical rows modulo `seq` index them.
            unsafe { self.launch(&launch)? };
        }
        Ok(())
    }

    /// Non-causal attention over `[B, S, H, Dp]` bf16 q, k, v (row stride `H * Dp`) of heads
    /// holding `dh <= Dp` values, into `o` with row stride `o_stride`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: (Ptr<u16>, Ptr<u16>, Ptr<u16>),
        o: Ptr<u16>,
        o_stride: usize,
        shape: (usize, usize, usize),
        dh: usize,
        dp: usize,
    ) -> Result<()> {
        self.attention_masked(qkv, o, o_stride, shape, (dh, dp), false)
    }

    /// [`Device::attention`] with a causal mask (query `s` sees keys `0..=s`: CLIP's text
    /// encoder).
    #[allow(clippy::too_many_arguments)]
    pub fn causal_attention(
        &self,
        qkv: (Ptr<u16>, Ptr<u16>, Ptr<u16>),
        o: Ptr<u16>,
        o_stride: usize,
        shape: (usize, usize, usize),
        dh: usize,
        dp: usize,
    ) -> Result<()> {
        self.attention_masked(qkv, o, o_stride, shape, (dh, dp), true)
    }

    fn attention_masked(
        &self,
        (q, k, v): (Ptr<u16>, Ptr<u16>, Ptr<u16>),
        o: Ptr<u16>,
        o_stride: usize,
        (batch, seq, heads): (usize, usize, usize),
        (dh, dp): (usize, usize),
        causal: bool,
    ) -> Result<()> {
        const OP: &str = "attention";
        let (rows, width) = (batch * seq, heads * dp);
        let launch = ops::attention_padded(
            dp,
            dh,
            AttnParams {
                q: q.need(rows * width, OP, "q")?,
                k: k.need(rows * width, OP, "k")?,
                v: v.need(rows * width, OP, "v")?,
                o: o.need(span(rows, o_stride, width), OP, "o")?,
                batch: batch as i32,
                seq: seq as i32,
                heads: heads as i32,
                q_stride: width as i32,
                k_stride: width as i32,
                v_stride: width as i32,
                o_stride: o_stride as i32,
                causal: causal as i32,
                ..AttnParams::default()
            },
        )?;
        // SAFETY: q, k, v hold B * S rows of H * Dp, o B * S rows of `o_stride` (checked).
        unsafe { self.launch(&launch) }
    }

    /// `y = act(x)` over `n` elements, f32 or bf16 each side (`x_f32`, `y_f32`); a cast with
    /// `Act::None`.
    pub fn act<X, Y>(&self, act: Act, x: Ptr<X>, y: Ptr<Y>, n: usize) -> Result<()> {
        const OP: &str = "act";
        let launch = ops::activation(ActParams {
            x: x.need(n, OP, "x")?,
            y: y.need(n, OP, "y")?,
            n: n as i64,
            act: act as i32,
            x_f32: (std::mem::size_of::<X>() == 4) as i32,
            y_f32: (std::mem::size_of::<Y>() == 4) as i32,
            pad_: 0,
        })?;
        // SAFETY: n elements of each side, checked above (element sizes pick the dtypes).
        unsafe { self.launch(&launch) }
    }

    /// bf16 rows `out [rows, d] = table[ids]`; every id must be below `vocab` (the caller
    /// checks ids it did not make itself).
    pub fn embedding(
        &self,
        ids: Ptr<u32>,
        table: Ptr<u16>,
        vocab: usize,
        out: Ptr<u16>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let launch = ops::embedding(EmbeddingParams {
            ids: ids.need(rows, OP, "ids")?,
            table: table.need(vocab * d, OP, "table")?,
            pos: 0,
            out: out.need(rows * d, OP, "out")?,
            rows: rows as i32,
            d: d as i32,
            seq: 1,
            out_f32: 0,
        })?;
        // SAFETY: ids, output and the table checked above; ids below `vocab` by contract.
        unsafe { self.launch(&launch) }
    }

    /// f32 rows `out [rows, d] = table[ids[r]] + pos[r % seq]` (bf16 tables `[vocab, d]` and
    /// `[seq, d]`: CLIP's embeddings into its f32 residual stream); every id must be below
    /// `vocab` (the caller checks).
    pub fn embedding_pos(
        &self,
        ids: Ptr<u32>,
        (table, vocab): (Ptr<u16>, usize),
        (pos, seq): (Ptr<u16>, usize),
        out: Ptr<f32>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let launch = ops::embedding(EmbeddingParams {
            ids: ids.need(rows, OP, "ids")?,
            table: table.need(vocab * d, OP, "table")?,
            pos: pos.need(seq * d, OP, "pos")?,
            out: out.need(rows * d, OP, "out")?,
            rows: rows as i32,
            d: d as i32,
            seq: seq as i32,
            out_f32: 1,
        })?;
        // SAFETY: ids, output and both tables checked above; ids below `vocab` by contract.
        unsafe { self.launch(&launch) }
    }

    /// `out[r, 0..2 half] = [cos(scale x_r f), sin(scale x_r f)]`, row stride `out_stride`.
    pub fn sin_embed(
        &self,
        x: Ptr<f32>,
        rows: usize,
        half: usize,
        scale: f32,
        out: Ptr<f32>,
        out_stride: usize,
    ) -> Result<()> {
        const OP: &str = "sin_embed";
        let launch = ops::sin_embed(SinEmbedParams {
            x: x.need(rows, OP, "x")?,
            out: out.need(span(rows, out_stride, 2 * half), OP, "out")?,
            rows: rows as i32,
            half: half as i32,
            out_stride: out_stride as i32,
            scale,
        })?;
        // SAFETY: rows scalars in, rows strided rows of 2 half out (checked).
        unsafe { self.launch(&launch) }
    }

    /// GroupNorm (eps 1e-6, then SiLU when `silu`) of bf16 `x [B, P, C]` into `out` (may be
    /// `x`), affine f32 `weight`, `bias` `[C]`; `stats` holds
    /// [`ops::group_norm_workspace`]`(B, P, groups)` f64.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm(
        &self,
        x: Ptr<u16>,
        out: Ptr<u16>,
        (weight, bias): (Ptr<f32>, Ptr<f32>),
        stats: Ptr<f64>,
        (batch, pixels, channels): (usize, usize, usize),
        groups: usize,
        silu: bool,
    ) -> Result<()> {
        const OP: &str = "group_norm";
        let n = batch * pixels * channels;
        let (s, a) = ops::group_norm(GroupNormParams {
            x: x.need(n, OP, "x")?,
            out: out.need(n, OP, "out")?,
            weight: weight.need(channels, OP, "weight")?,
            bias: bias.need(channels, OP, "bias")?,
            stats: stats.need(
                ops::group_norm_workspace(batch, pixels, groups),
                OP,
                "stats",
            )?,
            batch: batch as i32,
            pixels: pixels as i32,
            channels: channels as i32,
            groups: groups as i32,
            silu: silu as i32,
            eps: GROUP_NORM_EPS,
            ..GroupNormParams::default()
        })?;
        // SAFETY: x and out hold B x P x C elements, weight and bias C, the workspace its size
        // (checked above); the statistics launch is ordered before the apply launch.
        unsafe {
            self.launch(&s)?;
            self.launch(&a)
        }
    }

    /// The nearest codebook entry (exact squared L2 in f64, lowest id on ties) of each f32
    /// latent `z [P, E]` among the f32 `codebook [V, E]`: ids `[P]`.
    pub fn vq_nearest(
        &self,
        z: Ptr<f32>,
        (codebook, entries): (Ptr<f32>, usize),
        ids: Ptr<u32>,
        pixels: usize,
        dim: usize,
    ) -> Result<()> {
        const OP: &str = "vq_nearest";
        let launch = ops::vq_nearest(VqNearestParams {
            z: z.need(pixels * dim, OP, "z")?,
            codebook: codebook.need(entries * dim, OP, "codebook")?,
            ids: ids.need(pixels, OP, "ids")?,
            pixels: pixels as i32,
            entries: entries as i32,
            dim: dim as i32,
            pad_: 0,
        })?;
        // SAFETY: P x E latents, V x E codebook rows and P ids, checked above.
        unsafe { self.launch(&launch) }
    }

    /// Nearest 2x upsampling: bf16 `x [B, h, w, c]` to `out [B, 2h, 2w, c]`.
    pub fn upsample2x(
        &self,
        x: Ptr<u16>,
        out: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
    ) -> Result<()> {
        const OP: &str = "upsample2x";
        let n = batch * h * w * c;
        let launch = ops::upsample2x(Upsample2xParams {
            x: x.need(n, OP, "x")?,
            out: out.need(4 * n, OP, "out")?,
            batch: batch as i32,
            h: h as i32,
            w: w as i32,
            c: c as i32,
        })?;
        // SAFETY: n elements in, 4 n out (checked above).
        unsafe { self.launch(&launch) }
    }
}

#[cfg(all(test, feature = "emulate"))]
mod tests {
    use super::*;
    use crate::cuda::device::to_bf16;
    use muddit_kernels::cpu::matmul::linear;

    /// Deterministic values in [-1, 1), rounded to bf16.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13) ^ seed;
                let x = (h % 2001) as f32 / 1000.0 - 1.0;
                half::bf16::from_f32(x).to_f32()
            })
            .collect()
    }

    /// Deep, narrow products take the split-K path (two launches and the device's scratch,
    /// which grows from the first to the second); the result is the CPU product.
    #[test]
    fn deep_narrow_products_split_k_and_match_the_cpu() {
        let dev = Device::emulated();
        for (m, n, k) in [(40, 72, 1024), (64, 130, 2048)] {
            let splits = ops::split_k(m, n, k, dev.gemm_slots());
            assert!(splits > 1, "{m} x {n} x {k} takes one slice");
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let xb = dev.upload(&to_bf16(&x)).expect("x");
            let wb = dev.upload(&to_bf16(&w)).expect("w");
            let c = dev.zeros::<f32>(m * n).expect("c");
            let mat = Mat {
                w: wb.ptr(),
                bias: None,
                n,
                k,
            };
            dev.gemm(GemmOut::F32, mat, xb.ptr(), m, c.ptr(), GemmOpts::default())
                .expect("gemm");
            let got = dev.read(&c, 0, m * n).expect("read");
            let mut want = vec![0.0; m * n];
            linear(&x, &w, None, m, k, n, &mut want);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{m} x {n} x {k} in {splits} slices: error {worst}"
            );
        }
    }
}
