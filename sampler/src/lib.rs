//! The masked discrete-diffusion sampler of muddit: everything between two transformer calls.
//!
//! Muddit generates image ids and text ids the same way (upstream `Scheduler` in
//! `src/scheduler.py` of the Muddit repository): start from all-mask ids, and at each of `S`
//! steps let the transformer predict logits for every token, draw every masked token, then
//! re-mask the least confident draws. This crate holds that rule, the schedules, classifier-free
//! guidance and the seeded random source. It has no device code; a device kernel can reproduce
//! it from the description below and the uniforms of [`RandomSource::fill_step`].
//!
//! # The step
//!
//! Inputs: ids `[B, n]` (an image grid `h x w` flattened row-major, or text rows of `L = 77`),
//! logits `[B, n, V]` row-major f32 (`[2B, n, V]` under guidance, unconditional rows first),
//! the mask id of the modality, and the step index `i` in `0..S` (upstream's timestep is
//! `S - 1 - i`; the transformer gets `(S - 1 - i) / S`, [`Sampler::model_timestep`]).
//!
//! 1. Guidance ([`Guidance::Cfg`]): `l = u + g * (c - u)` per logit, f32, in that order.
//! 2. For each masked token: `p = softmax(l)` (`m = max l`, `e = exp(l - m)`,
//!    `p_j = e_j * (1 / sum e)`, in f32; `exp` is a Cody-Waite + degree-5 polynomial within
//!    2 ulp that flushes arguments below -87 to 0); draw `x`:
//!    - [`DrawRule::Sample`]: inverse CDF of the token's draw uniform `u`: the first `j` with
//!      `C_j > u * C_last`, `C_j = sum_{i <= j} p_i` accumulated in f64 (in blocks of 64;
//!      another summation order changes a draw only if `u * C_last` lies within ~1e-16 of a
//!      step of the CDF). Upstream uses
//!      `torch.multinomial`, i.e. `argmax(p / E)` with `V` exponential variates per token:
//!      the same distribution, not the same numbers.
//!    - [`DrawRule::Greedy`]: the first index of the maximal logit.
//!
//!    Known tokens keep their id (their logits are never read). If the mask id is below `V`
//!    it can be drawn, as upstream. NaN or +inf logits, or all -inf, are an error.
//! 3. Last step (`i = S - 1`): every token takes its draw; done.
//! 4. Otherwise each row re-masks `k` tokens, [`Sampler::mask_len`]:
//!    `r = (i + 1) / S`, `ratio = cos(r * pi / 2)` ([`MaskSchedule::Cosine`]) or `1 - r`
//!    ([`MaskSchedule::Linear`]), all in f32 as upstream (so `r = 2/3` gives 0.49999997, not
//!    0.5); `k = max(1, min(unknown - 1, floor(n * ratio)))` with `unknown` the row's masked
//!    count before the step.
//! 5. Confidence: `ln(max(p_x, 1e-20)) + T_i * gumbel` for a masked token, and for a known token
//!    the same with `p_x = f32::MAX` (`ln = 88.72`; upstream overwrites the probability, not the
//!    confidence), where `gumbel = -ln(max(-ln(max(u_g, 1e-20)), 1e-20))` from the token's
//!    Gumbel uniform `u_g`, and `T_i` the step's temperature ([`Temperature::per_step`]:
//!    `linspace(start, end, S)` in f32; default `(2, 0)`; a scalar `t` means `(t, 0.01)`).
//!    Greedy draws use no noise term. Known tokens therefore rank above every masked one while
//!    `|T_i| < 4.3`; above that upstream (and this crate) can re-mask a known token.
//! 6. `cutoff` = the element at index `k` of the row's confidences sorted ascending; exactly the
//!    tokens with `confidence < cutoff` become the mask id (upstream's `confidence < cut_off`):
//!    `k` tokens, or fewer when confidences tie at the cutoff. Ties need equal probabilities
//!    and no noise (greedy, temperature 0), e.g. several tokens whose `p_x` rounds to 1.0.
//!
//! # The random source
//!
//! [`RandomSource`]: Philox4x32-10 (Salmon et al., Random123; [`philox4x32_10`]) keyed with
//! `[seed as u32, (seed >> 32) as u32]`. Token `t` of row `b` at step `i` uses the block of
//! counter `[t, b, i, 0]`: word 0 gives the draw uniform, word 1 the Gumbel uniform, each
//! `(word >> 8) * 2^-24` in `[0, 1)`. Each token's numbers depend only on its coordinates, so
//! the same seed gives the same uniforms on any thread count or device, and the step's results
//! are bit-identical at any thread count on the CPU. (A device's `exp` may round differently;
//! its tokens then agree except where a uniform falls within rounding of a CDF boundary.)
//! `tools/fixtures/make_sampler_fixtures.py` implements the same generator in numpy.
//!
//! # Parallelism
//!
//! Tokens are drawn in parallel with rayon (8 tokens per task, one scratch row per worker),
//! each task compiled for AVX2 where the CPU has it (`pulp` runtime dispatch, no `unsafe`
//! here). Every token reads only its own logits and uniforms, and all reductions use a fixed
//! lane order, so results are bit-identical across thread counts and instruction sets. The
//! guided 1024 px step (`[2, 4096, 8192]` logits) is bound by reading the logits once.
//!
//! # Use
//!
//! ```
//! use muddit_sampler::{Guidance, Sampler, SamplerConfig, TokenLayout};
//!
//! # fn main() -> Result<(), muddit_sampler::SamplerError> {
//! let mut config = SamplerConfig::new(4);
//! config.guidance = Guidance::from_scale(9.0)?;
//! config.seed = 42;
//! let sampler = Sampler::new(config)?;
//! let layout = TokenLayout::image(1, 4, 4, 8, 15)?; // 4x4 grid, 8 codes, mask id 15
//! let mut ids = layout.all_masked()?;
//! for step in 0..sampler.steps() {
//!     // The transformer would run here on `ids`, at timestep `sampler.model_timestep(step)?`.
//!     let logits = vec![0.5f32; layout.logits_len(config.guidance)?]; // [2B, n, V]
//!     let report = sampler.step(step, &mut ids, &logits, &layout)?;
//!     assert!(report.masked[0] <= 15);
//! }
//! assert!(ids.iter().all(|&id| id < 8));
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod guidance;
mod layout;
mod random;
mod step;
mod token;

pub use config::{DrawRule, MaskSchedule, SamplerConfig, Temperature};
pub use error::SamplerError;
pub use guidance::Guidance;
pub use layout::TokenLayout;
pub use random::{philox4x32_10, uniform_from_bits, RandomSource, TokenUniforms};
pub use step::{Sampler, StepReport, StepUniforms};
