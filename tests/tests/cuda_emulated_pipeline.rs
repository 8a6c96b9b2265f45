//! The CUDA backend's text encoder, VQ decoder and whole text-to-image on the CPU emulator of
//! the CUDA sources, against the CPU backend: the checks of `muddit_tests::cuda_pipeline_checks`
//! (bars documented there). Run with
//! `cargo test --release -p muddit-tests --features emulate --test cuda_emulated_pipeline`.
#![cfg(feature = "emulate")]

use std::sync::Arc;

use muddit_engine::cuda::Device;
use muddit_tests::cuda_pipeline_checks as checks;

fn emulated() -> Arc<Device> {
    Arc::new(Device::emulated())
}

#[test]
fn vq_decoder_three_levels_with_mid_attention_matches_the_cpu() {
    checks::vq_decoder_three_levels_with_mid_attention_matches_the_cpu(&emulated());
}

#[test]
fn vq_decoder_gelu_padded_latents_matches_the_cpu() {
    checks::vq_decoder_gelu_padded_latents_matches_the_cpu(&emulated());
}

#[test]
fn vq_decoder_refuses_spatial_norms_with_a_clear_error() {
    checks::vq_decoder_refuses_spatial_norms_with_a_clear_error(&emulated());
}

#[test]
fn clip_gelu_argmax_eos_matches_the_cpu() {
    checks::clip_gelu_argmax_eos_matches_the_cpu(&emulated());
}

#[test]
fn clip_quick_gelu_first_eos_matches_the_cpu() {
    checks::clip_quick_gelu_first_eos_matches_the_cpu(&emulated());
}

#[test]
fn default_model_text_encoder_and_decoder_match_the_cpu() {
    checks::default_model_text_encoder_and_decoder_match_the_cpu(&emulated());
}

#[test]
fn whole_device_text_to_image_of_the_default_model_matches_the_cpu() {
    checks::whole_device_text_to_image_of_the_default_model_matches_the_cpu(&emulated());
}

#[test]
fn whole_device_text_to_image_of_the_decisive_model_gives_the_cpu_ids() {
    checks::whole_device_text_to_image_of_the_decisive_model_gives_the_cpu_ids(&emulated());
}

#[test]
fn vq_encoder_three_levels_with_mid_attention_matches_the_cpu() {
    checks::vq_encoder_three_levels_with_mid_attention_matches_the_cpu(&emulated());
}

#[test]
fn vq_encoder_gelu_padded_latents_matches_the_cpu() {
    checks::vq_encoder_gelu_padded_latents_matches_the_cpu(&emulated());
}

#[test]
fn vq_encoder_of_a_spatial_norm_model_matches_the_cpu() {
    checks::vq_encoder_of_a_spatial_norm_model_matches_the_cpu(&emulated());
}

#[test]
fn default_model_vq_encoder_matches_the_cpu_on_eval_images() {
    checks::default_model_vq_encoder_matches_the_cpu_on_eval_images(&emulated());
}

#[test]
fn default_model_device_captions_match_the_cpu() {
    checks::default_model_device_captions_match_the_cpu(&emulated());
}

#[test]
fn default_model_device_vqa_matches_the_cpu() {
    checks::default_model_device_vqa_matches_the_cpu(&emulated());
}
