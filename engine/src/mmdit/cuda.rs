//! The MM-DiT on the CUDA kernels: the layers of [`Mmdit`] with [`Cuda`] weights (loaded once by
//! [`Mmdit::load`]), run by the one forward (`forward.rs`) with [`Cuda`]'s operations
//! (`crate::cuda::ops`), in a workspace kept for the last forward shape.
//!
//! Storage on the device (`cuda::backend`): weight matrices bf16 `[N, K]`, biases and norm
//! weights f32; activations bf16; the residual streams, modulations and logits f32. Heads of
//! `Dh < 64` (the test fixtures) are stored zero-padded to `Dp = 64` inside the q, k, v and
//! attention-output buffers `[B, S, H, Dp]` (`Backend::linear_heads` pads the weights). The
//! inputs (ids, text features, pooled vectors with the micro-conditions' sinusoids, the
//! timestep's sinusoid) live in the workspace, so the device loops of `crate::cuda` write ids
//! and read logits there; nothing else leaves the device inside a forward.

use std::sync::{Arc, Mutex};

use super::forward::{self, condition_rows, micro_rows, time_row, Inputs, LogitsOut, Shape};
use super::{Mmdit, MmditInput, MmditOutput, MICRO_CONDS, SIN_DIM};
use crate::config::TransformerConfig;
use crate::cuda::backend::Cuda;
use crate::cuda::ops::ids_u32;
use crate::cuda::{Buffer, Device, Ptr};
use crate::error::Result;
use crate::model_dir::{build_from, open_config};
use crate::weights::{Vb, Weights};
use crate::Compute;

/// The buffers of one forward shape: the inputs, the forward's [`forward::Workspace`] and the
/// logits.
pub(crate) struct Workspace {
    shape: Shape,
    /// `[B, h, w]` image ids (u32; the embedding reads them as i32).
    pub(crate) ids: Buffer<u32>,
    /// `[B, L, J]` text features.
    context: Buffer<f32>,
    /// `[B, P + 5 * 256]`: pooled vectors and the micro-conditions' sinusoids.
    cond: Buffer<f32>,
    /// `[256]`: the timestep's sinusoid.
    time: Buffer<f32>,
    forward: forward::Workspace<Cuda>,
    /// The guidance scale of a guided shape (set by [`CudaMmdit::with_workspace`]).
    guidance: Option<f32>,
    /// `[B, h, w, V]`, or `[B / 2, h, w, V]` guided.
    pub(crate) logits: Buffer<f32>,
    /// `[B, L, Vt]`
    pub(crate) text_logits: Buffer<f32>,
}

/// The heads a forward runs ([`CudaMmdit::run`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logits {
    /// Image logits only (text-to-image).
    Image,
    /// Text logits only (image-to-text).
    Text,
    Both,
}

/// The MM-DiT on a CUDA device (or its emulator): the layers, and the workspace of the last
/// forward shape.
pub struct CudaMmdit {
    /// The model's config (as `model.cfg`).
    pub cfg: TransformerConfig,
    pub(crate) model: Mmdit<Cuda>,
    /// The device and the head layout the weights were loaded with: the forward's operations.
    ops: Cuda,
    workspace: Mutex<Option<Workspace>>,
}

impl CudaMmdit {
    /// Loads `transformer/` of a model folder (or that folder) onto `dev`, with the checks of
    /// [`crate::model_dir::load_transformer`].
    pub fn load(dev: &Arc<Device>, dir: &std::path::Path) -> Result<Self> {
        let (dir, cfg) = open_config(dir, "transformer", TransformerConfig::from_file)?;
        let build = |vb: &Vb| Self::new(dev, &cfg, vb);
        build_from(&dir, Compute::F32, build, Weights::ensure_all_used)
    }

    /// Builds the model from the same tensors as [`Mmdit::new`], onto `dev`.
    pub fn new(dev: &Arc<Device>, cfg: &TransformerConfig, vb: &Vb) -> Result<Self> {
        let heads = (cfg.num_attention_heads, cfg.attention_head_dim);
        let ops = Cuda::with_heads(dev, heads, "attention_head_dim")?;
        Ok(CudaMmdit {
            cfg: cfg.clone(),
            model: Mmdit::load(&ops, cfg, vb)?,
            ops,
            workspace: Mutex::new(None),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.ops.dev
    }

    pub fn has_text_head(&self) -> bool {
        self.model.has_text_head()
    }

    /// The workspace for a shape (allocated on first use, reused while the shape stays).
    fn workspace(&self, shape: Shape) -> Result<std::sync::MutexGuard<'_, Option<Workspace>>> {
        let mut guard = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().map(|w| w.shape) != Some(shape) {
            *guard = None;
            *guard = Some(self.allocate(shape)?);
        }
        Ok(guard)
    }

    fn allocate(&self, s: Shape) -> Result<Workspace> {
        let (dev, cfg) = (&self.ops.dev, &self.cfg);
        let (b, l) = (s.batch, s.text);
        let cond_width = cfg.pooled_projection_dim + MICRO_CONDS * SIN_DIM;
        Ok(Workspace {
            shape: s,
            ids: dev.zeros(s.pixels())?,
            context: dev.zeros(b * l * cfg.joint_attention_dim)?,
            cond: dev.zeros(b * cond_width)?,
            time: dev.zeros(SIN_DIM)?,
            forward: forward::Workspace::new(&self.model, &self.ops, s)?,
            guidance: None,
            logits: dev.zeros(s.logit_pixels() * cfg.codebook_size)?,
            text_logits: dev.zeros(b * l * cfg.tokenizer_vocab_size.unwrap_or(0))?,
        })
    }

    /// Runs `f` on the workspace of a forward over `[batch, height, width]` ids and `text`
    /// text tokens (the device-resident loops of [`super::text_to_image`]); with `guidance` the
    /// batch is `[uncond; cond]` and the image logits are the guided ones, `[batch / 2, ...]`
    /// (see [`crate::Mmdit::forward_image_into`]).
    pub(crate) fn with_workspace<R>(
        &self,
        (batch, text, height, width): (usize, usize, usize, usize),
        guidance: Option<f32>,
        f: impl FnOnce(&mut Workspace) -> Result<R>,
    ) -> Result<R> {
        let shape = Shape::new(&self.cfg, (batch, text, height, width))?;
        let mut guard = self.workspace(shape.guided(guidance.is_some())?)?;
        let ws = guard.as_mut().expect("allocated by workspace()");
        ws.guidance = guidance;
        f(ws)
    }

    /// Uploads the per-request inputs (text features, pooled vectors, micro-conditions).
    pub(crate) fn upload_conditions(
        &self,
        ws: &mut Workspace,
        text: &[f32],
        pooled: &[f32],
        micro: &[f32],
    ) -> Result<()> {
        let dev = &self.ops.dev;
        dev.write(&mut ws.context, 0, text)?;
        let cond = condition_rows(pooled, micro, ws.shape.batch);
        Ok(dev.write(&mut ws.cond, 0, &cond)?)
    }

    /// The per-request inputs from device buffers (the device text encoder's outputs): text
    /// features `[B, L, J]` and pooled vectors `[B, P]` f32, micro-conditions from the host.
    pub(crate) fn set_conditions(
        &self,
        ws: &mut Workspace,
        text: Ptr<f32>,
        pooled: Ptr<f32>,
        micro: &[f32],
    ) -> Result<()> {
        let (s, dev) = (ws.shape, &self.ops.dev);
        let p = self.cfg.pooled_projection_dim;
        let cond_width = p + MICRO_CONDS * SIN_DIM;
        let j = self.cfg.joint_attention_dim;
        dev.copy(text, ws.context.ptr(), s.batch * s.text * j)?;
        let sines = micro_rows(micro);
        for (b, sines) in sines.chunks_exact(MICRO_CONDS * SIN_DIM).enumerate() {
            dev.copy(pooled.at(b * p)?, ws.cond.at(b * cond_width)?, p)?;
            dev.write(&mut ws.cond, b * cond_width + p, sines)?;
        }
        Ok(())
    }

    /// The whole forward with host inputs and outputs, as [`crate::mmdit::Mmdit::forward`].
    pub fn forward(&self, x: &MmditInput) -> Result<MmditOutput> {
        let shape = super::check_input(&self.cfg, x)?;
        let mut guard = self.workspace(shape)?;
        let ws = guard.as_mut().expect("allocated above");
        self.upload_conditions(
            ws,
            x.encoder_hidden_states,
            x.pooled_projections,
            x.micro_conds,
        )?;
        let dev = &self.ops.dev;
        dev.write(&mut ws.ids, 0, &ids_u32(x.image_tokens))?;
        self.run(ws, x.timestep, Logits::Both)?;
        let image_logits = dev.read(&ws.logits, 0, ws.logits.len())?;
        let text_logits = match self.model.text_decoder {
            Some(_) => Some(dev.read(&ws.text_logits, 0, ws.text_logits.len())?),
            None => None,
        };
        Ok(MmditOutput {
            image_logits,
            text_logits,
        })
    }

    /// One forward on the workspace's ids (already on the device, every id below
    /// `vocab_size`); the logits of `heads` stay on the device (text-to-image reads the image
    /// logits alone, image-to-text the text logits alone).
    pub(crate) fn run(&self, ws: &mut Workspace, timestep: f32, heads: Logits) -> Result<()> {
        self.ops.dev.write(&mut ws.time, 0, &time_row(timestep))?;
        let inputs = Inputs {
            ids: &ws.ids,
            context: &ws.context,
            cond: &ws.cond,
            time: &ws.time,
        };
        let out = LogitsOut {
            image: (heads != Logits::Text).then_some(&mut ws.logits),
            guidance: ws.guidance,
            text: (heads != Logits::Image).then_some(&mut ws.text_logits),
        };
        self.model.run(&self.ops, inputs, &mut ws.forward, out)
    }
}
