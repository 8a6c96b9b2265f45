//! The sampler step on the device: `sample_tokens_f32` then `remask_f32` (sampler.cu) on logits
//! that never leave the device, with the uniforms of [`RandomSource::fill_step`] computed on the
//! host and uploaded, so the device picks exactly the tokens [`Sampler::step`] picks for the
//! same logits. What comes back per step: `k` per row and the first bad token (`B + 1` i32).

use muddit_kernels::cuda::sampler::{Draw, StepBuffers, TokenShape};
use muddit_kernels::cuda::{Buffer, Device, Ptr};
use muddit_sampler::{DrawRule, Guidance, Sampler, SamplerError, TokenLayout};

use crate::error::Result;

/// Ids `[B, n]` on the device and the scratch of one step.
pub struct DeviceSampler {
    sampler: Sampler,
    layout: TokenLayout,
    /// `[B, n]`
    pub(crate) ids: Buffer<u32>,
    draw_u: Buffer<f32>,
    gumbel_u: Buffer<f32>,
    drawn: Buffer<u32>,
    conf: Buffer<f32>,
    /// `[1]`: the first flat token with bad logits, `i32::MAX` if none.
    bad: Buffer<i32>,
    /// `[B]`: the `k` of each row.
    mask_len: Buffer<i32>,
    host_draw: Vec<f32>,
    host_gumbel: Vec<f32>,
    /// `[n]`: positions never written ([`Sampler::step_keeping`]).
    keep: Vec<bool>,
}

impl DeviceSampler {
    /// Starts from `ids` `[B, n]` (all masked for generation).
    pub fn new(dev: &Device, sampler: Sampler, layout: TokenLayout, ids: &[u32]) -> Result<Self> {
        layout.validate()?;
        let n = layout.ids_len()?;
        if ids.len() != n {
            return Err(SamplerError::ShapeMismatch {
                what: "ids",
                expected: n,
                got: ids.len(),
                shape: format!("[B={}, n={}]", layout.batch, layout.tokens),
            }
            .into());
        }
        Ok(DeviceSampler {
            sampler,
            layout,
            ids: dev.upload(ids)?,
            draw_u: dev.zeros(n)?,
            gumbel_u: dev.zeros(n)?,
            drawn: dev.zeros(n)?,
            conf: dev.zeros(n)?,
            bad: dev.zeros(1)?,
            mask_len: dev.zeros(layout.batch)?,
            host_draw: vec![0.0; n],
            host_gumbel: vec![0.0; n],
            keep: vec![false; layout.tokens],
        })
    }

    /// This sampler never writing the positions where `keep` (`[n]`) is true, as
    /// [`Sampler::step_keeping`]: the schedule counts the other tokens, and a kept token's
    /// Gumbel uniform is set to the end that gives it the highest confidence any token can
    /// have (known tokens keep their id), so the remask kernel never picks it.
    pub fn keeping(mut self, keep: Vec<bool>) -> Result<Self> {
        if keep.len() != self.layout.tokens {
            return Err(SamplerError::ShapeMismatch {
                what: "keep",
                expected: self.layout.tokens,
                got: keep.len(),
                shape: format!("[n={}] keep grid", self.layout.tokens),
            }
            .into());
        }
        self.keep = keep;
        Ok(self)
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// One step on `logits` (`[B, n, V]`, or `[2B, n, V]` unconditional rows first under
    /// guidance, on the device); updates the ids in place and returns `k` of each row.
    pub fn step(&mut self, dev: &Device, step: usize, logits: Ptr<f32>) -> Result<Vec<usize>> {
        let (cfg, layout) = (*self.sampler.config(), self.layout);
        let t = self.sampler.temperatures()[self.sampler.model_timestep(step).map(|_| step)?];
        let (b, n) = (layout.batch, layout.tokens);
        self.sampler
            .random()
            .fill_step(step, b, n, &mut self.host_draw, &mut self.host_gumbel)?;
        // Gumbel uniform 1 gives the largest noise term (46.05 T), 0 the smallest (-3.83 T).
        let top = if t >= 0.0 { 1.0 } else { 0.0 };
        for (i, g) in self.host_gumbel.iter_mut().enumerate() {
            if self.keep[i % n] {
                *g = top;
            }
        }
        let editable = self.keep.iter().filter(|&&k| !k).count();
        dev.write(&mut self.draw_u, 0, &self.host_draw)?;
        dev.write(&mut self.gumbel_u, 0, &self.host_gumbel)?;
        let (guided, scale) = match cfg.guidance {
            Guidance::Off => (0, 0.0),
            Guidance::Cfg { scale } => (1, scale),
        };
        let draw = Draw {
            guided,
            scale,
            greedy: cfg.draw == DrawRule::Greedy,
            temperature: t,
        };
        self.sample(dev, self.ids.ptr(), logits, draw)?;
        let last = step + 1 == cfg.steps;
        let progress = (step + 1) as f32 / cfg.steps as f32;
        let raw = (editable as f32 * cfg.schedule.mask_ratio(progress)).floor() as i32;
        dev.remask(self.ids.ptr(), self.buffers(), self.shape(), raw, last)?;
        self.check_bad(dev)?;
        Ok(dev
            .read(&self.mask_len, 0, b)?
            .into_iter()
            .map(|k| k.max(0) as usize)
            .collect())
    }

    /// The first index of the largest of each token's logits `[B, n, V]` (on the device, no
    /// guidance): `[B, n]`, as the CPU pipeline's answer argmax; the greedy draw of
    /// `sample_tokens` on all-masked ids. Logits without a finite maximum are an error.
    pub fn argmax(&mut self, dev: &Device, logits: Ptr<f32>) -> Result<Vec<u32>> {
        let flat = self.layout.ids_len()?;
        let masked = dev.upload(&vec![self.layout.mask_id; flat])?;
        let draw = Draw {
            guided: 0,
            scale: 0.0,
            greedy: true,
            temperature: 0.0,
        };
        self.sample(dev, masked.ptr(), logits, draw)?;
        self.check_bad(dev)?;
        Ok(dev.read(&self.drawn, 0, flat)?)
    }

    /// `sample_tokens` of `ids` `[B, n]` on `logits` into `drawn` and `conf`; `bad` is reset
    /// first.
    fn sample(&mut self, dev: &Device, ids: Ptr<u32>, logits: Ptr<f32>, d: Draw) -> Result<()> {
        let guidance = match d.guided {
            0 => Guidance::Off,
            _ => Guidance::Cfg { scale: d.scale },
        };
        dev.write(&mut self.bad, 0, &[i32::MAX])?;
        let logits_len = self.layout.logits_len(guidance)?;
        let (buffers, shape) = (self.buffers(), self.shape());
        Ok(dev.sample_tokens((logits, logits_len), ids, buffers, shape, d)?)
    }

    /// The step's scratch on the device.
    fn buffers(&self) -> StepBuffers {
        StepBuffers {
            draw_u: self.draw_u.ptr(),
            gumbel_u: self.gumbel_u.ptr(),
            drawn: self.drawn.ptr(),
            conf: self.conf.ptr(),
            bad: self.bad.ptr(),
            mask_len: self.mask_len.ptr(),
        }
    }

    /// The ids' shape: `[B, n]` over the layout's vocabulary.
    fn shape(&self) -> TokenShape {
        let l = self.layout;
        TokenShape {
            batch: l.batch,
            tokens: l.tokens,
            vocab: l.vocab,
            mask_id: l.mask_id,
        }
    }

    /// The first token with bad logits of the last `sample`, as the CPU sampler's error.
    fn check_bad(&self, dev: &Device) -> Result<()> {
        let bad = dev.read(&self.bad, 0, 1)?[0];
        if bad == i32::MAX {
            return Ok(());
        }
        let (bad, n) = (bad as usize, self.layout.tokens);
        Err(SamplerError::NonFiniteLogits {
            row: bad / n,
            token: bad % n,
        }
        .into())
    }

    /// The current ids `[B, n]` (a download).
    pub fn ids(&self, dev: &Device) -> Result<Vec<u32>> {
        Ok(dev.read(&self.ids, 0, self.ids.len())?)
    }
}
