//! Properties of whole sampling runs on continuous random logits (so no confidence ties).

use muddit_sampler::{
    DrawRule, Guidance, MaskSchedule, Sampler, SamplerConfig, StepReport, Temperature, TokenLayout,
};
use proptest::prelude::*;

/// SplitMix64: the test's own source of logits, so proptest only has to shrink a seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Continuous logits in [-r, r): `[len]`.
    fn logits(&mut self, len: usize, r: f32) -> Vec<f32> {
        (0..len)
            .map(|_| ((self.next() >> 40) as f32 / 8_388_608.0 - 1.0) * r)
            .collect()
    }
}

/// A random run: sampler, layout, starting ids (some known tokens) and per-step logits.
#[derive(Debug, Clone)]
struct Run {
    config: SamplerConfig,
    layout: TokenLayout,
    start: Vec<u32>,
    /// `[S][G * B * n * V]`
    logits: Vec<Vec<f32>>,
}

fn run_strategy(mask_drawable: bool) -> impl Strategy<Value = Run> {
    let dims = (1usize..4, 2usize..90, 2usize..48, 1usize..9);
    let knobs = (
        any::<bool>(),
        -4.0f32..4.0,
        -4.0f32..4.0,
        prop_oneof![Just(0.0f32), 0.0f32..10.0],
    );
    let draws = (any::<bool>(), any::<u64>(), any::<u64>(), 0.0f64..0.5);
    (dims, knobs, draws).prop_map(move |(dims, knobs, draws)| {
        let (batch, tokens, vocab, steps) = dims;
        let (cosine, t_start, t_end, scale) = knobs;
        let (greedy, seed, data_seed, known_fraction) = draws;
        let mask_id = if mask_drawable {
            vocab as u32 - 1
        } else {
            vocab as u32 + 7
        };
        let layout = TokenLayout::text(batch, tokens, vocab, mask_id);
        let config = SamplerConfig {
            steps,
            schedule: if cosine {
                MaskSchedule::Cosine
            } else {
                MaskSchedule::Linear
            },
            temperature: Temperature::Anneal {
                start: t_start,
                end: t_end,
            },
            guidance: if scale > 0.0 {
                Guidance::Cfg { scale }
            } else {
                Guidance::Off
            },
            draw: if greedy {
                DrawRule::Greedy
            } else {
                DrawRule::Sample
            },
            seed,
        };
        let mut rng = SplitMix(data_seed);
        let start = starting_ids(&layout, known_fraction, &mut rng);
        let len = layout.logits_len(config.guidance).unwrap();
        // Combined logits stay in [-6, 6], so no probability saturates to 1 in f32 (which
        // would make confidences tie).
        let r = 6.0 / (1.0 + 2.0 * scale);
        let logits = (0..steps).map(|_| rng.logits(len, r)).collect();
        Run {
            config,
            layout,
            start,
            logits,
        }
    })
}

/// `[B, n]` mask ids with about `known_fraction` known ids (< mask id), at least one mask a row.
fn starting_ids(layout: &TokenLayout, known_fraction: f64, rng: &mut SplitMix) -> Vec<u32> {
    let known_ids = (layout.vocab as u64).min(u64::from(layout.mask_id));
    let mut ids = layout.all_masked().unwrap();
    for row in ids.chunks_exact_mut(layout.tokens) {
        for id in &mut row[1..] {
            if ((rng.next() >> 11) as f64) < known_fraction * (1u64 << 53) as f64 {
                *id = (rng.next() % known_ids) as u32;
            }
        }
    }
    ids
}

/// Masked count of each row `[B]`.
fn masked_per_row(ids: &[u32], layout: &TokenLayout) -> Vec<usize> {
    ids.chunks_exact(layout.tokens)
        .map(|r| r.iter().filter(|&&id| id == layout.mask_id).count())
        .collect()
}

impl Run {
    /// Runs every step, calling `check(step, before, after, report)`.
    fn each_step(&self, mut check: impl FnMut(usize, &[u32], &[u32], &StepReport)) -> Vec<u32> {
        let sampler = Sampler::new(self.config).unwrap();
        let mut ids = self.start.clone();
        for (step, logits) in self.logits.iter().enumerate() {
            let before = ids.clone();
            let report = sampler.step(step, &mut ids, logits, &self.layout).unwrap();
            check(step, &before, &ids, &report);
        }
        ids
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// With no ties, every step but the last leaves exactly `k` masks per row.
    #[test]
    fn exactly_k_masks_after_each_step(run in run_strategy(false)) {
        let sampler = Sampler::new(run.config).unwrap();
        let last = run.config.steps - 1;
        run.each_step(|step, before, after, report| {
            let unknown = masked_per_row(before, &run.layout);
            for (row, &masked) in masked_per_row(after, &run.layout).iter().enumerate() {
                let k = sampler.mask_len(step, run.layout.tokens, unknown[row]).unwrap();
                assert_eq!(report.mask_len[row], k);
                assert_eq!(report.masked[row], masked);
                if step < last {
                    assert_eq!(masked, k, "step {step} row {row}, {} masks before", unknown[row]);
                }
            }
        });
    }

    /// Masks never grow in number (also when the mask id itself can be drawn), known tokens
    /// never change, and only masked tokens are re-masked.
    #[test]
    fn masks_shrink_and_known_tokens_stay(run in run_strategy(true)) {
        run.each_step(|step, before, after, _| {
            let (was, now) = (masked_per_row(before, &run.layout), masked_per_row(after, &run.layout));
            for row in 0..run.layout.batch {
                assert!(now[row] <= was[row], "step {step} row {row}: {} -> {} masks", was[row], now[row]);
            }
            for (j, (&b, &a)) in before.iter().zip(after).enumerate() {
                if b != run.layout.mask_id {
                    assert_eq!(a, b, "step {step}: known token {j} changed");
                }
                assert!(a < run.layout.vocab as u32 || a == run.layout.mask_id);
            }
        });
    }

    /// The last step fills every token when the mask id cannot be drawn.
    #[test]
    fn last_step_leaves_no_mask(run in run_strategy(false)) {
        let ids = run.each_step(|_, _, _, _| {});
        assert!(ids.iter().all(|&id| id < run.layout.vocab as u32), "{ids:?}");
    }

    /// Greedy runs do not depend on the seed, and draw the argmax at the last step.
    #[test]
    fn greedy_is_deterministic(mut run in run_strategy(false), other_seed in any::<u64>()) {
        run.config.draw = DrawRule::Greedy;
        let mut before_last = Vec::new();
        let a = run.each_step(|step, before, _, _| if step + 1 == run.config.steps { before_last = before.to_vec() });
        run.config.seed = other_seed;
        let b = run.each_step(|_, _, _, _| {});
        assert_eq!(&a, &b);
        let (v, n, rows) = (run.layout.vocab, run.layout.tokens, run.layout.batch);
        let last = run.logits.last().unwrap();
        for (flat, &id) in before_last.iter().enumerate() {
            if id != run.layout.mask_id {
                continue;
            }
            let (b, t) = (flat / n, flat % n);
            let at = |half: usize| ((half * rows + b) * n + t) * v; // start of [half * B + b, t, :]
            let row: Vec<f32> = match run.config.guidance {
                Guidance::Off => last[at(0)..at(0) + v].to_vec(),
                Guidance::Cfg { scale } => (0..v).map(|j| {
                    let (u, c) = (last[at(0) + j], last[at(1) + j]);
                    u + scale * (c - u)
                }).collect(),
            };
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(row[a[flat] as usize], best, "token {flat}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same seed gives the same ids on 1 and 2 threads.
    #[test]
    fn same_result_on_any_thread_count(run in run_strategy(true)) {
        let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let one = pool(1).install(|| run.each_step(|_, _, _, _| {}));
        let two = pool(2).install(|| run.each_step(|_, _, _, _| {}));
        assert_eq!(one, two);
    }
}

/// A larger case than proptest draws: 4096 tokens, so rayon really splits the work.
#[test]
fn same_result_on_any_thread_count_large() {
    let layout = TokenLayout::image(2, 64, 64, 96, 200).unwrap();
    let config = SamplerConfig {
        guidance: Guidance::Cfg { scale: 4.0 },
        seed: 7,
        ..SamplerConfig::new(3)
    };
    let logits = SplitMix(3).logits(layout.logits_len(config.guidance).unwrap(), 1.0);
    let sampler = Sampler::new(config).unwrap();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut ids = layout.all_masked().unwrap();
        pool.install(|| {
            (0..3).for_each(|s| drop(sampler.step(s, &mut ids, &logits, &layout).unwrap()))
        });
        ids
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    assert!(one.iter().all(|&id| id < 96));
}
