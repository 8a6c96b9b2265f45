//! The CUDA backend's kernels: CUDA C sources compiled at first use with NVRTC, and the Rust
//! side that opens a device, builds and caches modules, and launches kernels.
//!
//! Three layers per op, as in the style guide:
//! - the kernel, in `kernels/cuda/<op>.cu`, one parameter struct by value, symbols `<op>_<dtype>`;
//! - the launcher, [`ops`]: checks a parameter struct's shapes and strides and picks the grid,
//!   block and shared memory, as a [`ops::Launch`] that does not depend on where it runs;
//! - the runner: [`CudaDevice::launch`] on a GPU, or `crate::emu::run` (feature `emulate`)
//!   which runs the same sources compiled with g++ under a CPU emulator, for tests.
//!
//! Storage: activations and weight matrices bf16, the residual stream, vectors (biases, norm
//! weights, modulations) and logits f32; every kernel accumulates in f32.
//!
//! Opening a device never panics: without a driver library it returns
//! [`CudaError::NoDriver`] ("no CUDA driver found (libcuda.so.1): ...").

mod device;
mod error;
pub mod nvrtc;
pub mod ops;
pub mod params;

pub use device::{check_driver, CudaDevice, KernelTime, DRIVER_LIB};
pub use error::CudaError;
pub use nvrtc::Module;
