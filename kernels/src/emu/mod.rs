//! The CUDA C kernels of `kernels/cuda/` compiled with g++ under the CPU emulator
//! (`kernels/emu/`), for tests: the same sources, the same launch geometry ([`crate::cuda::Launch`]),
//! host memory in place of device memory. Slow (one fiber per CUDA thread) but faithful to
//! barriers, warp exchanges and the tensor-core fragment layouts.

use std::ffi::c_void;

use crate::cuda::Launch;

/// Grid, block and dynamic shared memory, as `emu::LaunchDims` in `cuda_emu.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem: u64,
}

type Entry = unsafe extern "C" fn(LaunchDims, *const c_void);
type SizeOf = unsafe extern "C" fn() -> u64;

macro_rules! emulated_kernels {
    ($($name:ident),* $(,)?) => {
        mod ffi {
            use super::*;
            extern "C" {
                $(
                    #[link_name = concat!("muddit_emu_", stringify!($name))]
                    pub fn $name(dims: LaunchDims, params: *const c_void);
                )*
            }
            pub mod size {
                extern "C" {
                    $(
                        #[link_name = concat!("muddit_emu_sizeof_", stringify!($name))]
                        pub fn $name() -> u64;
                    )*
                }
            }
        }

        /// Every emulated kernel: name, entry point, `sizeof` of its parameter struct.
        pub const KERNELS: &[(&str, Entry, SizeOf)] = &[
            $((stringify!($name), ffi::$name as Entry, ffi::size::$name as SizeOf)),*
        ];
    };
}

emulated_kernels!(
    rms_norm_bf16,
    layer_norm_f32,
    gemm_bf16,
    gemm_f32out_bf16,
    gemm_residual_bf16,
    conv2d_bf16,
    gemm_splitk_bf16,
    gemm_splitk_f32out,
    gemm_splitk_residual,
    flash_attn_d64_bf16,
    flash_attn_d128_bf16,
    qk_norm_rope_bf16,
    embedding_bf16,
    act_bf16,
    guide_bf16,
    sin_embed_f32,
    sample_tokens_f32,
    remask_f32,
    group_norm_stats_bf16,
    group_norm_apply_bf16,
    upsample2x_bf16,
    vq_nearest_f32,
    // Test-only (kernels/emu/race_probe.cu): the race check's probe.
    race_probe,
);

/// `sizeof` of kernel `name`'s parameter struct on the C side.
pub fn params_size(name: &str) -> Option<usize> {
    let (_, _, size) = KERNELS.iter().find(|(n, _, _)| *n == name)?;
    // SAFETY: the sizeof functions take nothing and return a constant.
    Some(unsafe { size() } as usize)
}

/// Runs `launch` to completion on the CPU.
///
/// # Safety
/// Every address in `launch.params` must point to host memory holding at least the elements
/// the parameters' shapes and strides reach, of the dtype the kernel documents, valid for the
/// whole call, with no other thread writing the output ranges.
///
/// # Panics
/// If the kernel is unknown to the emulator or its parameter struct's size differs between
/// Rust and C (a mirror out of step, caught before anything runs).
pub unsafe fn run<P>(launch: &Launch<P>) {
    let Some(&(_, entry, size)) = KERNELS.iter().find(|(n, _, _)| *n == launch.kernel) else {
        panic!("kernel {} is not built into the emulator", launch.kernel);
    };
    // SAFETY: the sizeof functions take nothing and return a constant.
    let c_size = unsafe { size() } as usize;
    assert_eq!(
        c_size,
        std::mem::size_of::<P>(),
        "{}: C and Rust parameter structs differ in size",
        launch.kernel
    );
    let dims = LaunchDims {
        grid: launch.grid,
        block: launch.block,
        dynamic_smem: u64::from(launch.smem),
    };
    // SAFETY: the entry reads one `P`-sized struct (sizes checked above) through the pointer,
    // which lives for the call; the addresses inside are the caller's guarantee.
    unsafe { entry(dims, &launch.params as *const P as *const c_void) };
}
