//! CPU operations on row-major `f32` slices.

pub mod act;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod conv;
pub mod group_norm;
pub mod matmul;
pub mod norm;
pub mod packed;
pub mod rope;
