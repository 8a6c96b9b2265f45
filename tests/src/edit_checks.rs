//! Edits (img2img, inpainting, outpainting) on a CUDA device against the CPU backend, written
//! once per device (`edit_check_tests!`): the device sampler keeps exactly the tokens the CPU
//! sampler keeps, and whole device runs start from the edit's ids and never write its kept
//! tokens.

use std::sync::Arc;

use muddit_engine::cuda::{self, CudaPipeline, Device, DeviceSampler};
use muddit_engine::pipeline::{EditIds, Pipeline, TextToImage};
use muddit_sampler::{DrawRule, Guidance, Sampler, SamplerConfig, Temperature, TokenLayout};

use crate::cuda_checks::decisive_case;
use crate::{encoded_eval_image, encoded_left_half, guided_request, repo};

/// The device sampler with a keep grid vs `Sampler::step_keeping`, rows seeded one by one, on
/// logits that depend on the ids: identical ids and `k` after every step, at temperatures
/// where a known token could be re-masked (|T| > 4.3, both signs) and with guidance.
pub fn device_sampler_keeps_what_the_cpu_sampler_keeps(dev: &Arc<Device>) {
    let (b, h, w, v, mask) = (2, 6, 10, 64, 71);
    let layout = TokenLayout::image(b, h, w, v, mask).expect("layout");
    let n = h * w;
    let keep: Vec<bool> = (0..n).map(|t| t % w >= 6 || t / w == 0).collect();
    let start: Vec<u32> = (0..b * n).map(|i| (i * 13 % v) as u32).collect();
    let temperatures = [
        Temperature::default(),
        Temperature::Anneal {
            start: 40.0,
            end: 20.0,
        },
        Temperature::Anneal {
            start: -30.0,
            end: -5.0,
        },
    ];
    for temperature in temperatures {
        let config = SamplerConfig {
            guidance: Guidance::Cfg { scale: 3.0 },
            draw: DrawRule::Sample,
            temperature,
            seed: 5,
            ..SamplerConfig::new(5)
        };
        let sampler = Sampler::new(config).expect("sampler").with_seed_per_row();
        let mut cpu_ids = start.clone();
        let first = sampler
            .prepare_edit(&mut cpu_ids, &keep, 0.7, &layout)
            .expect("edit")
            .expect("something masked");
        let mut state = DeviceSampler::new(dev, sampler.clone(), layout, &cpu_ids)
            .and_then(|s| s.keeping(keep.clone()))
            .expect("device sampler");
        for step in first..config.steps {
            let logits: Vec<f32> = (0..2 * b * n * v)
                .map(|i| {
                    let id = cpu_ids[(i / v) % (b * n)] as usize;
                    ((i * 2654435761 + id * 97 + step * 31) % 1000) as f32 / 250.0 - 2.0
                })
                .collect();
            let dl = dev.upload(&logits).expect("upload");
            let k = state.step(dev, step, dl.ptr()).expect("device step");
            let report = sampler
                .step_keeping(step, &mut cpu_ids, &logits, &layout, &keep)
                .expect("CPU step");
            assert_eq!(k, report.mask_len, "{temperature:?} step {step}: k per row");
            let dev_ids = state.ids(dev).expect("ids");
            assert_eq!(dev_ids, cpu_ids, "{temperature:?} step {step}");
            for (i, (&got, &was)) in dev_ids.iter().zip(&start).enumerate() {
                assert!(
                    !keep[i % n] || got == was,
                    "{temperature:?} step {step}: kept {i}"
                );
            }
        }
        println!("device sampler, {temperature:?}: kept tokens and ids identical to the CPU's");
    }
}

/// The three edits of an eval image on the decisive fixture (greedy, no guidance), all on the
/// device: exactly the CPU backend's ids, kept tokens as encoded.
pub fn whole_device_edits_of_the_decisive_model_give_the_cpu_ids(dev: &Arc<Device>) {
    let (pipe, t2i) = decisive_case();
    let models = CudaPipeline::load(dev, &pipe.root).expect("device models");
    for (name, edit) in edits(&pipe) {
        let req = TextToImage {
            prompts: t2i.prompts[4..5].to_vec(),
            edit: Some(edit.clone()),
            ..t2i.clone()
        };
        let gpu = cuda::text_to_image(&pipe, &models, &req, &mut |_| {}).expect("device run");
        let cpu = pipe.text_to_image(&req, &mut |_| {}).expect("CPU run");
        let differ = gpu.ids.iter().zip(&cpu.ids).filter(|(a, b)| a != b).count();
        println!(
            "decisive model, {name}: {differ} of {} ids differ from the CPU backend",
            cpu.ids.len()
        );
        assert_kept(name, &gpu.ids, &edit);
        assert_eq!(gpu.ids, cpu.ids, "{name}: device ids vs the CPU backend's");
    }
}

/// Guided inpainting with a negative prompt, a batch of two prompts, of the default model on
/// the device: the unmasked tokens exactly as encoded, every other a code; the ids that differ
/// from the CPU run (bf16 near-ties) printed.
pub fn guided_device_inpainting_of_the_default_model_keeps_the_unmasked_tokens(dev: &Arc<Device>) {
    let root = repo().join("models/shapes-64");
    let pipe = Pipeline::load(&root).expect("default model");
    let models = CudaPipeline::load(dev, &root).expect("device models");
    let (_, edit) = edits(&pipe).into_iter().next().expect("inpainting");
    let req = guided_request(
        &[
            "a green square to the left of a blue circle",
            "a white triangle to the left of a blue circle",
        ],
        1,
        (6, 9),
        Some(edit.clone()),
    );
    let gpu = cuda::text_to_image(&pipe, &models, &req, &mut |_| {}).expect("device run");
    let cpu = pipe.text_to_image(&req, &mut |_| {}).expect("CPU run");
    assert_kept("guided inpainting", &gpu.ids, &edit);
    let codes = pipe.transformer_cfg.codebook_size as i64;
    assert!(
        gpu.ids.iter().all(|&id| (0..codes).contains(&id)),
        "every id a code"
    );
    let differ = gpu.ids.iter().zip(&cpu.ids).filter(|(a, b)| a != b).count();
    println!(
        "default model, guided inpainting: {differ} of {} ids differ from the CPU backend",
        cpu.ids.len()
    );
}

/// Inpainting (left half), outpainting (the left half grown by 32 px) and img2img (0.5) of
/// eval image 003 on `pipe`'s VQ encoder.
fn edits(pipe: &Pipeline) -> Vec<(&'static str, EditIds)> {
    let (image, ids) = encoded_eval_image(pipe, "003.png");
    let half = encoded_left_half(pipe, &image);
    let mask_id = pipe.transformer_cfg.mask_id() as u32;
    let left: Vec<bool> = (0..64).map(|t| t % 8 < 4).collect();
    let place = |ids: &[i64], grid, regenerate: Option<&[bool]>, pads, strength| {
        EditIds::place(ids, grid, regenerate, pads, mask_id, strength)
            .expect("edit")
            .1
    };
    vec![
        ("inpainting", place(&ids, (8, 8), Some(&left), [0; 4], 1.0)),
        ("outpainting", place(&half, (8, 4), None, [0, 0, 4, 0], 1.0)),
        ("img2img", place(&ids, (8, 8), None, [0; 4], 0.5)),
    ]
}

/// Every image of `ids` `[B, n]` holds the edit's ids where it keeps them.
fn assert_kept(what: &str, ids: &[i64], edit: &EditIds) {
    let n = edit.keep.len();
    for (i, &id) in ids.iter().enumerate() {
        if edit.keep[i % n] {
            assert_eq!(id, i64::from(edit.ids[i % n]), "{what}: kept token {i}");
        }
    }
}

/// The checks above, one test each on `$device`: `muddit_tests::edit_check_tests!(emulated);`.
#[macro_export]
macro_rules! edit_check_tests {
    ($device:ident) => {
        $crate::test_device!($device; edit_checks:
            device_sampler_keeps_what_the_cpu_sampler_keeps,
            whole_device_edits_of_the_decisive_model_give_the_cpu_ids,
            guided_device_inpainting_of_the_default_model_keeps_the_unmasked_tokens,
        );
    };
}
