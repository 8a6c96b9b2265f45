//! Compute kernels for muddit.
//!
//! `cpu` holds the operations the CPU backend is built from: matrix products, norms, rotary
//! positions, activations and attention. Every function states its shapes; tensors are
//! row-major `f32` slices, the last dimension contiguous.

pub mod cpu;
