//! The sampler: one masked discrete-diffusion step between two transformer calls.

use rayon::prelude::*;

use crate::token::{self, Drawn, Scratch};
use crate::{
    DrawRule, Guidance, RandomSource, SamplerConfig, SamplerError, TokenLayout, TokenUniforms,
};

/// Masked tokens per parallel work item.
const TOKENS_PER_TASK: usize = 8;

/// Uniforms supplied by the caller for one step (recorded ones, or the device's copy of
/// [`RandomSource::fill_step`]): each `[B, n]`, values in `[0, 1]`.
#[derive(Debug, Clone, Copy)]
pub struct StepUniforms<'a> {
    pub draw: &'a [f32],
    pub gumbel: &'a [f32],
}

/// What a step did, per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// `[B]`: the `k` of each row (0 at the last step).
    pub mask_len: Vec<usize>,
    /// `[B]`: masked tokens left after the step.
    pub masked: Vec<usize>,
}

/// Where a step's uniforms come from.
#[derive(Clone, Copy)]
enum Noise<'a> {
    Seeded(RandomSource),
    Given(StepUniforms<'a>),
}

impl Noise<'_> {
    /// The uniforms of token `flat = row * n + token` at `step`.
    fn at(&self, step: u32, row: usize, token: usize, flat: usize) -> TokenUniforms {
        match self {
            Self::Seeded(source) => source.token_uniforms(step, row as u32, token as u32),
            Self::Given(u) => TokenUniforms {
                draw: u.draw[flat],
                gumbel: u.gumbel[flat],
            },
        }
    }
}

/// The masked discrete-diffusion sampler (upstream's `Scheduler`), see the crate docs.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    temperatures: Vec<f32>,
    random: RandomSource,
}

impl Sampler {
    /// Validates `config` and precomputes the per-step temperatures.
    pub fn new(config: SamplerConfig) -> Result<Self, SamplerError> {
        config.validate()?;
        Ok(Self {
            temperatures: config.temperature.per_step(config.steps),
            random: RandomSource::new(config.seed),
            config,
        })
    }

    /// This sampler with row `b` seeded `seed + b` ([`RandomSource::per_row`]): row `b` of a
    /// batch then draws what a batch of one seeded `seed + b` draws. The image pipelines use it.
    pub fn with_seed_per_row(mut self) -> Self {
        self.random = RandomSource::per_row(self.config.seed);
        self
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// `S`.
    pub fn steps(&self) -> usize {
        self.config.steps
    }

    /// The temperature of every step: `[S]`.
    pub fn temperatures(&self) -> &[f32] {
        &self.temperatures
    }

    /// The random source seeded with `config.seed`.
    pub fn random(&self) -> &RandomSource {
        &self.random
    }

    /// The transformer's timestep input at `step`: `(S - 1 - step) / S` in f32.
    pub fn model_timestep(&self, step: usize) -> Result<f32, SamplerError> {
        self.check_step(step)?;
        Ok((self.config.steps - 1 - step) as f32 / self.config.steps as f32)
    }

    /// How many tokens `step` re-masks in a row of `tokens` tokens of which `unknown` were
    /// masked before it: 0 at the last step, else upstream's
    /// `max(1, min(unknown - 1, floor(tokens * mask_ratio((step + 1) / S))))`, in f32.
    pub fn mask_len(
        &self,
        step: usize,
        tokens: usize,
        unknown: usize,
    ) -> Result<usize, SamplerError> {
        self.check_step(step)?;
        let steps = self.config.steps;
        if step + 1 == steps {
            return Ok(0);
        }
        let progress = (step + 1) as f32 / steps as f32;
        let raw = (tokens as f32 * self.config.schedule.mask_ratio(progress)).floor() as i64;
        let cap = unknown as i64 - 1;
        Ok(raw.min(cap).max(1) as usize)
    }

    /// One step with the seeded source: reads `ids` `[B, n]` and `logits` (`[B, n, V]`, or
    /// `[2B, n, V]` unconditional rows first under guidance) and writes the next ids in place.
    pub fn step(
        &self,
        step: usize,
        ids: &mut [u32],
        logits: &[f32],
        layout: &TokenLayout,
    ) -> Result<StepReport, SamplerError> {
        self.run(step, ids, logits, layout, Noise::Seeded(self.random), None)
    }

    /// [`Sampler::step`] that never writes the positions where `keep` (`[n]`, one grid for
    /// every row) is true: they hold codes below `V`, are never drawn nor re-masked, and the
    /// schedule counts only the other tokens (`k` from `n - kept`, see [`Sampler::mask_len`]).
    /// With no position kept it is [`Sampler::step`].
    pub fn step_keeping(
        &self,
        step: usize,
        ids: &mut [u32],
        logits: &[f32],
        layout: &TokenLayout,
        keep: &[bool],
    ) -> Result<StepReport, SamplerError> {
        let noise = Noise::Seeded(self.random);
        self.run(step, ids, logits, layout, noise, Some(keep))
    }

    /// The step an edit starts at when a fraction `masked` in (0, 1] of its editable tokens
    /// is masked: the last step `i` whose schedule still has that much masked before it,
    /// `mask_ratio(i / S) >= masked` (step 0 has ratio 1, so `masked = 1` starts at 0, as
    /// text-to-image).
    pub fn start_step(&self, masked: f32) -> usize {
        let steps = self.config.steps;
        let ratio = |i: usize| match i {
            0 => 1.0,
            _ => self.config.schedule.mask_ratio(i as f32 / steps as f32),
        };
        (0..steps).rev().find(|&i| ratio(i) >= masked).unwrap_or(0)
    }

    /// Prepares the ids `[B, n]` of an edit in place: in each row, of the editable tokens
    /// (`keep` false, `[n]`) that hold a code, the ones with the lowest
    /// [`RandomSource::edit_uniform`] are masked until `floor(strength * editable)` are masked
    /// (more when more already hold the mask id: those stay masked). Returns the step to start
    /// at ([`Sampler::start_step`] of the masked fraction), or `None` when nothing is masked
    /// (the ids are the result). `strength` in (0, 1]; kept positions must hold codes.
    pub fn prepare_edit(
        &self,
        ids: &mut [u32],
        keep: &[bool],
        strength: f32,
        layout: &TokenLayout,
    ) -> Result<Option<usize>, SamplerError> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(SamplerError::InvalidStrength { strength });
        }
        layout.validate()?;
        check_len("ids", ids.len(), layout.ids_len()?, || {
            format!("[B={}, n={}]", layout.batch, layout.tokens)
        })?;
        let editable = check_keep(ids, keep, layout)?;
        let mut masked_fraction = 0.0f32;
        for (row, chunk) in ids.chunks_exact_mut(layout.tokens).enumerate() {
            let target = (strength * editable as f32).floor() as usize;
            let mut coded: Vec<(f32, usize)> = (0..layout.tokens)
                .filter(|&t| !keep[t] && chunk[t] != layout.mask_id)
                .map(|t| (self.random.edit_uniform(row as u32, t as u32), t))
                .collect();
            let already = editable - coded.len();
            coded.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for &(_, t) in coded.iter().take(target.saturating_sub(already)) {
                chunk[t] = layout.mask_id;
            }
            let masked = target.max(already);
            masked_fraction = masked_fraction.max(masked as f32 / editable as f32);
        }
        // Rows that start with more masked tokens set the start step for all.
        Ok((masked_fraction > 0.0).then(|| self.start_step(masked_fraction)))
    }

    /// [`Sampler::step`] with uniforms supplied by the caller (replays, device parity).
    pub fn step_with_uniforms(
        &self,
        step: usize,
        ids: &mut [u32],
        logits: &[f32],
        layout: &TokenLayout,
        uniforms: StepUniforms<'_>,
    ) -> Result<StepReport, SamplerError> {
        check_uniforms(&uniforms, layout)?;
        self.run(step, ids, logits, layout, Noise::Given(uniforms), None)
    }

    fn check_step(&self, step: usize) -> Result<(), SamplerError> {
        let steps = self.config.steps;
        match step < steps {
            true => Ok(()),
            false => Err(SamplerError::StepOutOfRange { step, steps }),
        }
    }

    fn run(
        &self,
        step: usize,
        ids: &mut [u32],
        logits: &[f32],
        layout: &TokenLayout,
        noise: Noise<'_>,
        keep: Option<&[bool]>,
    ) -> Result<StepReport, SamplerError> {
        let unknown = self.check_inputs(step, ids, logits, layout)?;
        let editable = match keep {
            Some(keep) => check_keep(ids, keep, layout)?,
            None => layout.tokens,
        };
        let arch = pulp::Arch::new();
        let (drawn, confidence) = self.draw_all(step, ids, logits, layout, noise, keep, arch)?; // [B, n] each
        let last = step + 1 == self.config.steps;
        let mut mask_len = vec![0; layout.batch];
        if last {
            ids.copy_from_slice(&drawn);
        } else {
            for (row, k) in mask_len.iter_mut().enumerate() {
                *k = self.mask_len(step, editable, unknown[row])?;
                let span = row * layout.tokens..(row + 1) * layout.tokens;
                remask_row(
                    &mut ids[span.clone()],
                    &drawn[span.clone()],
                    &confidence[span],
                    *k,
                    layout.mask_id,
                );
            }
        }
        let masked = ids
            .chunks_exact(layout.tokens)
            .map(|r| r.iter().filter(|&&id| id == layout.mask_id).count());
        Ok(StepReport {
            mask_len,
            masked: masked.collect(),
        })
    }

    /// Validates shapes, ids and the step; returns the masked count of each row `[B]`.
    fn check_inputs(
        &self,
        step: usize,
        ids: &[u32],
        logits: &[f32],
        layout: &TokenLayout,
    ) -> Result<Vec<usize>, SamplerError> {
        self.check_step(step)?;
        layout.validate()?;
        let guidance = self.config.guidance;
        check_len("ids", ids.len(), layout.ids_len()?, || {
            format!("[B={}, n={}]", layout.batch, layout.tokens)
        })?;
        check_len("logits", logits.len(), layout.logits_len(guidance)?, || {
            let rows = guidance.batch_factor() * layout.batch;
            format!("[{rows}, n={}, V={}]", layout.tokens, layout.vocab)
        })?;
        let unknown = unknown_per_row(ids, layout)?;
        if step == 0 {
            if let Some(row) = unknown.iter().position(|&u| u == 0) {
                return Err(SamplerError::NoMaskedToken { row });
            }
        }
        if step + 1 < self.config.steps && layout.tokens < 2 {
            return Err(SamplerError::TooFewTokens {
                tokens: layout.tokens,
            });
        }
        Ok(unknown)
    }

    /// Draws every token and its confidence, in parallel over tokens: `([B, n], [B, n])`.
    /// The result does not depend on the thread count: each token reads only its own logits
    /// and uniforms, nor on `arch`. On bad logits, reports the first bad token in row-major order.
    /// Kept positions (`keep`, `[n]`) keep their id with confidence +inf, above every other.
    #[allow(clippy::too_many_arguments)]
    fn draw_all(
        &self,
        step: usize,
        ids: &[u32],
        logits: &[f32],
        layout: &TokenLayout,
        noise: Noise<'_>,
        keep: Option<&[bool]>,
        arch: pulp::Arch,
    ) -> Result<(Vec<u32>, Vec<f32>), SamplerError> {
        let len = ids.len();
        let (mut drawn, mut confidence) = (vec![0u32; len], vec![0.0f32; len]);
        let task = TokenTask {
            sampler: self,
            step,
            ids,
            logits,
            layout,
            noise,
            keep,
        };
        let first_bad = drawn
            .par_chunks_mut(TOKENS_PER_TASK)
            .zip(confidence.par_chunks_mut(TOKENS_PER_TASK))
            .enumerate()
            .map_init(
                || Scratch::new(layout.vocab),
                |scratch, (i, (drawn, confidence))| {
                    let first = i * TOKENS_PER_TASK;
                    arch.dispatch(TaskRun {
                        task: &task,
                        first,
                        drawn,
                        confidence,
                        scratch,
                    })
                },
            )
            .flatten()
            .min();
        match first_bad {
            Some(flat) => Err(SamplerError::NonFiniteLogits {
                row: flat / layout.tokens,
                token: flat % layout.tokens,
            }),
            None => Ok((drawn, confidence)),
        }
    }
}

/// The per-token work of one step, shared by the parallel tasks.
struct TokenTask<'a> {
    sampler: &'a Sampler,
    step: usize,
    /// `[B, n]`
    ids: &'a [u32],
    /// `[G * B, n, V]`
    logits: &'a [f32],
    layout: &'a TokenLayout,
    noise: Noise<'a>,
    /// `[n]`: positions never written.
    keep: Option<&'a [bool]>,
}

/// One parallel work item: [`TokenTask::run`] on a few tokens, compiled for the best
/// instruction set `pulp` finds (AVX2 where available, else the baseline). The arithmetic is
/// the same IEEE operations in the same order either way (Rust never fuses a multiply and an
/// add on its own), so the results are bit-identical.
struct TaskRun<'t, 'a> {
    task: &'t TokenTask<'a>,
    first: usize,
    drawn: &'t mut [u32],
    confidence: &'t mut [f32],
    scratch: &'t mut Scratch,
}

impl pulp::WithSimd for TaskRun<'_, '_> {
    type Output = Option<usize>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        self.task
            .run(self.first, self.drawn, self.confidence, self.scratch)
    }
}

impl TokenTask<'_> {
    /// Draws the tokens `first..first + drawn.len()` (flat `[B * n]` indices) into `drawn`
    /// and `confidence`; returns the first token with bad logits, if any.
    #[inline(always)]
    fn run(
        &self,
        first: usize,
        drawn: &mut [u32],
        confidence: &mut [f32],
        scratch: &mut Scratch,
    ) -> Option<usize> {
        let n = self.layout.tokens;
        let config = &self.sampler.config;
        let temperature = self.sampler.temperatures[self.step];
        for (i, (d, c)) in drawn.iter_mut().zip(confidence).enumerate() {
            let flat = first + i;
            let (row, token) = (flat / n, flat % n);
            if self.keep.is_some_and(|keep| keep[token]) {
                (*d, *c) = (self.ids[flat], f32::INFINITY);
                continue;
            }
            let u = self.noise.at(self.step as u32, row, token, flat); // step < S <= u32::MAX
            let noise_term = match config.draw {
                DrawRule::Sample => temperature * token::gumbel(u.gumbel),
                DrawRule::Greedy => 0.0,
            };
            if self.ids[flat] != self.layout.mask_id {
                // Upstream sets a known token's probability to f32::MAX.
                (*d, *c) = (self.ids[flat], token::log_prob(f32::MAX) + noise_term);
                continue;
            }
            let Some(Drawn { id, prob }) = self.draw(row, token, u.draw, scratch) else {
                return Some(flat);
            };
            (*d, *c) = (id, token::log_prob(prob) + noise_term);
        }
        None
    }

    /// Softmax and draw of one masked token, combining the guidance halves first.
    #[inline(always)]
    fn draw(&self, row: usize, token: usize, u: f32, scratch: &mut Scratch) -> Option<Drawn> {
        let (v, n, batch) = (self.layout.vocab, self.layout.tokens, self.layout.batch);
        let logits_of = |r: usize| &self.logits[(r * n + token) * v..][..v]; // [r, token, :]
        let rule = self.sampler.config.draw;
        match self.sampler.config.guidance {
            Guidance::Off => token::draw_plain(logits_of(row), rule, u, scratch),
            Guidance::Cfg { scale } => {
                let (uncond, cond) = (logits_of(row), logits_of(batch + row));
                token::draw_guided(scale, uncond, cond, rule, u, scratch)
            }
        }
    }
}

/// Re-masks the `k` lowest-confidence tokens of one row, as upstream: `cutoff` is the value at
/// index `k` of the ascending sort and exactly the tokens with `confidence < cutoff` are masked,
/// so ties at the cutoff leave fewer than `k` masks. `ids`, `drawn`, `confidence`: `[n]`, `k < n`.
fn remask_row(ids: &mut [u32], drawn: &[u32], confidence: &[f32], k: usize, mask_id: u32) {
    let mut sorted = confidence.to_vec();
    let (_, &mut cutoff, _) = sorted.select_nth_unstable_by(k, f32::total_cmp);
    for ((id, &x), &c) in ids.iter_mut().zip(drawn).zip(confidence) {
        *id = if c < cutoff { mask_id } else { x };
    }
}

/// Counts the masked ids of each row `[B]`; every other id must be below `V`.
fn unknown_per_row(ids: &[u32], layout: &TokenLayout) -> Result<Vec<usize>, SamplerError> {
    let mut counts = Vec::with_capacity(layout.batch);
    for (row, chunk) in ids.chunks_exact(layout.tokens).enumerate() {
        let mut count = 0;
        for (token, &id) in chunk.iter().enumerate() {
            if id == layout.mask_id {
                count += 1;
            } else if id as usize >= layout.vocab {
                let (vocab, mask_id) = (layout.vocab, layout.mask_id);
                return Err(SamplerError::IdOutOfRange {
                    row,
                    token,
                    id,
                    vocab,
                    mask_id,
                });
            }
        }
        counts.push(count);
    }
    Ok(counts)
}

fn check_len(
    what: &'static str,
    got: usize,
    expected: usize,
    shape: impl FnOnce() -> String,
) -> Result<(), SamplerError> {
    match got == expected {
        true => Ok(()),
        false => Err(SamplerError::ShapeMismatch {
            what,
            expected,
            got,
            shape: shape(),
        }),
    }
}

/// Checks an edit's keep grid `[n]` against ids `[B, n]`: kept positions hold codes below
/// `V`, and at least one position is editable. Returns the editable count.
fn check_keep(ids: &[u32], keep: &[bool], layout: &TokenLayout) -> Result<usize, SamplerError> {
    check_len("keep", keep.len(), layout.tokens, || {
        format!("[n={}] keep grid", layout.tokens)
    })?;
    for (row, chunk) in ids.chunks_exact(layout.tokens).enumerate() {
        let bad = (0..layout.tokens).find(|&t| keep[t] && chunk[t] as usize >= layout.vocab);
        if let Some(token) = bad {
            return Err(SamplerError::KeptTokenNotACode {
                row,
                token,
                id: chunk[token],
                vocab: layout.vocab,
            });
        }
    }
    match keep.iter().filter(|&&k| !k).count() {
        0 => Err(SamplerError::NothingEditable),
        editable => Ok(editable),
    }
}

fn check_uniforms(uniforms: &StepUniforms<'_>, layout: &TokenLayout) -> Result<(), SamplerError> {
    let len = layout.ids_len()?;
    for (what, values) in [("draw", uniforms.draw), ("gumbel", uniforms.gumbel)] {
        check_len(what, values.len(), len, || {
            format!("[B={}, n={}] uniforms", layout.batch, layout.tokens)
        })?;
        if let Some(index) = values.iter().position(|u| !(0.0..=1.0).contains(u)) {
            let value = values[index];
            return Err(SamplerError::InvalidUniform { what, index, value });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD path and the scalar path give bit-identical draws and confidences.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        // Odd sizes: 333 codes is not a multiple of the 16 lanes nor of the draw blocks.
        let layout = TokenLayout::text(2, 301, 333, 400);
        for guidance in [Guidance::Off, Guidance::Cfg { scale: 7.5 }] {
            for draw in [DrawRule::Sample, DrawRule::Greedy] {
                let config = SamplerConfig {
                    guidance,
                    draw,
                    seed: 11,
                    ..SamplerConfig::new(5)
                };
                let sampler = Sampler::new(config).unwrap();
                let len = layout.logits_len(guidance).unwrap();
                let logits: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919 % 1013) as f32 * 0.013).sin() * 9.0)
                    .collect();
                let mut ids = layout.all_masked().unwrap();
                ids[5] = 3;
                let run = |arch| {
                    sampler
                        .draw_all(
                            1,
                            &ids,
                            &logits,
                            &layout,
                            Noise::Seeded(sampler.random),
                            None,
                            arch,
                        )
                        .unwrap()
                };
                let (simd_ids, simd_conf) = run(pulp::Arch::new());
                let (scalar_ids, scalar_conf) = run(pulp::Arch::Scalar);
                assert_eq!(simd_ids, scalar_ids, "{guidance:?} {draw:?}");
                let bits = |c: &[f32]| c.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&simd_conf),
                    bits(&scalar_conf),
                    "{guidance:?} {draw:?}"
                );
                assert_eq!(simd_ids[5], 3);
            }
        }
    }
}
