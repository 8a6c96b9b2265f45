//! CPU operations on row-major `f32` slices.

pub mod act;
pub mod attention;
pub mod conv;
pub mod group_norm;
pub mod matmul;
pub mod norm;
pub mod rope;
