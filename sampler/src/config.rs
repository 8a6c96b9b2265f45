//! Sampler parameters: one struct with enums, validated once by [`SamplerConfig::validate`].

use std::str::FromStr;

use crate::{Guidance, SamplerError};

/// How many tokens stay masked after each step (`masking_schedule` in `scheduler_config.json`).
///
/// After step `i` of `S`, with `r = (i + 1) / S`, a fraction `mask_ratio(r)` of the row is
/// re-masked. New schedules are new variants with their own [`MaskSchedule::mask_ratio`] arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskSchedule {
    /// `cos(r * pi / 2)`, the default.
    #[default]
    Cosine,
    /// `1 - r`.
    Linear,
}

impl MaskSchedule {
    /// The schedule named as in the scheduler config (`"cosine"`, `"linear"`).
    pub fn from_config_name(name: &str) -> Result<Self, SamplerError> {
        match name {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            _ => Err(SamplerError::UnknownSchedule {
                name: name.to_owned(),
            }),
        }
    }

    /// The name used in the scheduler config.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Linear => "linear",
        }
    }

    /// The fraction of the row left masked at progress `r` in (0, 1], in f32 as upstream
    /// computes it (`(r * f32(pi)) / 2` then `cos`; `1 - r`).
    pub fn mask_ratio(self, r: f32) -> f32 {
        match self {
            Self::Cosine => (r * std::f32::consts::PI / 2.0).cos(),
            Self::Linear => 1.0 - r,
        }
    }
}

impl FromStr for MaskSchedule {
    type Err = SamplerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::from_config_name(name)
    }
}

/// The temperature of the Gumbel noise on the re-masking confidence, per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Temperature {
    /// Linear from `start` at the first step to `end` at the last (upstream's tuple form;
    /// the pipeline default is `(2, 0)`).
    Anneal { start: f32, end: f32 },
    /// Upstream's scalar form: linear from the value down to 0.01.
    Scalar(f32),
}

impl Default for Temperature {
    fn default() -> Self {
        Self::Anneal {
            start: 2.0,
            end: 0.0,
        }
    }
}

impl Temperature {
    /// The end value upstream uses for a scalar temperature.
    pub const SCALAR_END: f32 = 0.01;

    /// The `(start, end)` of the linear ramp.
    pub fn endpoints(self) -> (f32, f32) {
        match self {
            Self::Anneal { start, end } => (start, end),
            Self::Scalar(value) => (value, Self::SCALAR_END),
        }
    }

    /// Checks that both endpoints are finite.
    pub fn validate(self) -> Result<(), SamplerError> {
        let (start, end) = self.endpoints();
        for (what, value) in [("start", start), ("end", end)] {
            if !value.is_finite() {
                return Err(SamplerError::InvalidTemperature { what, value });
            }
        }
        Ok(())
    }

    /// The temperature of each of `steps` steps: `[steps]`.
    ///
    /// Mirrors `torch.linspace(start, end, steps)` in f32: `d = (end - start) / (steps - 1)`;
    /// the first half is `start + d * i`, the second half `end - d * (steps - 1 - i)`; a single
    /// step gets `start`. (PyTorch's vectorized path may differ from this by one ulp.)
    pub fn per_step(self, steps: usize) -> Vec<f32> {
        let (start, end) = self.endpoints();
        if steps == 1 {
            return vec![start];
        }
        let delta = (end - start) / (steps - 1) as f32;
        let half = steps / 2;
        (0..steps)
            .map(|i| match i < half {
                true => start + delta * i as f32,
                false => end - delta * (steps - 1 - i) as f32,
            })
            .collect()
    }
}

/// How a masked token's id is drawn from its probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrawRule {
    /// Upstream: a categorical draw (inverse CDF of one uniform), Gumbel noise on the confidence.
    #[default]
    Sample,
    /// Deterministic: argmax draw (the first maximal logit), no Gumbel noise, no randomness.
    Greedy,
}

/// Everything that configures a [`crate::Sampler`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Number of denoising steps `S` (>= 1).
    pub steps: usize,
    /// How many tokens stay masked after each step.
    pub schedule: MaskSchedule,
    /// Gumbel temperature per step (ignored by [`DrawRule::Greedy`]).
    pub temperature: Temperature,
    /// Classifier-free guidance on the logits.
    pub guidance: Guidance,
    /// Categorical or argmax draws.
    pub draw: DrawRule,
    /// Seed of the counter-based random source (see [`crate::RandomSource`]).
    pub seed: u64,
}

impl SamplerConfig {
    /// `steps` steps with upstream's defaults: cosine, temperature (2, 0), no guidance,
    /// categorical draws, seed 0.
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            schedule: MaskSchedule::default(),
            temperature: Temperature::default(),
            guidance: Guidance::Off,
            draw: DrawRule::default(),
            seed: 0,
        }
    }

    /// Checks the step count, the temperatures and the guidance scale.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if self.steps == 0 {
            return Err(SamplerError::ZeroSteps);
        }
        if u32::try_from(self.steps).is_err() {
            return Err(SamplerError::TooManySteps { steps: self.steps });
        }
        self.temperature.validate()?;
        self.guidance.validate()
    }
}
