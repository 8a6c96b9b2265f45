//! The muddit engine: checkpoint loading, the Muddit models, and the pipelines.
//!
//! - [`weights`]: safetensors through mmap, sharded or not, f32/f16/bf16 widened to f32.
//! - [`config`]: `transformer/config.json` with the upstream defaults and strict key checks.
//! - [`backend`]: the interface each model's layers are loaded through ([`Cpu`], `cuda::Cuda`).
//! - [`ops`]: the interface a model's forward is written against once ([`ops::CpuOps`],
//!   `cuda::Cuda`).
//! - [`mmdit`]: the MM-DiT of reference section 2 (structure once; CPU and CUDA forwards).
//! - [`clip_text`], [`tokenizer`]: the CLIP text encoder and BPE tokenizer (section 3).
//! - [`vqvae`]: the VQ-VAE encoder and decoder (section 4); [`image_io`]: image files.
//! - [`limits`]: the one validation of sizes, batch, steps, threads, prompts and memory.
//! - [`pth`]: `mask_token_embedding.pth` read without Python.
//! - [`pipeline`]: text-to-image, captioning and VQA (section 5).
//! - [`cuda`]: the CUDA backend (a GPU, or the emulator): device, weight storage, launches,
//!   the sampler and the device pipelines.
//! - [`model_dir`]: finding the component folders of a model.
//! - [`random`], [`random_sides`]: random checkpoints in the public layout, for tests and benches.
//! - [`tensor_io`], [`debug`]: named-tensor files and the `muddit debug` forwards.

pub mod backend;
pub mod cancel;
pub mod clip_text;
pub mod config;
pub mod cuda;
pub mod debug;
pub mod error;
pub mod image_io;
pub mod limits;
pub mod mmdit;
pub mod model_dir;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod pth;
pub mod random;
pub mod random_sides;
pub mod tensor_io;
pub mod tokenizer;
pub mod vqvae;
pub mod weights;

pub use backend::{Backend, Cpu};
pub use config::{ModelClass, TransformerConfig};
pub use error::{Error, Result};
pub use mmdit::{Mmdit, MmditInput, MmditOutput, Scratch};
pub use muddit_kernels::cpu::isa;
pub use muddit_kernels::cpu::packed::Compute;
