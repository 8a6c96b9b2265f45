//! The CUDA backend's kernels: CUDA C sources compiled at first use with NVRTC, and the Rust
//! side that opens a device, holds its buffers, builds and caches modules, and launches kernels.
//!
//! One Rust file per `.cu` file of `kernels/cuda/` (`norm.rs` for `norm.cu`, ...), each with
//! the three layers of its ops, as in the style guide:
//! - the kernel, in `kernels/cuda/<op>.cu`, one parameter struct by value, symbols `<op>_<dtype>`;
//!   its `#[repr(C)]` mirror beside the launch plan (`common.rs` mirrors what `common.cuh`
//!   shares: row maps, activation codes);
//! - the launch plan, e.g. [`norm::rms_norm`]: checks a parameter struct's shapes and strides
//!   and picks the grid, block and shared memory, as a [`Launch`] that does not depend on where
//!   it runs;
//! - the runner, e.g. [`Device::rms_norm`]: takes buffer ranges ([`Ptr`]) instead of raw
//!   addresses, checks that every element the launch reaches lies inside its buffer, then runs
//!   the plan on the [`Device`]: a GPU (`gpu.rs`, cudarc), or `crate::emu::run` (feature
//!   `emulate`), the same sources compiled with g++ under a CPU emulator, for tests.
//!
//! Storage: activations and weight matrices bf16, the residual stream, vectors (biases, norm
//! weights, modulations) and logits f32; every kernel accumulates in f32.
//!
//! Opening a device never panics: without a driver library it returns
//! [`CudaError::NoDriver`] ("no CUDA driver found (libcuda.so.1): ...").

/// Implements cudarc's `DeviceRepr` for parameter structs.
macro_rules! device_repr {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: a `#[repr(C)]` struct of integers and floats with the layout of the kernel's
        // by-value parameter; it holds no references, so copying its bytes to the launch is exact.
        unsafe impl cudarc::driver::DeviceRepr for $t {}
    )*};
}

pub mod attention;
pub mod common;
mod device;
pub mod elementwise;
mod error;
pub mod gemm;
mod gpu;
pub mod launch;
pub mod norm;
pub mod nvrtc;
pub mod rope;
pub mod sampler;
pub mod vq;

pub use device::{to_bf16, Buffer, Device, Elem, Ptr};
pub use error::CudaError;
pub use gpu::{check_driver, KernelTime, DRIVER_LIB};
pub use launch::Launch;
pub use nvrtc::Module;

type Result<T> = std::result::Result<T, CudaError>;
