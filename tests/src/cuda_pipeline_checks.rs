//! The checks of the CUDA backend's text encoder, VQ decoder and whole text-to-image
//! (`muddit_engine::cuda`) against the CPU backend, for any [`Device`]: the emulator
//! (`tests/tests/cuda_emulated_pipeline.rs`, in CI) and GPU 0 (`tests/tests/cuda_gpu.rs`).
//!
//! The device keeps weights and activations in bf16 (relative rounding 2^-9 per value) and
//! accumulates in f32; the CPU runs in f32. Bars (printed with the measured errors):
//! - VQ decoder, pixels: relative L2 <= `VQ_REL_L2` and max abs <= `VQ_MAX_ABS` times the
//!   reference's largest magnitude (at least 1: images are in [0, 1], where 1/255 = 3.9e-3 is
//!   one 8-bit level; the random fixtures reach +-4). Every conv rounds its output to bf16
//!   (~ 2e-3 relative) through ~ 20 layers: measured rel L2 1.1e-2 and 1.3e-2 on the fixtures,
//!   where the CPU's own bf16 arithmetic (`Compute::Bf16`, products only) gives 8.4e-3 and
//!   9.0e-3 against its f32; a dropped bias or a misplaced tap gives errors of order 1.
//! - CLIP: relative L2 <= `CLIP_REL_L2` on the penultimate hidden states and the projected
//!   pooled vectors (and the final hidden states).
//! - Whole text-to-image of the default model (`CudaPipeline`): at most 5% of the ids differ
//!   from the CPU backend's (near-ties flip and cascade, see `cuda_checks.rs`), and the
//!   device images equal the CPU decoder's images of the same (device) ids to the decoder's
//!   bars. The device decode of a CPU run's ids is checked against that run's images too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::{compare, fixture, i64_tensor};
use muddit_engine::clip_text::load_text_encoder;
use muddit_engine::cuda::{self, CudaClipText, CudaPipeline, CudaVqDecoder, Device};
use muddit_engine::pipeline::{Pipeline, TextToImage};
use muddit_engine::tensor_io::TensorFile;
use muddit_engine::vqvae::load_vqvae;
use muddit_sampler::{DrawRule, SamplerConfig};

/// Relative L2 error of the device decoder's pixels against the CPU decoder's.
pub const VQ_REL_L2: f64 = 2.5e-2;
/// Largest pixel difference of the device decoder, as a fraction of the reference's largest
/// magnitude (at least 1): 13 8-bit levels on an image. Worst elements measured: 1.3%, 1.3%,
/// 1.4% and 3.4% (one edge pixel of a t2i image; its rel L2 is 4e-3).
pub const VQ_MAX_ABS: f64 = 5e-2;
/// Relative L2 error of the device CLIP outputs against the CPU's.
pub const CLIP_REL_L2: f64 = 2e-2;

fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64")
}

/// Prints and checks relative L2 and (when given) max abs, as a fraction of the reference's
/// largest magnitude (at least 1), against their bars.
fn check_close(what: &str, got: &[f32], want: &[f32], rel_l2: f64, max_abs: Option<f64>) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let c = compare(got, want);
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
    let max_abs = max_abs.map(|m| m * scale);
    let abs_bar = max_abs.map_or(String::new(), |m| format!(" (bar {m:.3e})"));
    println!(
        "{what}: rel L2 {:.3e} ({:.1}% of {rel_l2:e}), max abs {:.3e}{abs_bar} at {}",
        c.rel_l2,
        100.0 * c.rel_l2 / rel_l2,
        c.worst_abs,
        c.worst_index
    );
    assert!(c.rel_l2 <= rel_l2, "{what}: rel L2 {:.3e}", c.rel_l2);
    if let Some(m) = max_abs {
        assert!(c.worst_abs <= m, "{what}: max abs {:.3e}", c.worst_abs);
    }
}

fn check_vq_fixture(dev: &Arc<Device>, case: &str) {
    let start = Instant::now();
    let dir = fixture(&format!("sides/{case}"));
    let cpu = load_vqvae(&dir).expect("CPU VQ-VAE");
    let gpu = CudaVqDecoder::load(dev, &dir).expect("device decoder");
    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let (shape, ids) = i64_tensor(&inputs, "decode_tokens");
    let (b, h, w) = (shape[0], shape[1], shape[2]);
    let want = cpu.decode(&ids, b, h, w).expect("CPU decode");
    let got = gpu.decode(&ids, b, h, w).expect("device decode");
    check_close(
        &format!("{case}/decode"),
        &got,
        &want,
        VQ_REL_L2,
        Some(VQ_MAX_ABS),
    );
    // Bad ids are errors, as on the CPU.
    let mut bad = ids.clone();
    bad[1] = cpu.cfg.num_vq_embeddings as i64;
    let err = gpu
        .decode(&bad, b, h, w)
        .expect_err("id outside the codebook");
    assert!(err.to_string().contains("codebook"), "{err}");
    println!("{case}: {:.1} s", start.elapsed().as_secs_f64());
}

pub fn vq_decoder_three_levels_with_mid_attention_matches_the_cpu(dev: &Arc<Device>) {
    check_vq_fixture(dev, "vq_attn_3level");
}

pub fn vq_decoder_gelu_padded_latents_matches_the_cpu(dev: &Arc<Device>) {
    // vq_embed_dim 6 and 4 latent channels: stored zero-padded to 8 on the device.
    check_vq_fixture(dev, "vq_noattn_4level");
}

pub fn vq_decoder_refuses_spatial_norms_with_a_clear_error(dev: &Arc<Device>) {
    let dir = fixture("sides/vq_spatial_2level");
    let err = CudaVqDecoder::load(dev, &dir)
        .err()
        .expect("spatial norms are not on the device");
    assert!(err.to_string().contains("norm_type"), "{err}");
}

fn check_clip_fixture(dev: &Arc<Device>, case: &str) {
    let dir = fixture(&format!("sides/{case}"));
    let cpu = load_text_encoder(&dir).expect("CPU CLIP");
    let gpu = CudaClipText::load(dev, &dir).expect("device CLIP");
    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let (shape, ids) = i64_tensor(&inputs, "input_ids");
    // The fixture's ids may use the appended <mask> row, which t2i never loads: keep them
    // inside the config's vocabulary.
    let v = cpu.cfg.vocab_size as i64;
    let ids: Vec<i64> = ids.iter().map(|&i| i.min(v - 1)).collect();
    let want = cpu.forward(&ids, shape[0]).expect("CPU forward");
    let got = gpu.forward(&ids, shape[0]).expect("device forward");
    for (name, g, w) in [
        ("penultimate", &got.penultimate, &want.penultimate),
        ("text_embeds", &got.text_embeds, &want.text_embeds),
        (
            "last_hidden_state",
            &got.last_hidden_state,
            &want.last_hidden_state,
        ),
    ] {
        check_close(&format!("{case}/{name}"), g, w, CLIP_REL_L2, None);
    }
    let bad = vec![v; 77];
    let err = gpu
        .forward(&bad, 1)
        .err()
        .expect("id outside the vocabulary");
    assert!(err.to_string().contains("input_ids"), "{err}");
}

pub fn clip_gelu_argmax_eos_matches_the_cpu(dev: &Arc<Device>) {
    check_clip_fixture(dev, "clip_gelu_eos2");
}

pub fn clip_quick_gelu_first_eos_matches_the_cpu(dev: &Arc<Device>) {
    check_clip_fixture(dev, "clip_quick_eos");
}

fn request(prompts: &[&str]) -> TextToImage {
    let mut sampler = SamplerConfig::new(16);
    sampler.draw = DrawRule::Greedy;
    TextToImage {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        negative_prompt: String::new(),
        images_per_prompt: 1,
        width: 64,
        height: 64,
        sampler,
    }
}

/// The default model's text encoder and decoder on the device vs the CPU, on the pipeline's
/// own inputs (prompt ids; the ids of a CPU text-to-image run).
pub fn default_model_text_encoder_and_decoder_match_the_cpu(dev: &Arc<Device>) {
    let pipe = Pipeline::load(&default_model()).expect("default model");
    let dev = dev.clone();
    let clip = CudaClipText::load(&dev, &pipe.root).expect("device CLIP");
    let prompts = ["a red circle on the left", "", "a blue square at the top"];
    let mut ids = Vec::new();
    for p in prompts {
        ids.extend(pipe.tokenizer.encode_padded(p).expect("tokens"));
    }
    let want = pipe.text_encoder.forward(&ids, 3).expect("CPU CLIP");
    let got = clip.forward(&ids, 3).expect("device CLIP");
    check_close(
        "shapes-64/clip/penultimate",
        &got.penultimate,
        &want.penultimate,
        CLIP_REL_L2,
        None,
    );
    check_close(
        "shapes-64/clip/text_embeds",
        &got.text_embeds,
        &want.text_embeds,
        CLIP_REL_L2,
        None,
    );

    let vq = CudaVqDecoder::load(&dev, &pipe.root).expect("device decoder");
    let req = request(&[
        "a red circle on the left",
        "a purple triangle in the center",
    ]);
    let cpu = pipe.text_to_image(&req, &mut |_| {}).expect("CPU run");
    let (h, w) = cpu.grid;
    let mut got = vq.decode(&cpu.ids, cpu.batch, h, w).expect("device decode");
    got.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    check_close(
        "shapes-64/decode of the CPU's ids",
        &got,
        &cpu.pixels,
        VQ_REL_L2,
        Some(VQ_MAX_ABS),
    );
}

/// The whole text-to-image on the device (`CudaPipeline`: CLIP, transformer, sampler, VQ
/// decoder) vs the CPU backend: ids equal but for near-ties (at most 5%: a wrong text encoder
/// changes most of them), and the device images equal the CPU decoder's images of the device's
/// ids (clamped to [0, 1], as the pipeline does) to the decoder's tolerance. Measured: 9 of
/// 192 ids differ with 3 prompts, spread over every image (a flip cascades through the later
/// steps), so whole images of equal ids cannot be compared to the CPU run itself.
pub fn whole_device_text_to_image_of_the_default_model_matches_the_cpu(dev: &Arc<Device>) {
    let start = Instant::now();
    let pipe = Pipeline::load(&default_model()).expect("default model");
    let dev = dev.clone();
    let models = CudaPipeline::load(&dev, &pipe.root).expect("device models");
    let req = request(&[
        "a yellow circle to the left of a white square",
        "a blue square at the top",
    ]);
    let gpu = cuda::text_to_image(&pipe, &models, &req, &mut |_| {}).expect("device run");
    let cpu = pipe.text_to_image(&req, &mut |_| {}).expect("CPU run");
    assert_eq!((gpu.batch, gpu.grid), (cpu.batch, cpu.grid));
    assert_eq!(gpu.pixels.len(), cpu.pixels.len(), "pixels");
    let differ = gpu.ids.iter().zip(&cpu.ids).filter(|(a, b)| a != b).count();
    println!(
        "default model, {} prompts, 16 greedy steps, all on the device: {differ} of {} ids differ from the CPU backend",
        cpu.batch,
        cpu.ids.len()
    );
    assert!(
        differ * 20 <= cpu.ids.len(),
        "{differ} of {} ids differ (more than 5%)",
        cpu.ids.len()
    );
    let (h, w) = gpu.grid;
    let mut want = pipe
        .vqvae
        .decode(&gpu.ids, gpu.batch, h, w)
        .expect("CPU decode");
    want.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    check_close(
        "shapes-64/t2i images vs the CPU decode of the device ids",
        &gpu.pixels,
        &want,
        VQ_REL_L2,
        Some(VQ_MAX_ABS),
    );
    let whole = compare(&gpu.pixels, &cpu.pixels);
    println!(
        "device vs CPU run images (ids partly differ, not a bar): rel L2 {:.3e}, max abs {:.3e}; {:.1} s",
        whole.rel_l2,
        whole.worst_abs,
        start.elapsed().as_secs_f64()
    );
}
