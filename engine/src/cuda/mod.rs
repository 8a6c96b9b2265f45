//! The CUDA backend: text-to-image and image-to-text (CLIP text encoder, MM-DiT, sampler step,
//! VQ decoder and encoder) on the kernels of `muddit_kernels::cuda`, on a GPU or (feature
//! `emulate`) on the CPU emulator of the same CUDA sources.
//!
//! Design: each model is described once (`crate::mmdit`, `crate::clip_text`, `crate::vqvae`:
//! layer structs named like the checkpoint, generic over [`crate::backend::Backend`]); this
//! module is the CUDA side of that interface and what runs on it:
//! - [`open`] returns a [`Device`] for a GPU ordinal, or the kernels' error (e.g. "no CUDA
//!   driver found (libcuda.so.1): ...") as [`crate::Error::Cuda`], never a panic.
//!   [`Device::emulated`] (feature `emulate`) is the same device on the CPU, for tests.
//! - [`Cuda`] (`backend.rs`): the weight storage on a device (bf16 matrices [`DLinear`] and
//!   convolutions [`DConv`], f32 vectors, bf16 tables; attention heads padded to the kernels'
//!   slots, convolution channels to multiples of 8). The device itself, its buffers and the
//!   launch runners that check every buffer range are `muddit_kernels::cuda`'s.
//! - [`CudaMmdit`] (`mmdit/cuda.rs`): an `Mmdit<Cuda>` run by the one transformer forward
//!   (`mmdit/forward.rs`) with [`Cuda`]'s operations (`ops.rs`) in its workspace, with the CPU model's
//!   `forward(&MmditInput) -> MmditOutput` (host in, host out: image logits `[B, h, w, V]`
//!   f32, text logits `[B, L, Vt]`).
//! - [`DeviceSampler`] runs a sampler step on device logits with the host's seeded uniforms
//!   ([`muddit_sampler::RandomSource::fill_step`]), so the device and [`muddit_sampler::Sampler`]
//!   choose the same tokens for the same logits.
//! - [`CudaClipText`] (`clip_text/cuda.rs`), [`CudaVqDecoder`] and [`CudaVqEncoder`]
//!   (`vqvae/cuda/`): the CLIP text encoder and the two halves of the VQ-VAE on the same layer
//!   structs as the CPU's, run by the same forwards as the CPU's (`clip_text/forward.rs`,
//!   `vqvae/forward.rs`), every op on the existing kernels (affine `layer_norm`, causal
//!   attention, GEMMs with GELU epilogues; `conv2d` with padding, stride 2 and a fused residual,
//!   `group_norm` + SiLU, `upsample2x`, `vq_nearest`). [`CudaPipeline`] holds the models of a folder
//!   ([`load_vqvae`]: both VQ halves from one opening of the weights, every tensor used by one
//!   of them).
//! - [`text_to_image`] is the pipeline entry point: it takes a [`ModelFolder`] (tokenizer,
//!   configs, scheduler: no weights, so nothing is loaded twice) and the models of the run
//!   ([`DeviceModels`]: a [`CudaPipeline`], everything on the device, or for checks a
//!   [`CudaMmdit`] with the CPU text encoder and decoder of a [`Pipeline`],
//!   [`DeviceModels::with_host`]). With a [`CudaPipeline`] only the prompts' ids go up and the
//!   pixels come down (the decoder's `[B, H, W, 3]` bf16, laid out as NCHW and clamped to
//!   `[0, 1]` on the host as the CPU path does). Inside the loop nothing but `k` per row and
//!   a bad-logits flag (`B + 1` integers) comes back from the device per step.
//! - [`image_to_text`] (captioning, VQA) with a [`CudaPipeline`]: the image goes up once and is
//!   VQ-encoded on the device (ids stay there), `<mask>`'s embedding row is added to the device
//!   text encoder once; per step CLIP, the transformer with its text head only
//!   (`mmdit::Logits::Text`) and the sampler on the text layout (`B x 77` over the text
//!   vocabulary, `<mask>` inside it) run on the device, and the `B x 77` text ids come down for
//!   CLIP's host-side end-of-text choice; the answer is the argmax of the last text logits
//!   (`DeviceSampler::argmax`, `B x 77` ids down). The planning and the answers' decoding and
//!   clean-up are the [`ModelFolder`]'s (`plan_image_to_text`, `finish_image_to_text`).
//!
//! Missing: the VQ decoder's `norm_type: "spatial"` and the `relu`/`mish` activations of both
//! VQ halves (clear errors at load; no public Muddit checkpoint uses them), and the end-of-text
//! position chosen on the device (image-to-text downloads `B x 77` ids per step for it).

pub(crate) mod backend;
pub(crate) mod ops;
mod sampler;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::clip_text::cuda::{ClipEncoding, CudaClipText};
pub use crate::mmdit::cuda::CudaMmdit;
use crate::mmdit::cuda::{Logits, Workspace};
pub use crate::vqvae::cuda::{load_vqvae, CudaVqDecoder, CudaVqEncoder};
pub use backend::{Cuda, DConv, DLinear};
pub use muddit_kernels::cuda::{Buffer, Device, Elem, KernelTime, Ptr};
pub use sampler::DeviceSampler;

use crate::clip_text::ClipTextModel;
use crate::error::{Error, Result};
use crate::pipeline::{
    check_fit, Answer, ImageToText, Images, ModelFolder, Pipeline, StepEvent, TextToImage,
};
use crate::pth::{mask_embedding_path, read_mask_embedding};
use crate::tokenizer::MAX_LEN;
use crate::vqvae::VqModel;

/// Opens GPU `ordinal` (checking for the driver first): the kernels' error, never a panic.
pub fn open(ordinal: usize) -> Result<Arc<Device>> {
    Ok(Arc::new(Device::gpu(ordinal)?))
}

/// Every model of a model folder on one device: transformer, text encoder, VQ decoder and
/// VQ encoder.
pub struct CudaPipeline {
    pub transformer: CudaMmdit,
    pub text_encoder: CudaClipText,
    pub vqvae: CudaVqDecoder,
    pub vq_encoder: CudaVqEncoder,
    /// The `<mask>` text id once its embedding row is on the device (`image_to_text`).
    text_mask_id: Option<u32>,
}

impl CudaPipeline {
    /// Loads the models of a model folder onto `dev` (every tensor of the VQ-VAE used by its
    /// encoder or decoder), checking that they fit together as [`Pipeline::load`] does.
    pub fn load(dev: &Arc<Device>, root: &Path) -> Result<Self> {
        let transformer = CudaMmdit::load(dev, root)?;
        let text_encoder = CudaClipText::load(dev, root)?;
        let (vq_encoder, vqvae) = load_vqvae(dev, root)?;
        check_fit(root, &transformer.cfg, &text_encoder.cfg, &vqvae.cfg)?;
        Ok(CudaPipeline {
            transformer,
            text_encoder,
            vqvae,
            vq_encoder,
            text_mask_id: None,
        })
    }

    /// Puts the `<mask>` row `id` (from `mask_token_embedding.pth` of `root`) into the device
    /// text encoder, once, as [`crate::pipeline::Pipeline::prepare_captioning`] does for the
    /// CPU one.
    fn prepare_captioning(&mut self, root: &Path, id: u32) -> Result<()> {
        if self.text_mask_id == Some(id) {
            return Ok(());
        }
        if !self.transformer.has_text_head() {
            return Err(Error::ModelFolder {
                path: root.to_path_buf(),
                message: "the device transformer has no text head: captioning and VQA need a Muddit model".into(),
            });
        }
        let row = read_mask_embedding(
            &mask_embedding_path(root)?,
            self.text_encoder.cfg.hidden_size,
        )?;
        self.text_encoder.set_token_embedding(id as usize, &row)?;
        self.text_mask_id = Some(id);
        Ok(())
    }
}

/// The models of one device run: the device transformer, and the text encoder and VQ decoder
/// on the device ([`CudaPipeline`]) or, to check the device transformer alone against the
/// CPU, the CPU ones of a [`Pipeline`] ([`DeviceModels::with_host`]).
#[derive(Clone, Copy)]
pub struct DeviceModels<'a> {
    pub transformer: &'a CudaMmdit,
    pub text_encoder: TextEncoderOn<'a>,
    pub vqvae: DecoderOn<'a>,
}

/// Where a run's text encoder is.
#[derive(Clone, Copy)]
pub enum TextEncoderOn<'a> {
    Device(&'a CudaClipText),
    Host(&'a ClipTextModel),
}

/// Where a run's VQ decoder is.
#[derive(Clone, Copy)]
pub enum DecoderOn<'a> {
    Device(&'a CudaVqDecoder),
    Host(&'a VqModel),
}

impl<'a> From<&'a CudaPipeline> for DeviceModels<'a> {
    fn from(p: &'a CudaPipeline) -> Self {
        DeviceModels {
            transformer: &p.transformer,
            text_encoder: TextEncoderOn::Device(&p.text_encoder),
            vqvae: DecoderOn::Device(&p.vqvae),
        }
    }
}

impl<'a> DeviceModels<'a> {
    /// The device transformer with the CPU text encoder and VQ decoder of `pipe`.
    pub fn with_host(transformer: &'a CudaMmdit, pipe: &'a Pipeline) -> Self {
        DeviceModels {
            transformer,
            text_encoder: TextEncoderOn::Host(&pipe.text_encoder),
            vqvae: DecoderOn::Host(&pipe.vqvae),
        }
    }
}

impl DeviceModels<'_> {
    /// Fails unless every device model lives on the transformer's device.
    fn check_one_device(&self) -> Result<()> {
        let dev = self.transformer.device();
        let others = [
            match self.text_encoder {
                TextEncoderOn::Device(m) => Some(m.device()),
                TextEncoderOn::Host(_) => None,
            },
            match self.vqvae {
                DecoderOn::Device(m) => Some(m.device()),
                DecoderOn::Host(_) => None,
            },
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
/// VQ decoder too when `models` has them there (a [`CudaPipeline`]: only the tokenizer runs on
/// the host, ids go up, pixels come down). Same request, results and step events as
/// [`Pipeline::text_to_image`]; `folder` gives the tokenizer, configs and scheduler.
pub fn text_to_image<'a>(
    folder: &ModelFolder,
    models: impl Into<DeviceModels<'a>>,
    req: &TextToImage,
    on_step: &mut dyn FnMut(StepEvent),
) -> Result<Images> {
    let models = models.into();
    models.check_one_device()?;
    let model = models.transformer;
    let plan = folder.plan_text_to_image(req)?;
    let (h, w) = plan.grid;
    let dev = model.device().clone();
    let mut state = DeviceSampler::new(&dev, plan.sampler.clone(), plan.layout, &plan.start_ids)?
        .keeping(plan.keep.clone())?;
    let steps = state.sampler().steps();
    let n = plan.batch * h * w;
    let shape = (plan.rows, MAX_LEN, h, w);
    let text_encode = model.with_workspace(shape, plan.guidance, |ws| {
        let start = Instant::now();
        match models.text_encoder {
            TextEncoderOn::Device(clip) => {
                let enc = clip.encode(&plan.text_ids, plan.rows)?;
                let (text, pooled) = (enc.penultimate.ptr(), enc.text_embeds.ptr());
                model.set_conditions(ws, text, pooled, &plan.micro)?;
                // The copies finish before `enc` is freed.
                dev.sync()?;
            }
            TextEncoderOn::Host(clip) => {
                let enc = clip.forward(&plan.text_ids, plan.rows)?;
                model.upload_conditions(ws, &enc.penultimate, &enc.text_embeds, &plan.micro)?;
            }
        }
        let text_encode = start.elapsed();
        for step in plan.start..steps {
            crate::cancel::check()?;
            let t0 = Instant::now();
            // The model's ids: [ids; ids] under guidance (a device copy, ids stay there).
            dev.copy(state.ids.ptr(), ws.ids.ptr(), n)?;
            if plan.guidance.is_some() {
                dev.copy(state.ids.ptr(), ws.ids.at(n)?, n)?;
            }
            let (at, timing) = ((step, steps, Logits::Image), (t0, Duration::ZERO));
            model_and_sampler_step(model, ws, &mut state, at, timing, on_step)?;
        }
        Ok(text_encode)
    })?;
    let ids = state.ids(&dev)?;
    folder.finish_text_to_image(&plan, ids, text_encode, |ids, b, h, w| match models.vqvae {
        DecoderOn::Device(vq) => vq.decode(ids, b, h, w),
        DecoderOn::Host(vq) => vq.decode(ids, b, h, w),
    })
}

/// The rest of step `step` of `steps` once the transformer's inputs are in `ws`: the forward
/// of `heads`, then the sampler on their logits (image or text); reports the step with the
/// transformer timed from `started` and `text_encoder` spent on the step's text encoding.
fn model_and_sampler_step(
    model: &CudaMmdit,
    ws: &mut Workspace,
    state: &mut DeviceSampler,
    (step, steps, heads): (usize, usize, Logits),
    (started, text_encoder): (Instant, Duration),
    on_step: &mut dyn FnMut(StepEvent),
) -> Result<()> {
    let dev = model.device();
    model.run(ws, state.sampler().model_timestep(step)?, heads)?;
    dev.sync()?;
    let t = Instant::now();
    let logits = match heads {
        Logits::Text => ws.text_logits.ptr(),
        Logits::Image | Logits::Both => ws.logits.ptr(),
    };
    state.step(dev, step, logits)?;
    on_step(StepEvent {
        step,
        steps,
        text_encoder,
        transformer: t - started,
        sampler: t.elapsed(),
    });
    Ok(())
}

/// Captioning (no questions) and VQA on the device: the VQ encoder, the text encoder re-run
/// every step, the transformer's text head and the sampler over the text ids, all of
/// `models`. Same request, results and step events as [`Pipeline::image_to_text`]; `folder`
/// gives the tokenizer (questions up, answers down), configs and scheduler. Per step the
/// `B x 77` text ids come down (the text encoder picks each row's end-of-text position on the
/// host, as [`CudaClipText::encode`] does) with `k` per row and the bad-logits flag; after the
/// last step only the argmax ids `[B, 77]` of its text logits.
pub fn image_to_text(
    folder: &mut ModelFolder,
    models: &mut CudaPipeline,
    req: &ImageToText,
    on_step: &mut dyn FnMut(StepEvent),
) -> Result<Vec<Answer>> {
    DeviceModels::from(&*models).check_one_device()?;
    if !Arc::ptr_eq(models.vq_encoder.device(), models.transformer.device()) {
        return Err(Error::input(
            "device",
            "the VQ encoder must be loaded on the transformer's device",
        ));
    }
    let plan = folder.plan_image_to_text(req)?;
    models.prepare_captioning(&folder.root, plan.layout.mask_id)?;
    let models = &*models;
    let (model, clip) = (&models.transformer, &models.text_encoder);
    let (b, (h, w), r) = (plan.batch, plan.grid, req.resolution);
    let dev = model.device().clone();
    let image_ids = models.vq_encoder.encode_on_device(&req.images, b, r, r)?; // [B, h, w]
    let mut state = DeviceSampler::new(&dev, plan.sampler.clone(), plan.layout, &plan.ids)?;
    let steps = state.sampler().steps();
    let best = model.with_workspace((b, MAX_LEN, h, w), None, |ws| {
        dev.copy(image_ids.ptr(), ws.ids.ptr(), b * h * w)?;
        for step in 0..steps {
            crate::cancel::check()?;
            let t0 = Instant::now();
            let ids: Vec<i64> = state.ids(&dev)?.into_iter().map(i64::from).collect();
            let enc = clip.encode(&ids, b)?;
            let (text, pooled) = (enc.penultimate.ptr(), enc.text_embeds.ptr());
            model.set_conditions(ws, text, pooled, &plan.micro)?;
            // The copies finish before `enc` is freed.
            dev.sync()?;
            let t1 = Instant::now();
            let (at, timing) = ((step, steps, Logits::Text), (t1, t1 - t0));
            model_and_sampler_step(model, ws, &mut state, at, timing, on_step)?;
        }
        state.argmax(&dev, ws.text_logits.ptr())
    })?;
    folder.finish_image_to_text(&plan, &best)
}

#[cfg(test)]
mod tests {
    /// The device's RMSNorm and modulated LayerNorm use the models' eps.
    #[test]
    fn device_norms_use_the_models_eps() {
        assert_eq!(muddit_kernels::cuda::norm::NORM_EPS, crate::nn::NORM_EPS);
    }
}
