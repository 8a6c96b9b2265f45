//! Errors of the CUDA backend: a missing driver or NVRTC, a failed compile, a driver call, or a
//! launch whose shapes the kernel cannot take.

/// Everything the CUDA side can fail with. Never a panic: a machine without a GPU gets
/// [`CudaError::NoDriver`].
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found ({lib}): {reason}")]
    NoDriver { lib: &'static str, reason: String },
    #[error("no NVRTC library found (tried {tried}); install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and put its lib folder on LD_LIBRARY_PATH")]
    NoNvrtc { tried: String },
    #[error("CUDA device {ordinal}: {source}")]
    Open {
        ordinal: usize,
        source: cudarc::driver::DriverError,
    },
    #[error("CUDA driver call failed ({what}): {source}")]
    Driver {
        what: &'static str,
        source: cudarc::driver::DriverError,
    },
    #[error("NVRTC could not compile {file} for {arch}:\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    #[error("{op}: {reason}")]
    InvalidLaunch { op: &'static str, reason: String },
}
