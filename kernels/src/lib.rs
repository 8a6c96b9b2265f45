//! Compute kernels for muddit.
//!
//! `cpu` holds the operations the CPU backend is built from: matrix products, norms, rotary
//! positions, activations and attention. Every function states its shapes; tensors are
//! row-major `f32` slices, the last dimension contiguous. `cuda` holds the CUDA C kernels
//! (`kernels/cuda/`), their NVRTC build and launch planning; `emu` (feature `emulate`) runs the
//! same sources on the CPU under an emulator, for tests.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "emulate")]
pub mod emu;
