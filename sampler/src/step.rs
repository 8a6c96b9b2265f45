//! The sampler: one masked discrete-diffusion step between two transformer calls.

use rayon::prelude::*;

use crate::random::counter_word;
use crate::token::{self, Drawn, Scratch};
use crate::{
    guidance::combine_into, DrawRule, Guidance, RandomSource, SamplerConfig, SamplerError,
    TokenUniforms,
};

/// Masked tokens per parallel work item.
const TOKENS_PER_TASK: usize = 8;

/// The shape of the ids a step works on, and the mask id of their modality.
///
/// Ids are `[B, n]` row-major (`n = h * w` for an image grid, flattened row-major; `n = L`
/// for text rows); logits are `[B, n, V]` row-major f32 (token-major: an image head's
/// `[B, V, h, w]` output must be transposed first), `[2B, n, V]` with guidance. The mask id
/// may be `>= V` (images: codes `0..V`, mask `V + 63`): then it is never drawn; if it is `< V`
/// (the text head holds a `<mask>` entry) the draw can produce it, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    /// `B`: independent rows (prompts).
    pub batch: usize,
    /// `n`: tokens per row.
    pub tokens: usize,
    /// `V`: logits per token.
    pub vocab: usize,
    /// The id of a masked token.
    pub mask_id: u32,
}

impl TokenLayout {
    /// Text rows: ids `[batch, len]`.
    pub fn text(batch: usize, len: usize, vocab: usize, mask_id: u32) -> Self {
        Self {
            batch,
            tokens: len,
            vocab,
            mask_id,
        }
    }

    /// An image id grid `[batch, height, width]`, flattened row-major to `[batch, height * width]`.
    pub fn image(
        batch: usize,
        height: usize,
        width: usize,
        vocab: usize,
        mask_id: u32,
    ) -> Result<Self, SamplerError> {
        let tokens = height
            .checked_mul(width)
            .ok_or(SamplerError::LayoutTooLarge {
                what: "height * width",
            })?;
        Ok(Self::text(batch, tokens, vocab, mask_id))
    }

    /// Checks that no dimension is zero and that all sizes fit the sampler's counters.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let Self {
            batch,
            tokens,
            vocab,
            ..
        } = *self;
        if batch == 0 || tokens == 0 || vocab == 0 {
            return Err(SamplerError::EmptyLayout {
                batch,
                tokens,
                vocab,
            });
        }
        counter_word(batch, "batch")?;
        counter_word(tokens, "tokens")?;
        counter_word(vocab, "vocab")?;
        self.logits_len(Guidance::Cfg { scale: 1.0 }).map(|_| ())
    }

    /// `B * n`, the length of the ids.
    pub fn ids_len(&self) -> Result<usize, SamplerError> {
        self.batch
            .checked_mul(self.tokens)
            .ok_or(SamplerError::LayoutTooLarge {
                what: "batch * tokens",
            })
    }

    /// `G * B * n * V`, the length of the logits (`G = 2` with guidance).
    pub fn logits_len(&self, guidance: Guidance) -> Result<usize, SamplerError> {
        self.ids_len()?
            .checked_mul(self.vocab)
            .and_then(|len| len.checked_mul(guidance.batch_factor()))
            .ok_or(SamplerError::LayoutTooLarge {
                what: "logits length",
            })
    }

    /// The starting ids: every token masked, `[B, n]`.
    pub fn all_masked(&self) -> Result<Vec<u32>, SamplerError> {
        Ok(vec![self.mask_id; self.ids_len()?])
    }
}

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
        self.run(step, ids, logits, layout, Noise::Seeded(self.random))
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
        self.run(step, ids, logits, layout, Noise::Given(uniforms))
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
    ) -> Result<StepReport, SamplerError> {
        let unknown = self.check_inputs(step, ids, logits, layout)?;
        let (drawn, confidence) = self.draw_all(step, ids, logits, layout, noise)?; // [B, n] each
        let last = step + 1 == self.config.steps;
        let mut mask_len = vec![0; layout.batch];
        if last {
            ids.copy_from_slice(&drawn);
        } else {
            for (row, k) in mask_len.iter_mut().enumerate() {
                *k = self.mask_len(step, layout.tokens, unknown[row])?;
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
    /// and uniforms. On bad logits, reports the first bad token in row-major order.
    fn draw_all(
        &self,
        step: usize,
        ids: &[u32],
        logits: &[f32],
        layout: &TokenLayout,
        noise: Noise<'_>,
    ) -> Result<(Vec<u32>, Vec<f32>), SamplerError> {
        let len = ids.len();
        let (mut drawn, mut confidence) = (vec![0u32; len], vec![0.0f32; len]);
        let step_word = step as u32; // checked: step < S <= u32::MAX
        let temperature = self.temperatures[step];
        let first_bad = drawn
            .par_chunks_mut(TOKENS_PER_TASK)
            .zip(confidence.par_chunks_mut(TOKENS_PER_TASK))
            .enumerate()
            .map_init(
                || Scratch::new(layout.vocab),
                |scratch, (task, (drawn, confidence))| {
                    let first = task * TOKENS_PER_TASK;
                    for (i, (d, c)) in drawn.iter_mut().zip(confidence).enumerate() {
                        let flat = first + i;
                        let (row, token) = (flat / layout.tokens, flat % layout.tokens);
                        let u = noise.at(step_word, row, token, flat);
                        let noise_term = match self.config.draw {
                            DrawRule::Sample => temperature * token::gumbel(u.gumbel),
                            DrawRule::Greedy => 0.0,
                        };
                        if ids[flat] != layout.mask_id {
                            // Upstream sets a known token's probability to f32::MAX.
                            (*d, *c) = (ids[flat], token::log_prob(f32::MAX) + noise_term);
                            continue;
                        }
                        let Some(Drawn { id, prob }) =
                            self.draw_token(row, token, logits, layout, u.draw, scratch)
                        else {
                            return Some(flat);
                        };
                        (*d, *c) = (id, token::log_prob(prob) + noise_term);
                    }
                    None
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

    /// Softmax and draw of one masked token, combining the guidance halves first.
    fn draw_token(
        &self,
        row: usize,
        token: usize,
        logits: &[f32],
        layout: &TokenLayout,
        u: f32,
        scratch: &mut Scratch,
    ) -> Option<Drawn> {
        let v = layout.vocab;
        let at = |r: usize| (r * layout.tokens + token) * v; // start of [r, token, :]
        let rule = self.config.draw;
        match self.config.guidance {
            Guidance::Off => token::draw_from(&logits[at(row)..at(row) + v], rule, u, scratch),
            Guidance::Cfg { scale } => {
                let uncond = &logits[at(row)..at(row) + v];
                let cond = &logits[at(layout.batch + row)..at(layout.batch + row) + v];
                combine_into(scale, uncond, cond, &mut scratch.values);
                token::draw_in_place(rule, u, scratch)
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
