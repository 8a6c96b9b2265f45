//! The CUDA backend's text encoder, VQ decoder and encoder, and whole text-to-image and
//! image-to-text runs on the CPU emulator of the CUDA sources, against the CPU backend: the
//! checks of `muddit_tests::cuda_pipeline_checks` (bars documented there; the same list
//! `cuda_gpu.rs` runs on GPU 0). Run with
//! `cargo test --release -p muddit-tests --features emulate --test cuda_emulated_pipeline`.
#![cfg(feature = "emulate")]

muddit_tests::cuda_pipeline_check_tests!(emulated);
