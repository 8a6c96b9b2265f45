//! Edits (img2img, inpainting, outpainting) on the CPU emulator of the CUDA sources against the
//! CPU backend: the checks of `muddit_tests::edit_checks` (the same list `cuda_gpu.rs` runs on
//! GPU 0). Run with `cargo test --release -p muddit-tests --features emulate --test edit_emulated`.
#![cfg(feature = "emulate")]

muddit_tests::edit_check_tests!(emulated);
