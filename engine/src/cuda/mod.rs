//! The CUDA backend: the MM-DiT and the sampler step on the kernels of `muddit_kernels::cuda`,
//! on a GPU or (feature `emulate`) on the CPU emulator of the same CUDA sources.
//!
//! Design (the least invasive one: nothing in the CPU path changes):
//! - [`open`] returns a [`Device`] for a GPU ordinal, or the kernels' error (e.g. "no CUDA
//!   driver found (libcuda.so.1): ...") as [`crate::Error::Cuda`], never a panic.
//!   [`Device::emulated`] (feature `emulate`) is the same device on the CPU, for tests.
//! - [`CudaMmdit`] is built from the same checkpoint names as [`crate::mmdit::Mmdit`] (the
//!   layers load through `nn::{Linear, Mlp, RmsNorm}` and `Vb`, then convert once: bf16
//!   matrices, f32 vectors) and offers the same `forward(&MmditInput) -> MmditOutput`
//!   (host in, host out: image logits `[B, h, w, V]` f32, text logits `[B, L, Vt]`).
//! - [`DeviceSampler`] runs a sampler step on device logits with the host's seeded uniforms
//!   ([`muddit_sampler::RandomSource::fill_step`]), so the device and [`muddit_sampler::Sampler`]
//!   choose the same tokens for the same logits.
//! - [`text_to_image`] is the pipeline entry point: it takes a loaded [`Pipeline`] for its CPU
//!   parts (tokenizer, CLIP text encoder, VQ-VAE decoder: these run on the CPU) and a
//!   [`CudaMmdit`] for the steps. Inside the loop nothing but `k` per row and a bad-logits flag
//!   (`B + 1` integers) comes back from the device per step; the final ids come back once.
//!
//! Missing: CLIP and VQ on the device (the kernels exist: `layer_norm` affine, causal attention,
//! `conv2d`, `group_norm`, `upsample2x`, `vq_nearest`), image-to-text on the device, and a
//! `Pipeline` that loads the transformer only once (today the CPU copy stays loaded too).

mod clip;
mod device;
mod mmdit;
mod ops;
mod sampler;
mod vq;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use device::{Buffer, Device, Elem, Ptr};
pub use clip::{ClipEncoding, CudaClipText};
pub use mmdit::CudaMmdit;
pub use sampler::DeviceSampler;
pub use vq::CudaVqDecoder;

use crate::error::Result;
use crate::pipeline::{Images, Pipeline, StepEvent, TextToImage};
use crate::tokenizer::MAX_LEN;

/// Opens GPU `ordinal` (checking for the driver first): the kernels' error, never a panic.
pub fn open(ordinal: usize) -> Result<Arc<Device>> {
    Ok(Arc::new(Device::gpu(ordinal)?))
}

/// Text-to-image with the transformer and the sampler on the device; text encoding and VQ
/// decoding on the CPU components of `pipe`. Same request, results and step events as
/// [`Pipeline::text_to_image`].
pub fn text_to_image(
    pipe: &Pipeline,
    model: &CudaMmdit,
    req: &TextToImage,
    on_step: &mut dyn FnMut(StepEvent),
) -> Result<Images> {
    let plan = pipe.plan_text_to_image(req)?;
    let (h, w) = plan.grid;
    let dev = model.device().clone();
    let mut state = DeviceSampler::new(
        &dev,
        plan.sampler.clone(),
        plan.layout,
        &plan.layout.all_masked()?,
    )?;
    let steps = state.sampler().steps();
    let n = plan.batch * h * w;
    model.with_workspace((plan.rows, MAX_LEN, h, w), |ws| {
        model.upload_conditions(ws, &plan.text, &plan.pooled, &plan.micro)?;
        for step in 0..steps {
            let t0 = Instant::now();
            // The model's ids: [ids; ids] under guidance (a device copy, ids stay there).
            dev.copy(state.ids.ptr(), ws.ids.ptr(), n)?;
            if plan.guided {
                dev.copy(state.ids.ptr(), ws.ids.at(n)?, n)?;
            }
            model.run(ws, state.sampler().model_timestep(step)?, false)?;
            dev.sync()?;
            let t1 = Instant::now();
            state.step(&dev, step, ws.logits.ptr())?;
            on_step(StepEvent {
                step,
                steps,
                text_encoder: Duration::ZERO,
                transformer: t1 - t0,
                sampler: t1.elapsed(),
            });
        }
        Ok(())
    })?;
    let ids = state.ids(&dev)?;
    pipe.finish_text_to_image(&plan, ids)
}
