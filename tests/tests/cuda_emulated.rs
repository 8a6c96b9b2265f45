//! The CUDA backend (`muddit_engine::cuda`) on the CPU emulator of the CUDA sources, against
//! the CPU backend: the checks of `muddit_tests::cuda_checks` (documented there), plus the
//! clear error without a driver. Run with
//! `cargo test --release -p muddit-tests --features emulate --test cuda_emulated`.
#![cfg(feature = "emulate")]

use std::sync::Arc;

use muddit_engine::cuda::{self, Device};
use muddit_engine::Error;
use muddit_tests::cuda_checks as checks;

fn emulated() -> Arc<Device> {
    Arc::new(Device::emulated())
}

#[test]
fn forward_matches_the_cpu_forward_within_bf16_tolerance() {
    checks::forward_matches_the_cpu_forward_within_bf16_tolerance(&emulated());
}

#[test]
fn device_sampler_matches_the_cpu_sampler_on_device_logits() {
    checks::device_sampler_matches_the_cpu_sampler_on_device_logits(&emulated());
}

#[test]
fn greedy_text_to_image_with_guidance_device_loop_is_exact() {
    checks::check_text_to_image(&emulated(), "t2i_guided");
}

#[test]
fn greedy_text_to_image_without_guidance_device_loop_is_exact() {
    checks::check_text_to_image(&emulated(), "t2i_unguided");
}

#[test]
fn guided_steps_agree_with_the_cpu_up_to_near_ties() {
    checks::check_steps_teacher_forced(&emulated(), "t2i_guided");
}

#[test]
fn unguided_steps_agree_with_the_cpu_up_to_near_ties() {
    checks::check_steps_teacher_forced(&emulated(), "t2i_unguided");
}

#[test]
fn greedy_text_to_image_of_the_default_model_agrees_up_to_near_ties() {
    checks::greedy_text_to_image_of_the_default_model_agrees_up_to_near_ties(&emulated());
}

#[test]
fn greedy_text_to_image_of_a_decisive_model_gives_the_cpu_ids() {
    checks::greedy_text_to_image_of_a_decisive_model_gives_the_cpu_ids(&emulated());
}

#[test]
fn opening_a_gpu_without_a_driver_is_a_clear_error() {
    match cuda::open(0) {
        Ok(dev) => println!("a GPU is present: {}", dev.describe()),
        Err(e @ Error::Cuda(_)) => {
            let msg = e.to_string();
            println!("{msg}");
            assert!(
                msg.contains("no CUDA driver found") || msg.contains("CUDA device 0"),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}
