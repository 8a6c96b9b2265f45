//! The CUDA backend (`muddit_engine::cuda`) on the CPU emulator of the CUDA sources, against
//! the CPU backend: the checks of `muddit_tests::cuda_checks` (documented there; the same list
//! `cuda_gpu.rs` runs on GPU 0), plus the clear error without a driver. Run with
//! `cargo test --release -p muddit-tests --features emulate --test cuda_emulated`.
#![cfg(feature = "emulate")]

use muddit_engine::cuda;
use muddit_engine::Error;

muddit_tests::cuda_check_tests!(emulated);

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
