//! The device sampler under the emulator vs muddit_sampler::Sampler::step_with_uniforms: the
//! same logits and uniforms must give exactly the same ids at every step (guided or not,
//! categorical or greedy, text-sized and image-sized rows, odd vocabularies).
#![cfg(feature = "emulate")]

mod common;
use common::*;
use muddit_kernels::cuda::sampler::{self, RemaskParams, SampleParams};
use muddit_kernels::emu;
use muddit_sampler::{
    DrawRule, Guidance, RandomSource, Sampler, SamplerConfig, StepUniforms, TokenLayout,
};

/// Runs one step on the emulated kernels: `ids` updated in place; returns `(k per row, bad)`.
fn device_step(
    sampler: &Sampler,
    step: usize,
    ids: &mut [u32],
    logits: &[f32],
    layout: &TokenLayout,
    draw: &[f32],
    gumbel: &[f32],
) -> (Vec<i32>, i32) {
    let cfg = sampler.config();
    let n = layout.ids_len().unwrap();
    let (mut drawn, mut conf) = (vec![0u32; n], vec![0.0f32; n]);
    let mut bad = [i32::MAX];
    let (guided, scale) = match cfg.guidance {
        Guidance::Off => (0, 0.0),
        Guidance::Cfg { scale } => (1, scale),
    };
    let p = SampleParams {
        logits: addr(logits),
        ids: addr(ids),
        draw_u: addr(draw),
        gumbel_u: addr(gumbel),
        drawn: addr_mut(&mut drawn),
        conf: addr_mut(&mut conf),
        bad: addr_mut(&mut bad),
        batch: layout.batch as i32,
        tokens: layout.tokens as i32,
        vocab: layout.vocab as i32,
        mask_id: layout.mask_id,
        guided,
        scale,
        greedy: (cfg.draw == DrawRule::Greedy) as i32,
        temperature: sampler.temperatures()[step],
    };
    // SAFETY: logits hold G * B * n * V floats, ids/draw/gumbel/drawn/conf B * n, bad one i32.
    unsafe { emu::run(&sampler::sample_tokens(p).unwrap()) };
    let last = step + 1 == cfg.steps;
    let progress = (step + 1) as f32 / cfg.steps as f32;
    let raw = (layout.tokens as f32 * cfg.schedule.mask_ratio(progress)).floor() as i32;
    let mut k = vec![0i32; layout.batch];
    let r = RemaskParams {
        ids: addr_mut(ids),
        drawn: addr(&drawn),
        conf: addr(&conf),
        mask_len: addr_mut(&mut k),
        batch: layout.batch as i32,
        tokens: layout.tokens as i32,
        mask_id: layout.mask_id,
        raw_len: raw,
        last: last as i32,
        pad_: 0,
    };
    // SAFETY: ids, drawn, conf hold B * n elements, k holds B.
    unsafe { emu::run(&sampler::remask(r).unwrap()) };
    (k, bad[0])
}

fn run_all_steps(layout: TokenLayout, guidance: Guidance, draw: DrawRule, steps: usize, seed: u64) {
    let config = SamplerConfig {
        guidance,
        draw,
        seed,
        ..SamplerConfig::new(steps)
    };
    let sampler = Sampler::new(config).unwrap();
    let random = RandomSource::new(seed);
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut cpu_ids = layout.all_masked().unwrap();
    // A few known ids from the start (as in VQA: the question's tokens).
    for i in (0..cpu_ids.len()).step_by(7) {
        cpu_ids[i] = (i % layout.vocab) as u32;
    }
    let mut dev_ids = cpu_ids.clone();
    let n = layout.ids_len().unwrap();
    let (mut du, mut gu) = (vec![0.0f32; n], vec![0.0f32; n]);
    for step in 0..steps {
        let len = layout.logits_len(guidance).unwrap();
        // Peaky logits (some tokens near-certain, so probabilities round to 1) plus ties.
        let logits: Vec<f32> = (0..len)
            .map(|i| match i % 97 {
                0 => 30.0,
                1 => 30.0,
                _ => rng.unit() * 8.0 - 4.0,
            })
            .collect();
        random
            .fill_step(step, layout.batch, layout.tokens, &mut du, &mut gu)
            .unwrap();
        let uniforms = StepUniforms {
            draw: &du,
            gumbel: &gu,
        };
        let report = sampler
            .step_with_uniforms(step, &mut cpu_ids, &logits, &layout, uniforms)
            .unwrap();
        let (k, bad) = device_step(&sampler, step, &mut dev_ids, &logits, &layout, &du, &gu);
        assert_eq!(bad, i32::MAX, "no bad logits here");
        let k: Vec<usize> = k.iter().map(|&v| v as usize).collect();
        assert_eq!(k, report.mask_len, "step {step}: k per row");
        let differ = cpu_ids.iter().zip(&dev_ids).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{guidance:?} {draw:?} step {step}: {differ} ids differ"
        );
    }
    println!(
        "sampler B {} n {} V {} {guidance:?} {draw:?}: {steps} steps, ids identical",
        layout.batch, layout.tokens, layout.vocab
    );
}

#[test]
fn text_rows_match_the_cpu_sampler_bit_for_bit() {
    let layout = TokenLayout::text(2, 77, 333, 332);
    for draw in [DrawRule::Sample, DrawRule::Greedy] {
        run_all_steps(layout, Guidance::Off, draw, 4, 7);
    }
}

/// The text head's real width, as captioning and VQA run it: CLIP's 49,408 tokens plus
/// `<mask>` as the last id inside the vocabulary; 49,409 = 16 x 3088 + 1 leaves a tail of one in
/// the 16-lane exp-sum and a last draw block of one logit.
#[test]
fn full_text_vocabulary_rows_match_the_cpu_sampler_bit_for_bit() {
    let layout = TokenLayout::text(2, 77, 49409, 49408);
    run_all_steps(layout, Guidance::Off, DrawRule::Sample, 3, 5);
    run_all_steps(layout, Guidance::Off, DrawRule::Greedy, 2, 6);
}

#[test]
fn guided_image_rows_match_the_cpu_sampler_bit_for_bit() {
    let layout = TokenLayout::image(1, 16, 16, 1000, 1000).unwrap();
    run_all_steps(
        layout,
        Guidance::Cfg { scale: 9.0 },
        DrawRule::Sample,
        3,
        11,
    );
    run_all_steps(
        layout,
        Guidance::Cfg { scale: 9.0 },
        DrawRule::Greedy,
        2,
        12,
    );
}

#[test]
fn bad_logits_are_reported() {
    let layout = TokenLayout::text(1, 4, 5, 4);
    let sampler = Sampler::new(SamplerConfig::new(2)).unwrap();
    let mut logits = vec![0.0f32; 20];
    logits[2 * 5 + 1] = f32::NAN;
    let mut ids = vec![4u32; 4];
    let u = vec![0.5f32; 4];
    let (_, bad) = device_step(&sampler, 0, &mut ids, &logits, &layout, &u, &u);
    assert_eq!(bad, 2);
}
