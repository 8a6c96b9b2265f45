//! Classifier-free guidance on logits: `u + g (c - u)`.

use crate::SamplerError;

/// Classifier-free guidance.
///
/// With [`Guidance::Cfg`] the transformer runs on a doubled batch `[uncond; cond]` (the
/// unconditional rows first, as upstream's `chunk(2)`), and the sampler combines the halves
/// per logit as `u + g * (c - u)` in f32. With [`Guidance::Off`] there is no unconditional
/// batch at all ([`Guidance::needs_uncond`] is false) and the logits are used as they are.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Guidance {
    /// No guidance: logits `[B, n, V]`.
    #[default]
    Off,
    /// Guidance with scale `g`: logits `[2B, n, V]`, unconditional rows first.
    Cfg { scale: f32 },
}

impl Guidance {
    /// Upstream's rule for a pipeline `guidance_scale`: guidance runs only when `scale > 1`
    /// (at 1 it would equal the conditional logits; below 1 upstream ignores it).
    /// Negative or non-finite scales are errors.
    pub fn from_scale(scale: f32) -> Result<Self, SamplerError> {
        let guidance = match scale > 1.0 {
            true => Self::Cfg { scale },
            false => Self::Off,
        };
        Self::Cfg { scale }.validate()?;
        Ok(guidance)
    }

    /// Checks that a [`Guidance::Cfg`] scale is finite and not negative.
    pub fn validate(self) -> Result<(), SamplerError> {
        match self {
            Self::Cfg { scale } if !(scale.is_finite() && scale >= 0.0) => {
                Err(SamplerError::InvalidGuidance { scale })
            }
            _ => Ok(()),
        }
    }

    /// Whether the transformer must also run on the unconditional batch.
    pub fn needs_uncond(self) -> bool {
        matches!(self, Self::Cfg { .. })
    }

    /// The scale under guidance, `None` when off.
    pub fn scale(self) -> Option<f32> {
        match self {
            Self::Off => None,
            Self::Cfg { scale } => Some(scale),
        }
    }

    /// How many batches of logits the sampler expects: 2 with guidance, else 1.
    pub fn batch_factor(self) -> usize {
        match self {
            Self::Off => 1,
            Self::Cfg { .. } => 2,
        }
    }

    /// Combines the two halves: `out[j] = u[j] + g * (c[j] - u[j])`, or copies `cond` when off.
    ///
    /// Shapes: `uncond`, `cond`, `out` are `[B, n, V]` alike (`uncond` is ignored when off).
    pub fn combine(
        self,
        uncond: &[f32],
        cond: &[f32],
        out: &mut [f32],
    ) -> Result<(), SamplerError> {
        self.validate()?;
        for (what, got) in [("uncond logits", uncond.len()), ("cond logits", cond.len())] {
            if got != out.len() && (what == "cond logits" || self.needs_uncond()) {
                return Err(SamplerError::ShapeMismatch {
                    what,
                    expected: out.len(),
                    got,
                    shape: "[B, n, V], the length of the output".into(),
                });
            }
        }
        match self {
            Self::Off => out.copy_from_slice(cond),
            Self::Cfg { scale } => combine_into(scale, uncond, cond, out),
        }
        Ok(())
    }
}

/// `out[j] = u[j] + g * (c[j] - u[j])` in f32, in this order (no fused multiply-add), as
/// upstream. All three slices have the same length.
#[inline(always)]
pub(crate) fn combine_into(scale: f32, uncond: &[f32], cond: &[f32], out: &mut [f32]) {
    for ((o, &u), &c) in out.iter_mut().zip(uncond).zip(cond) {
        *o = u + scale * (c - u);
    }
}
