//! The GPU suite: the checks of `muddit_tests::cuda_checks` on GPU 0, the same ones the
//! emulator passes in CI (`cuda_emulated.rs`). Without a driver or a GPU each test says so and
//! passes, unless `MUDDIT_REQUIRE_CUDA=1`, which turns a missing GPU into a failure: run
//! `MUDDIT_REQUIRE_CUDA=1 cargo test --release -p muddit-tests --test cuda_gpu -- --nocapture`
//! on a GPU machine.

use std::sync::Arc;

use muddit_engine::cuda::{self, Device, DeviceModels};
use muddit_tests::{cuda_checks as checks, cuda_pipeline_checks as pipeline};

/// GPU 0, or `None` (said on stderr) where there is none and none is required.
fn gpu() -> Option<Arc<Device>> {
    match cuda::open(0) {
        Ok(dev) => {
            println!("running on {}", dev.describe());
            Some(dev)
        }
        Err(e) if std::env::var("MUDDIT_REQUIRE_CUDA").as_deref() == Ok("1") => {
            panic!("MUDDIT_REQUIRE_CUDA=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!(
                "no GPU, GPU suite not run (MUDDIT_REQUIRE_CUDA=1 makes this a failure): {e}"
            );
            None
        }
    }
}

#[test]
fn forward_matches_the_cpu_forward_within_bf16_tolerance() {
    if let Some(dev) = gpu() {
        checks::forward_matches_the_cpu_forward_within_bf16_tolerance(&dev);
    }
}

#[test]
fn device_sampler_matches_the_cpu_sampler_on_device_logits() {
    if let Some(dev) = gpu() {
        checks::device_sampler_matches_the_cpu_sampler_on_device_logits(&dev);
    }
}

#[test]
fn greedy_text_to_image_device_loops_are_exact() {
    if let Some(dev) = gpu() {
        checks::check_text_to_image(&dev, "t2i_guided");
        checks::check_text_to_image(&dev, "t2i_unguided");
    }
}

#[test]
fn steps_agree_with_the_cpu_up_to_near_ties() {
    if let Some(dev) = gpu() {
        checks::check_steps_teacher_forced(&dev, "t2i_guided");
        checks::check_steps_teacher_forced(&dev, "t2i_unguided");
    }
}

#[test]
fn greedy_text_to_image_of_the_default_model_agrees_up_to_near_ties() {
    if let Some(dev) = gpu() {
        checks::greedy_text_to_image_of_the_default_model_agrees_up_to_near_ties(&dev);
    }
}

#[test]
fn greedy_text_to_image_of_a_decisive_model_gives_the_cpu_ids() {
    if let Some(dev) = gpu() {
        checks::greedy_text_to_image_of_a_decisive_model_gives_the_cpu_ids(&dev);
    }
}

/// CUDA-event timings of a whole default-model text-to-image run: the GEMMs, attention and the
/// sampler kernels all show up, with positive GPU times.
#[test]
fn kernel_timings_cover_a_default_model_run() {
    let Some(dev) = gpu() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64");
    let pipe = muddit_engine::pipeline::Pipeline::load(&root).expect("default model");
    let model = cuda::CudaMmdit::load(&dev, &pipe.root).expect("device model");
    let req = muddit_engine::pipeline::TextToImage {
        prompts: vec!["a red circle on the left".into()],
        negative_prompt: String::new(),
        images_per_prompt: 1,
        width: 64,
        height: 64,
        sampler: muddit_sampler::SamplerConfig::new(16),
    };
    dev.start_kernel_timing();
    cuda::text_to_image(
        &pipe,
        DeviceModels::with_host(&model, &pipe),
        &req,
        &mut |_| {},
    )
    .expect("device run");
    let times = dev.kernel_times().expect("kernel times");
    for t in &times {
        println!(
            "{:<24} {:>5} launches {:>9.3} ms",
            t.kernel, t.launches, t.total_ms
        );
    }
    for kernel in [
        "gemm_bf16",
        "flash_attn_d64_bf16",
        "sample_tokens_f32",
        "remask_f32",
    ] {
        let t = times.iter().find(|t| t.kernel == kernel);
        assert!(
            t.is_some_and(|t| t.launches > 0 && t.total_ms > 0.0),
            "{kernel}: {t:?}"
        );
    }
}

#[test]
fn vq_decoder_three_levels_with_mid_attention_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::vq_decoder_three_levels_with_mid_attention_matches_the_cpu(&dev);
    }
}

#[test]
fn vq_decoder_gelu_padded_latents_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::vq_decoder_gelu_padded_latents_matches_the_cpu(&dev);
    }
}

#[test]
fn vq_decoder_refuses_spatial_norms_with_a_clear_error() {
    if let Some(dev) = gpu() {
        pipeline::vq_decoder_refuses_spatial_norms_with_a_clear_error(&dev);
    }
}

#[test]
fn clip_gelu_argmax_eos_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::clip_gelu_argmax_eos_matches_the_cpu(&dev);
    }
}

#[test]
fn clip_quick_gelu_first_eos_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::clip_quick_gelu_first_eos_matches_the_cpu(&dev);
    }
}

#[test]
fn default_model_text_encoder_and_decoder_match_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::default_model_text_encoder_and_decoder_match_the_cpu(&dev);
    }
}

#[test]
fn whole_device_text_to_image_of_the_default_model_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::whole_device_text_to_image_of_the_default_model_matches_the_cpu(&dev);
    }
}

#[test]
fn whole_device_text_to_image_of_the_decisive_model_gives_the_cpu_ids() {
    if let Some(dev) = gpu() {
        pipeline::whole_device_text_to_image_of_the_decisive_model_gives_the_cpu_ids(&dev);
    }
}

#[test]
fn vq_encoder_three_levels_with_mid_attention_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::vq_encoder_three_levels_with_mid_attention_matches_the_cpu(&dev);
    }
}

#[test]
fn vq_encoder_gelu_padded_latents_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::vq_encoder_gelu_padded_latents_matches_the_cpu(&dev);
    }
}

#[test]
fn vq_encoder_of_a_spatial_norm_model_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::vq_encoder_of_a_spatial_norm_model_matches_the_cpu(&dev);
    }
}

#[test]
fn default_model_vq_encoder_matches_the_cpu_on_eval_images() {
    if let Some(dev) = gpu() {
        pipeline::default_model_vq_encoder_matches_the_cpu_on_eval_images(&dev);
    }
}

#[test]
fn default_model_device_captions_match_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::default_model_device_captions_match_the_cpu(&dev);
    }
}

#[test]
fn default_model_device_vqa_matches_the_cpu() {
    if let Some(dev) = gpu() {
        pipeline::default_model_device_vqa_matches_the_cpu(&dev);
    }
}
