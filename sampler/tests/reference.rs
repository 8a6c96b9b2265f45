//! Parity with upstream `Scheduler.step` (Muddit `src/scheduler.py`) on recorded noise.
//!
//! The fixtures come from `tools/fixtures/make_sampler_fixtures.py`, which runs the upstream
//! step with its two random sources replaced by the uniforms of this crate's random source
//! (computed there by an independent numpy Philox): the tokens after every step must be
//! identical, for a guided 32x32 image grid and for two 77-token text rows, cosine and linear.

use std::collections::HashMap;

use muddit_sampler::{
    DrawRule, Guidance, MaskSchedule, RandomSource, Sampler, SamplerConfig, StepUniforms,
    Temperature, TokenLayout,
};
use safetensors::{Dtype, SafeTensors};

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Self { bytes }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("a safetensors file")
    }

    fn meta(&self) -> HashMap<String, String> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes).expect("a safetensors header");
        metadata.metadata().clone().expect("case metadata")
    }

    fn param<T: std::str::FromStr>(&self, key: &str) -> T {
        let meta = self.meta();
        let text = meta
            .get(key)
            .unwrap_or_else(|| panic!("metadata key {key}"));
        text.parse()
            .unwrap_or_else(|_| panic!("metadata {key} = {text}"))
    }

    /// The raw little-endian elements of `name`, checked to have `dtype`, and its shape.
    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<u8>, Vec<usize>) {
        let st = self.tensors();
        let view = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("tensor {name}: {e}"));
        assert_eq!(view.dtype(), dtype, "dtype of {name}");
        (view.data().to_vec(), view.shape().to_vec())
    }

    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        self.words(name, Dtype::F32, f32::from_le_bytes)
    }

    fn i32(&self, name: &str) -> (Vec<i32>, Vec<usize>) {
        self.words(name, Dtype::I32, i32::from_le_bytes)
    }

    /// A tensor of 4-byte little-endian elements, each read by `from`.
    fn words<T>(&self, name: &str, dtype: Dtype, from: fn([u8; 4]) -> T) -> (Vec<T>, Vec<usize>) {
        let (raw, shape) = self.raw(name, dtype);
        let values = raw.chunks_exact(4).map(|b| from([b[0], b[1], b[2], b[3]]));
        (values.collect(), shape)
    }

    fn ids(&self, name: &str) -> (Vec<u32>, Vec<usize>) {
        let (values, shape) = self.i32(name);
        (
            values
                .into_iter()
                .map(|v| u32::try_from(v).expect("ids are >= 0"))
                .collect(),
            shape,
        )
    }

    /// int8 logits `q` as `q / logit_scale` (exact in f32).
    fn logits(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let (raw, shape) = self.raw(name, Dtype::I8);
        let scale: f32 = self.param("logit_scale");
        (
            raw.into_iter()
                .map(|b| f32::from(b as i8) / scale)
                .collect(),
            shape,
        )
    }
}

/// One parity case: a sampler, a layout and per-step logits / uniforms.
struct Case {
    name: &'static str,
    fixture: Fixture,
    layout: TokenLayout,
    config: SamplerConfig,
    /// `[S][G * B * n * V]`
    logits: Vec<Vec<f32>>,
}

impl Case {
    fn image(schedule: MaskSchedule) -> Self {
        let fixture = Fixture::load("image_cfg.safetensors");
        let p = |key: &str| fixture.param::<usize>(key);
        let layout = TokenLayout::image(
            p("batch"),
            p("height"),
            p("width"),
            p("vocab"),
            p("mask_id") as u32,
        )
        .unwrap();
        let config = SamplerConfig {
            steps: p("steps"),
            schedule,
            temperature: Temperature::Anneal {
                start: fixture.param("temperature_start"),
                end: fixture.param("temperature_end"),
            },
            guidance: Guidance::Cfg {
                scale: fixture.param("guidance"),
            },
            draw: DrawRule::Sample,
            seed: fixture.param("seed"),
        };
        let (uncond, shape) = fixture.logits("uncond_q"); // [S, B, n, V]
        let (cond, _) = fixture.logits("cond_q");
        let per_step = shape[1..].iter().product::<usize>();
        let logits = (0..config.steps)
            .map(|s| {
                [
                    &uncond[s * per_step..][..per_step],
                    &cond[s * per_step..][..per_step],
                ]
                .concat()
            })
            .collect(); // [S][2B, n, V], unconditional rows first
        Self {
            name: "image_cfg",
            fixture,
            layout,
            config,
            logits,
        }
    }

    fn text(schedule: MaskSchedule) -> Self {
        let fixture = Fixture::load("text.safetensors");
        let p = |key: &str| fixture.param::<usize>(key);
        let layout = TokenLayout::text(p("batch"), p("tokens"), p("vocab"), p("mask_id") as u32);
        let config = SamplerConfig {
            steps: p("steps"),
            schedule,
            temperature: Temperature::Scalar(fixture.param("temperature_scalar")),
            guidance: Guidance::Off,
            draw: DrawRule::Sample,
            seed: fixture.param("seed"),
        };
        let (logits, shape) = fixture.logits("logits_q"); // [S, B, n, V]
        let per_step = shape[1..].iter().product::<usize>();
        let logits = logits.chunks_exact(per_step).map(<[f32]>::to_vec).collect();
        Self {
            name: "text",
            fixture,
            layout,
            config,
            logits,
        }
    }

    /// Runs every step with the recorded uniforms and, beside it, with the seeded source;
    /// both must give the reference's ids after each step.
    fn check(&self) {
        let schedule = self.config.schedule.config_name();
        let sampler = Sampler::new(self.config).unwrap();
        let (want, shape) = self.fixture.ids(&format!("ids_{schedule}")); // [S, B, n]
        let (draw, _) = self.fixture.f32("draw"); // [S, B, n]
        let (gumbel, _) = self.fixture.f32("gumbel");
        let len = self.layout.ids_len().unwrap();
        assert_eq!(
            shape,
            [self.config.steps, self.layout.batch, self.layout.tokens]
        );
        let (mut replayed, _) = self.fixture.ids("start");
        let mut seeded = replayed.clone();
        for step in 0..self.config.steps {
            let span = step * len..(step + 1) * len;
            let uniforms = StepUniforms {
                draw: &draw[span.clone()],
                gumbel: &gumbel[span.clone()],
            };
            let logits = &self.logits[step];
            let report = sampler
                .step_with_uniforms(step, &mut replayed, logits, &self.layout, uniforms)
                .unwrap();
            sampler
                .step(step, &mut seeded, logits, &self.layout)
                .unwrap();
            let mismatches = replayed
                .iter()
                .zip(&want[span.clone()])
                .filter(|(a, b)| a != b)
                .count();
            println!(
                "{} {schedule} step {step}: mask_len {:?}, masked {:?}, {mismatches} of {len} ids differ from the reference",
                self.name, report.mask_len, report.masked
            );
            assert_eq!(mismatches, 0, "{} {schedule} step {step}", self.name);
            assert_eq!(
                seeded, replayed,
                "seeded source vs recorded uniforms at step {step}"
            );
        }
    }
}

/// One test per case and schedule, each checking every step against the reference.
macro_rules! reference_tests {
    ($($name:ident: $case:ident $schedule:ident;)*) => {$(
        #[test]
        fn $name() {
            Case::$case(MaskSchedule::$schedule).check();
        }
    )*};
}

reference_tests! {
    image_grid_with_guidance_matches_reference_cosine: image Cosine;
    image_grid_with_guidance_matches_reference_linear: image Linear;
    text_rows_match_reference_cosine: text Cosine;
    text_rows_match_reference_linear: text Linear;
}

#[test]
fn random_source_matches_the_numpy_philox() {
    for name in ["image_cfg.safetensors", "text.safetensors"] {
        let fixture = Fixture::load(name);
        let source = RandomSource::new(fixture.param("seed"));
        let (draw, shape) = fixture.f32("draw"); // [S, B, n]
        let (gumbel, _) = fixture.f32("gumbel");
        let (batch, tokens) = (shape[1], shape[2]);
        let mut d = vec![0.0; batch * tokens];
        let mut g = vec![0.0; batch * tokens];
        for step in 0..shape[0] {
            source
                .fill_step(step, batch, tokens, &mut d, &mut g)
                .unwrap();
            let span = step * d.len()..(step + 1) * d.len();
            assert_eq!(d, draw[span.clone()], "{name} draw uniforms, step {step}");
            assert_eq!(g, gumbel[span], "{name} gumbel uniforms, step {step}");
        }
    }
}

/// `k` on fully masked rows, recorded from the upstream step for S = 2..40 and
/// n in {2, 77, 256, 1024, 4096}: the f32 arithmetic of the schedule must match exactly.
#[test]
fn mask_len_matches_reference_table() {
    let fixture = Fixture::load("tables.safetensors");
    for schedule in [MaskSchedule::Cosine, MaskSchedule::Linear] {
        let (rows, shape) = fixture.i32(&format!("mask_len_{}", schedule.config_name()));
        assert_eq!(shape[1], 4);
        for row in rows.chunks_exact(4) {
            let [steps, step, tokens, want] = [row[0], row[1], row[2], row[3]].map(|v| v as usize);
            let sampler = Sampler::new(SamplerConfig {
                schedule,
                ..SamplerConfig::new(steps)
            })
            .unwrap();
            let got = sampler.mask_len(step, tokens, tokens).unwrap();
            assert_eq!(
                got, want,
                "{schedule:?}: S {steps}, step {step}, n {tokens}"
            );
        }
        println!("{schedule:?}: {} mask lengths match", rows.len() / 4);
    }
}

/// `set_timesteps(S, temperature).temperatures` for S = 1..40: within one ulp (PyTorch's
/// vectorized `linspace` steps from the vector's first lane, which can round differently).
#[test]
fn temperatures_match_reference_table() {
    let fixture = Fixture::load("tables.safetensors");
    let cases = [
        (
            "pair_2_0",
            Temperature::Anneal {
                start: 2.0,
                end: 0.0,
            },
        ),
        (
            "pair_3_0.5",
            Temperature::Anneal {
                start: 3.0,
                end: 0.5,
            },
        ),
        ("scalar_2", Temperature::Scalar(2.0)),
        ("scalar_1.5", Temperature::Scalar(1.5)),
    ];
    for (name, temperature) in cases {
        let (want, _) = fixture.f32(&format!("temps_{name}"));
        let got: Vec<f32> = (1..=40)
            .flat_map(|steps| temperature.per_step(steps))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        let mut inexact = 0;
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let ulps = (g.to_bits() as i64 - w.to_bits() as i64).abs();
            assert!(ulps <= 1 || g == w, "{name} [{i}]: {g} vs {w}");
            inexact += usize::from(g != w);
        }
        println!(
            "temperatures {name}: {inexact} of {} differ by one ulp",
            got.len()
        );
    }
}
