//! The CUDA backend: text-to-image (CLIP text encoder, MM-DiT, sampler step, VQ decoder) on the
//! kernels of `muddit_kernels::cuda`, on a GPU or (feature `emulate`) on the CPU emulator of
//! the same CUDA sources.
//!
//! Design (the least invasive one: the CPU path only shares its planning and its final clamp):
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
//! - [`CudaClipText`] (`clip.rs`) and [`CudaVqDecoder`] (`vq.rs`): the CLIP text encoder and
//!   the VQ-VAE decoder, loaded from the same checkpoint names as `clip_text.rs` and `vqvae.rs`,
//!   every op on the existing kernels (affine `layer_norm`, causal attention, GEMMs with GELU
//!   epilogues; `conv2d` with padding and a fused residual, `group_norm` + SiLU,
//!   `upsample2x`). [`CudaPipeline`] holds the three models of a folder.
//! - [`text_to_image`] is the pipeline entry point: it takes a loaded [`Pipeline`] for the
//!   tokenizer, configs and scheduler, and the device models ([`DeviceModels`]: a
//!   [`CudaPipeline`], or a [`CudaMmdit`] alone, then CLIP and the decoder run on the
//!   `Pipeline`'s CPU copies). With a [`CudaPipeline`] only the prompts' ids go up and the
//!   pixels come down (the decoder's `[B, H, W, 3]` bf16, laid out as NCHW and clamped to
//!   `[0, 1]` on the host as the CPU path does). Inside the loop nothing but `k` per row and
//!   a bad-logits flag (`B + 1` integers) comes back from the device per step.
//!
//! Missing: image-to-text on the device (the VQ encoder: `vq_nearest` exists, the encoder's
//! stride-2 convolution and the CLIP re-run per step would follow the same patterns), the VQ
//! decoder's `norm_type: "spatial"` and `relu`/`mish` activations (clear errors at load; no
//! public Muddit checkpoint uses them), and a `Pipeline` that does not load the CPU
//! transformer, text encoder and decoder when everything runs on the device (they stay loaded:
//! making them optional would touch every CPU caller).

mod clip;
mod device;
mod mmdit;
mod ops;
mod sampler;
mod vq;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use clip::{ClipEncoding, CudaClipText};
pub use device::{Buffer, Device, Elem, Ptr};
pub use mmdit::CudaMmdit;
pub use muddit_kernels::cuda::KernelTime;
pub use sampler::DeviceSampler;
pub use vq::CudaVqDecoder;

use crate::error::{Error, Result};
use crate::pipeline::{Images, Pipeline, StepEvent, TextToImage};
use crate::tokenizer::MAX_LEN;

/// Opens GPU `ordinal` (checking for the driver first): the kernels' error, never a panic.
pub fn open(ordinal: usize) -> Result<Arc<Device>> {
    Ok(Arc::new(Device::gpu(ordinal)?))
}

/// Every model of a text-to-image run on one device: transformer, text encoder, VQ decoder.
pub struct CudaPipeline {
    pub transformer: CudaMmdit,
    pub text_encoder: CudaClipText,
    pub vqvae: CudaVqDecoder,
}

impl CudaPipeline {
    /// Loads the three models of a model folder onto `dev`, checking that they fit together
    /// as [`Pipeline::load`] does.
    pub fn load(dev: &Arc<Device>, root: &Path) -> Result<Self> {
        let transformer = CudaMmdit::load(dev, root)?;
        let text_encoder = CudaClipText::load(dev, root)?;
        let vqvae = CudaVqDecoder::load(dev, root)?;
        let (t, c, v) = (&transformer.cfg, &text_encoder.cfg, &vqvae.cfg);
        let fits = c.hidden_size == t.joint_attention_dim
            && c.projection_dim == t.pooled_projection_dim
            && v.num_vq_embeddings == t.codebook_size;
        if !fits {
            return Err(Error::ModelFolder {
                path: root.to_path_buf(),
                message: format!(
                    "the text encoder gives {}-wide features and {}-wide pooled vectors and the VQ-VAE has {} codes; the transformer takes {}, {} and predicts {}",
                    c.hidden_size, c.projection_dim, v.num_vq_embeddings,
                    t.joint_attention_dim, t.pooled_projection_dim, t.codebook_size
                ),
            });
        }
        Ok(CudaPipeline {
            transformer,
            text_encoder,
            vqvae,
        })
    }
}

/// The device models of one run: the transformer, and the text encoder and VQ decoder when
/// they are on the device too (else the CPU ones of the [`Pipeline`] run). Made from a
/// [`CudaPipeline`] (everything on the device) or a [`CudaMmdit`] (the transformer only).
#[derive(Clone, Copy)]
pub struct DeviceModels<'a> {
    pub transformer: &'a CudaMmdit,
    pub text_encoder: Option<&'a CudaClipText>,
    pub vqvae: Option<&'a CudaVqDecoder>,
}

impl<'a> From<&'a CudaPipeline> for DeviceModels<'a> {
    fn from(p: &'a CudaPipeline) -> Self {
        DeviceModels {
            transformer: &p.transformer,
            text_encoder: Some(&p.text_encoder),
            vqvae: Some(&p.vqvae),
        }
    }
}

impl<'a> From<&'a CudaMmdit> for DeviceModels<'a> {
    fn from(transformer: &'a CudaMmdit) -> Self {
        DeviceModels {
            transformer,
            text_encoder: None,
            vqvae: None,
        }
    }
}

impl DeviceModels<'_> {
    /// Fails unless every device model lives on the transformer's device.
    fn check_one_device(&self) -> Result<()> {
        let dev = self.transformer.device();
        let others = [
            self.text_encoder.map(|m| m.device()),
            self.vqvae.map(|m| m.device()),
        ];
        if others.into_iter().flatten().all(|d| Arc::ptr_eq(d, dev)) {
            Ok(())
        } else {
            Err(Error::input(
                "device",
                "the transformer, text encoder and VQ decoder must be loaded on one device",
            ))
        }
    }
}

/// Text-to-image with the transformer and the sampler on the device, and the text encoder and
/// VQ decoder too when `models` has them (a [`CudaPipeline`]: only the tokenizer runs on the
/// host, ids go up, pixels come down). Same request, results and step events as
/// [`Pipeline::text_to_image`]; `pipe` gives the tokenizer, configs and scheduler (and the CPU
/// text encoder and decoder for a [`CudaMmdit`] alone).
pub fn text_to_image<'a>(
    pipe: &Pipeline,
    models: impl Into<DeviceModels<'a>>,
    req: &TextToImage,
    on_step: &mut dyn FnMut(StepEvent),
) -> Result<Images> {
    let models = models.into();
    models.check_one_device()?;
    let model = models.transformer;
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
    let text_encode = model.with_workspace((plan.rows, MAX_LEN, h, w), |ws| {
        let start = Instant::now();
        match models.text_encoder {
            Some(clip) => {
                let enc = clip.encode(&plan.text_ids, plan.rows)?;
                let (text, pooled) = (enc.penultimate.ptr(), enc.text_embeds.ptr());
                model.set_conditions(ws, text, pooled, &plan.micro)?;
                // The copies finish before `enc` is freed.
                dev.sync()?;
            }
            None => {
                let enc = pipe.text_encoder.forward(&plan.text_ids, plan.rows)?;
                model.upload_conditions(ws, &enc.penultimate, &enc.text_embeds, &plan.micro)?;
            }
        }
        let text_encode = start.elapsed();
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
        Ok(text_encode)
    })?;
    let ids = state.ids(&dev)?;
    pipe.finish_text_to_image(&plan, ids, text_encode, |ids, b, h, w| match models.vqvae {
        Some(vq) => vq.decode(ids, b, h, w),
        None => pipe.vqvae.decode(ids, b, h, w),
    })
}
