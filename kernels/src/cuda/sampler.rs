//! `sampler.cu`: a sampler step on device logits (the draw of every token, then the re-masking
//! of each row). The parameter structs and the launch plans ([`sample_tokens`], [`remask`]).

use super::device::{Device, Ptr};
use super::launch::{ensure, grid_1d, Launch};
use super::nvrtc::Module;
use super::Result;

/// `sample_tokens_f32` (sampler.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleParams {
    pub logits: u64,
    pub ids: u64,
    pub draw_u: u64,
    pub gumbel_u: u64,
    pub drawn: u64,
    pub conf: u64,
    pub bad: u64,
    pub batch: i32,
    pub tokens: i32,
    pub vocab: i32,
    pub mask_id: u32,
    pub guided: i32,
    pub scale: f32,
    pub greedy: i32,
    pub temperature: f32,
}

/// `remask_f32` (sampler.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RemaskParams {
    pub ids: u64,
    pub drawn: u64,
    pub conf: u64,
    pub mask_len: u64,
    pub batch: i32,
    pub tokens: i32,
    pub mask_id: u32,
    pub raw_len: i32,
    pub last: i32,
    pub pad_: i32,
}

device_repr!(SampleParams, RemaskParams);

/// Tokens per block of `sample_tokens_f32` (one warp each).
const SAMPLER_WARPS: usize = 4;

/// The draw and confidence of every token (sampler.cu). `bad` must hold `i32::MAX` before the
/// launch; afterwards it holds the first flat token with bad logits, if any.
pub fn sample_tokens(p: SampleParams) -> Result<Launch<SampleParams>> {
    const OP: &str = "sample_tokens";
    ensure(p.batch > 0 && p.tokens > 0 && p.vocab > 0, OP, || {
        format!("B {} n {} V {}", p.batch, p.tokens, p.vocab)
    })?;
    ensure(
        p.guided == 0 || (p.scale.is_finite() && p.scale >= 0.0),
        OP,
        || format!("guidance scale {}", p.scale),
    )?;
    let tokens = p.batch as usize * p.tokens as usize;
    let smem = SAMPLER_WARPS * (p.vocab as usize).div_ceil(64) * 8;
    ensure(smem <= 200 << 10, OP, || {
        format!("vocabulary {} too large", p.vocab)
    })?;
    Ok(Launch::new(
        (Module::Sampler, "sample_tokens_f32"),
        grid_1d(OP, tokens.div_ceil(SAMPLER_WARPS))?,
        (32 * SAMPLER_WARPS) as u32,
        smem as u32,
        p,
    ))
}

/// The re-masking of each row (sampler.cu): one block per row.
pub fn remask(p: RemaskParams) -> Result<Launch<RemaskParams>> {
    const OP: &str = "remask";
    ensure(p.batch > 0 && p.tokens > 0, OP, || {
        format!("B {} n {}", p.batch, p.tokens)
    })?;
    ensure(p.last != 0 || p.tokens >= 2, OP, || {
        "fewer than 2 tokens".into()
    })?;
    Ok(Launch::new(
        (Module::Sampler, "remask_f32"),
        grid_1d(OP, p.batch as usize)?,
        1024,
        0,
        p,
    ))
}

/// How [`Device::sample_tokens`] draws: guidance (`guided` 1, its `scale`), the greedy rule
/// and the step's temperature.
#[derive(Debug, Clone, Copy)]
pub struct Draw {
    pub guided: i32,
    pub scale: f32,
    pub greedy: bool,
    pub temperature: f32,
}

/// The device tensors of one step over `[B, n]` tokens: the host's uniforms, the draws and their
/// confidences `[B, n]`, the first token with bad logits `[1]` and `k` per row `[B]`.
#[derive(Debug, Clone, Copy)]
pub struct StepBuffers {
    pub draw_u: Ptr<f32>,
    pub gumbel_u: Ptr<f32>,
    pub drawn: Ptr<u32>,
    pub conf: Ptr<f32>,
    pub bad: Ptr<i32>,
    pub mask_len: Ptr<i32>,
}

/// `batch` rows of `tokens` ids over a `vocab`-entry vocabulary whose `<mask>` is `mask_id`.
#[derive(Debug, Clone, Copy)]
pub struct TokenShape {
    pub batch: usize,
    pub tokens: usize,
    pub vocab: usize,
    pub mask_id: u32,
}

impl Device {
    /// The draw and confidence of every token of `ids` `[B, n]` from `logits` (`logits_len`
    /// floats: `[B, n, V]`, or `[2B, n, V]` under guidance) into `s.drawn` and `s.conf`;
    /// `s.bad` must hold `i32::MAX` and is left at the first token with bad logits, if any.
    pub fn sample_tokens(
        &self,
        (logits, logits_len): (Ptr<f32>, usize),
        ids: Ptr<u32>,
        s: StepBuffers,
        t: TokenShape,
        d: Draw,
    ) -> Result<()> {
        const OP: &str = "sample_tokens";
        let flat = t.batch * t.tokens;
        let launch = sample_tokens(SampleParams {
            logits: logits.need(logits_len, OP, "logits")?,
            ids: ids.need(flat, OP, "ids")?,
            draw_u: s.draw_u.need(flat, OP, "draw")?,
            gumbel_u: s.gumbel_u.need(flat, OP, "gumbel")?,
            drawn: s.drawn.need(flat, OP, "drawn")?,
            conf: s.conf.need(flat, OP, "conf")?,
            bad: s.bad.need(1, OP, "bad")?,
            batch: t.batch as i32,
            tokens: t.tokens as i32,
            vocab: t.vocab as i32,
            mask_id: t.mask_id,
            guided: d.guided,
            scale: d.scale,
            greedy: d.greedy as i32,
            temperature: d.temperature,
        })?;
        // SAFETY: logits hold `logits_len` floats, ids/draw/gumbel/drawn/conf B * n elements
        // and bad one (all checked above), buffers of this device.
        unsafe { self.launch(&launch) }
    }

    /// Re-masks the `raw_len` least confident drawn tokens of each row of `ids` `[B, n]` (none
    /// at the `last` step), keeping the others' draws; `k` per row into `s.mask_len`.
    pub fn remask(
        &self,
        ids: Ptr<u32>,
        s: StepBuffers,
        t: TokenShape,
        raw_len: i32,
        last: bool,
    ) -> Result<()> {
        const OP: &str = "remask";
        let flat = t.batch * t.tokens;
        let launch = remask(RemaskParams {
            ids: ids.need(flat, OP, "ids")?,
            drawn: s.drawn.need(flat, OP, "drawn")?,
            conf: s.conf.need(flat, OP, "conf")?,
            mask_len: s.mask_len.need(t.batch, OP, "k")?,
            batch: t.batch as i32,
            tokens: t.tokens as i32,
            mask_id: t.mask_id,
            raw_len,
            last: last as i32,
            pad_: 0,
        })?;
        // SAFETY: ids, drawn, conf hold B * n elements, mask_len B (checked above).
        unsafe { self.launch(&launch) }
    }
}
