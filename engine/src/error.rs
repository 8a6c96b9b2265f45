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

    pub(crate) fn input(name: &str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            name: name.to_string(),
            message: message.into(),
        }
    }
}
