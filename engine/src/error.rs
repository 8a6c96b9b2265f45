//! The engine's error type: every variant names the file, tensor or value at fault.

use std::path::PathBuf;

/// Errors from loading models and running them on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: not a model folder: {message}")]
    ModelFolder { path: PathBuf, message: String },

    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: not a readable safetensors file (truncated or corrupt?): {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: missing tensor `{name}`")]
    MissingWeight { path: PathBuf, name: String },

    #[error("tensor `{name}` in {path}: expected shape {expected:?}, found {got:?} (does config.json match the weights?)")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error(
        "tensor `{name}` in {path}: unsupported dtype {dtype} (f32, f16 and bf16 are supported)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{path}: {count} tensor(s) the config does not account for, e.g. `{example}` (does config.json match the weights?)")]
    UnexpectedWeights {
        path: PathBuf,
        count: usize,
        example: String,
    },

    #[error("input `{name}`: {message}")]
    InvalidInput { name: String, message: String },

    /// The run was stopped from outside (`cancel::when`).
    #[error("the run was cancelled")]
    Cancelled,

    /// A run the machine cannot hold (`limits::check_memory`).
    #[error("this run needs about {needs_gib:.1} GiB of memory and this machine has {has_gib:.1} GiB available; ask for fewer or smaller images")]
    OutOfMemory { needs_gib: f64, has_gib: f64 },

    /// NaN or infinite values in a checkpoint tensor.
    #[error("tensor `{name}` in {path}: holds NaN or infinite values (a damaged checkpoint?)")]
    NonFiniteWeight { path: PathBuf, name: String },

    /// NaN or infinite values out of a stage of a run (`logits of step 3`, `VQ decoder pixels`).
    #[error("{stage}: NaN or infinite values (the weights overflow on this input?)")]
    NonFiniteOutput { stage: String },

    #[error("{path}: not a readable PyTorch file (truncated or corrupt?): {message}")]
    Pth { path: PathBuf, message: String },

    #[error("{path}: cannot read the image: {message}")]
    Image { path: PathBuf, message: String },

    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("sampler: {0}")]
    Sampler(#[from] muddit_sampler::SamplerError),

    /// The CUDA backend: no driver or NVRTC, a failed compile or driver call, a bad launch.
    #[error("CUDA: {0}")]
    Cuda(#[from] muddit_kernels::cuda::CudaError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Fails with [`Error::NonFiniteOutput`] naming `stage` when `values` hold NaN or infinity.
    pub(crate) fn check_finite(stage: impl FnOnce() -> String, values: &[f32]) -> Result<()> {
        if values.iter().all(|v| v.is_finite()) {
            Ok(())
        } else {
            Err(Error::NonFiniteOutput { stage: stage() })
        }
    }

    pub(crate) fn input(name: &str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            name: name.to_string(),
            message: message.into(),
        }
    }
}
