//! `elementwise.cu`: embedding rows, activations and casts, guidance, the sinusoidal embedding.
//! The parameter structs, the launch plans ([`embedding`], [`activation`], [`guide`],
//! [`sin_embed`]) and the runners on a [`Device`].

use super::common::Act;
use super::device::{Device, Ptr};
use super::launch::{elementwise_grid, ensure, span, Launch};
use super::nvrtc::Module;
use super::Result;

/// `embedding_bf16` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddingParams {
    pub ids: u64,
    pub table: u64,
    pub pos: u64,
    pub out: u64,
    pub rows: i32,
    pub d: i32,
    pub seq: i32,
    pub out_f32: i32,
}

/// `act_bf16` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ActParams {
    pub x: u64,
    pub y: u64,
    pub n: i64,
    pub act: i32,
    pub x_f32: i32,
    pub y_f32: i32,
    pub pad_: i32,
}

/// `guide_bf16` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GuideParams {
    pub x: u64,
    pub out: u64,
    pub n: i64,
    pub scale: f32,
    pub pad_: i32,
}

/// `sin_embed_f32` (elementwise.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SinEmbedParams {
    pub x: u64,
    pub out: u64,
    pub rows: i32,
    pub half: i32,
    pub out_stride: i32,
    pub scale: f32,
}

device_repr!(EmbeddingParams, ActParams, GuideParams, SinEmbedParams);

/// Embedding rows (elementwise.cu); the caller has checked every id against the table.
pub fn embedding(p: EmbeddingParams) -> Result<Launch<EmbeddingParams>> {
    const OP: &str = "embedding";
    ensure(
        p.rows >= 0 && p.d > 0 && (p.pos == 0 || p.seq > 0),
        OP,
        || format!("rows {} d {} seq {}", p.rows, p.d, p.seq),
    )?;
    Ok(Launch::new(
        (Module::Elementwise, "embedding_bf16"),
        elementwise_grid(OP, p.rows as usize * p.d as usize)?,
        256,
        0,
        p,
    ))
}

/// `y = act(x)` element-wise, f32 or bf16 on either side.
pub fn activation(p: ActParams) -> Result<Launch<ActParams>> {
    const OP: &str = "activation";
    ensure(p.n >= 0 && (0..=4).contains(&p.act), OP, || {
        format!("n {} act {}", p.n, p.act)
    })?;
    Ok(Launch::new(
        (Module::Elementwise, "act_bf16"),
        elementwise_grid(OP, p.n as usize)?,
        256,
        0,
        p,
    ))
}

/// `out = u + scale (c - u)` of the halves of `x = [u; c]`, `n` elements each, bf16.
pub fn guide(p: GuideParams) -> Result<Launch<GuideParams>> {
    const OP: &str = "guide";
    ensure(p.n >= 0 && p.scale.is_finite(), OP, || {
        format!("n {} scale {}", p.n, p.scale)
    })?;
    Ok(Launch::new(
        (Module::Elementwise, "guide_bf16"),
        elementwise_grid(OP, p.n as usize)?,
        256,
        0,
        p,
    ))
}

/// The sinusoidal embedding of `rows` scalars into `[rows, 2 half]` (row stride `out_stride`).
pub fn sin_embed(p: SinEmbedParams) -> Result<Launch<SinEmbedParams>> {
    const OP: &str = "sin_embed";
    ensure(
        p.rows >= 0 && p.half > 0 && p.out_stride >= 2 * p.half,
        OP,
        || format!("rows {} half {} stride {}", p.rows, p.half, p.out_stride),
    )?;
    Ok(Launch::new(
        (Module::Elementwise, "sin_embed_f32"),
        elementwise_grid(OP, p.rows as usize * p.half as usize)?,
        256,
        0,
        p,
    ))
}

impl Device {
    /// `y = act(x)` over `n` elements, f32 or bf16 each side (`x_f32`, `y_f32`); a cast with
    /// `Act::None`.
    pub fn act<X, Y>(&self, act: Act, x: Ptr<X>, y: Ptr<Y>, n: usize) -> Result<()> {
        const OP: &str = "act";
        let launch = activation(ActParams {
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

    /// `out [n] = u + scale (c - u)` of the bf16 halves of `x = [u; c]` (`2n` elements).
    pub fn guide(&self, x: Ptr<u16>, scale: f32, out: Ptr<u16>, n: usize) -> Result<()> {
        const OP: &str = "guide";
        let launch = guide(GuideParams {
            x: x.need(2 * n, OP, "x")?,
            out: out.need(n, OP, "out")?,
            n: n as i64,
            scale,
            pad_: 0,
        })?;
        // SAFETY: 2n elements of x and n of out, checked above.
        unsafe { self.launch(&launch) }
    }

    /// Rows `out [rows, d] = table[ids[r]] (+ pos[r % seq])` of bf16 tables `[vocab, d]` and
    /// `[seq, d]`, into bf16 or f32 (`Y`'s size picks it: CLIP's embeddings go into its f32
    /// residual stream); every id must be below `vocab` (the caller checks ids it did not make
    /// itself).
    pub fn embedding<Y>(
        &self,
        ids: Ptr<u32>,
        (table, vocab): (Ptr<u16>, usize),
        pos: Option<(Ptr<u16>, usize)>,
        out: Ptr<Y>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let (pos, seq) = match pos {
            Some((pos, seq)) => (pos.need(seq * d, OP, "pos")?, seq),
            None => (0, 1),
        };
        let launch = embedding(EmbeddingParams {
            ids: ids.need(rows, OP, "ids")?,
            table: table.need(vocab * d, OP, "table")?,
            pos,
            out: out.need(rows * d, OP, "out")?,
            rows: rows as i32,
            d: d as i32,
            seq: seq as i32,
            out_f32: (std::mem::size_of::<Y>() == 4) as i32,
        })?;
        // SAFETY: ids, output and the tables checked above; ids below `vocab` by contract.
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
        let launch = sin_embed(SinEmbedParams {
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
}
