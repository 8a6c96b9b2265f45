//! The pipelines of upstream `UnifiedPipeline` (reference section 5): text-to-image with
//! classifier-free guidance, and image-to-text (captioning, VQA with the question as a prefix).
//!
//! A [`ModelFolder`] holds what a folder says besides its weights (configs, tokenizer, schedule)
//! and plans runs and reads their results; a [`Pipeline`] adds the CPU models. Each step runs
//! the transformer on the whole batch and hands the logits to the sampler; the sampler's seeded
//! random source makes the result independent of thread counts.

use crate::clip_text::{text_encoder_dir, text_encoder_from, ClipTextConfig, ClipTextModel};
use crate::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::limits::ModelShape;
use crate::mmdit::{Mmdit, MmditInput, Scratch};
use crate::model_dir::{transformer_dir, transformer_from};
use crate::pth::{mask_embedding_path, read_mask_embedding};
use crate::tokenizer::{tokenizer_dir, ClipTokenizer, MAX_LEN};
use crate::vqvae::{vqvae_dir, vqvae_from, VqConfig, VqModel};
use crate::Compute;
use muddit_sampler::{Guidance, MaskSchedule, Sampler, SamplerConfig, SamplerError, TokenLayout};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Aesthetic score of the micro-conditions, as upstream's default.
const AESTHETIC_SCORE: f32 = 6.0;

/// `scheduler/scheduler_config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
struct SchedulerFile {
    masking_schedule: Option<String>,
}

/// What a model folder says besides its weights: the three configs, the tokenizer and the
/// masking schedule. Enough to plan a run and to read its results; the CUDA backend runs on a
/// `ModelFolder` and its device models, so the CPU weights are never loaded for it.
pub struct ModelFolder {
    pub root: PathBuf,
    pub transformer_cfg: TransformerConfig,
    pub text_encoder_cfg: ClipTextConfig,
    pub vqvae_cfg: VqConfig,
    pub tokenizer: ClipTokenizer,
    /// From `scheduler/scheduler_config.json`.
    pub schedule: MaskSchedule,
    /// The `<mask>` text id, once [`ModelFolder::mask_token`] has added it to the tokenizer.
    text_mask_id: Option<u32>,
}

/// Every component of a model folder in the public layout, with the CPU models. Dereferences to
/// its [`ModelFolder`] (`pipe.root`, `pipe.tokenizer`, `pipe.grid(..)`).
pub struct Pipeline {
    pub folder: ModelFolder,
    pub transformer: Mmdit,
    pub text_encoder: ClipTextModel,
    pub vqvae: VqModel,
    /// Whether the CPU text encoder holds the `<mask>` row (`prepare_captioning`).
    mask_row_set: bool,
}

impl std::ops::Deref for Pipeline {
    type Target = ModelFolder;
    fn deref(&self) -> &ModelFolder {
        &self.folder
    }
}

impl std::ops::DerefMut for Pipeline {
    fn deref_mut(&mut self) -> &mut ModelFolder {
        &mut self.folder
    }
}

/// What happened in one denoising step, for progress bars and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct StepEvent {
    /// 0-based.
    pub step: usize,
    pub steps: usize,
    /// The text encoder (image-to-text re-encodes the text every step), transformer and sampler.
    pub text_encoder: Duration,
    pub transformer: Duration,
    pub sampler: Duration,
}

/// A text-to-image request.
#[derive(Debug, Clone)]
pub struct TextToImage {
    pub prompts: Vec<String>,
    /// Upstream's default is the empty string; used only under guidance.
    pub negative_prompt: String,
    pub images_per_prompt: usize,
    pub width: usize,
    pub height: usize,
    /// Steps, schedule, temperatures, guidance, draw rule and seed; image `b` of the batch
    /// is seeded `seed + b` ([`Sampler::with_seed_per_row`]).
    pub sampler: SamplerConfig,
    /// Start from existing ids instead of a fully masked grid: img2img, inpainting,
    /// outpainting ([`EditIds`]). `None`: text-to-image.
    pub edit: Option<EditIds>,
}

/// The starting point of an edit, on the run's id grid `h x w` (one grid for every image of
/// the batch): which ids it starts from and which of them are never written.
#[derive(Debug, Clone, PartialEq)]
pub struct EditIds {
    /// `[h, w]` for every image, or `[B, h, w]` one grid per image: codes (an encoded
    /// image), or the mask id where nothing is known yet (outpainting's new border).
    pub ids: Vec<u32>,
    /// `[h, w]`: true where the id is kept exactly (outside an inpainting mask, the old image
    /// of an outpainting); kept positions must hold codes.
    pub keep: Vec<bool>,
    /// The fraction in (0, 1] of the editable tokens masked at the start (the choice follows
    /// the seed); the run starts at the step whose schedule has that much masked
    /// ([`Sampler::prepare_edit`]). 1 on a fully editable grid is text-to-image.
    pub strength: f32,
}

impl EditIds {
    /// An edit of `image` (ids `[gh, gw]` of an encoded image): the image is placed on a
    /// canvas grown by `pads` tokens `(left, top, right, bottom)`, whose new tokens start
    /// masked; of the image's own tokens those marked in `regenerate` (`[gh, gw]`, true =
    /// regenerate; `None` = all of them when no pad is given, else none) are editable, the
    /// others kept. Returns the canvas grid `(h, w)` and the edit.
    pub fn place(
        image: &[i64],
        grid: (usize, usize),
        regenerate: Option<&[bool]>,
        pads: [usize; 4],
        mask_id: u32,
        strength: f32,
    ) -> Result<((usize, usize), Self)> {
        let (gh, gw) = grid;
        if image.len() != gh * gw || regenerate.is_some_and(|r| r.len() != gh * gw) {
            return Err(Error::input(
                "edit",
                format!("expected image ids and a mask of {gh} x {gw} tokens"),
            ));
        }
        let [left, top, right, bottom] = pads;
        // Every side of a canvas is at most MAX_SIDE px, so at most that many ids.
        let side = |g: usize, a: usize, b: usize| {
            g.checked_add(a)?
                .checked_add(b)
                .filter(|&s| s <= crate::limits::MAX_SIDE)
        };
        let (Some(h), Some(w)) = (side(gh, top, bottom), side(gw, left, right)) else {
            return Err(Error::input(
                "outpaint",
                format!("pads {pads:?} on a {gh} x {gw} grid make a canvas too large"),
            ));
        };
        let padded = pads.iter().any(|&p| p > 0);
        let mut ids = vec![mask_id; h * w];
        let mut keep = vec![false; h * w];
        for (i, &id) in image.iter().enumerate() {
            let at = (i / gw + top) * w + i % gw + left;
            ids[at] =
                u32::try_from(id).map_err(|_| Error::input("edit", format!("image id {id}")))?;
            keep[at] = match regenerate {
                Some(r) => !r[i],
                None => padded,
            };
        }
        Ok((
            (h, w),
            EditIds {
                ids,
                keep,
                strength,
            },
        ))
    }
}

/// The token grid `[h, w]` of a pixel mask `[H, W]` (values in `[0, 1]`, white = regenerate)
/// at `f` pixels per token: a token is marked when any of its pixels is `>= 0.5`.
pub fn mask_tokens(mask: &[f32], height: usize, width: usize, f: usize) -> Result<Vec<bool>> {
    if f == 0
        || !height.is_multiple_of(f)
        || !width.is_multiple_of(f)
        || mask.len() != height * width
    {
        return Err(Error::input(
            "mask",
            format!(
                "{} values for a {width} x {height} mask in cells of {f} px",
                mask.len()
            ),
        ));
    }
    let (h, w) = (height / f, width / f);
    let mut tokens = vec![false; h * w];
    for (p, &v) in mask.iter().enumerate() {
        if v >= 0.5 {
            tokens[(p / width / f) * w + (p % width) / f] = true;
        }
    }
    Ok(tokens)
}

/// Text-to-image results: row `p * images_per_prompt + k` is image `k` of prompt `p`.
pub struct Images {
    pub batch: usize,
    /// Id grid `h x w`.
    pub grid: (usize, usize),
    /// `[B, h, w]`
    pub ids: Vec<i64>,
    /// `[B, 3, H, W]`, clipped to `[0, 1]`.
    pub pixels: Vec<f32>,
    pub text_encode: Duration,
    pub vq_decode: Duration,
}

/// A text-to-image run prepared for its steps (`Pipeline::plan_text_to_image`).
pub(crate) struct TextToImagePlan {
    /// Images `B`.
    pub batch: usize,
    /// Model batch: `2B` under guidance (`[uncond; cond]`), else `B`.
    pub rows: usize,
    /// Id grid `(h, w)`.
    pub grid: (usize, usize),
    /// The guidance scale, when the model batch is `[uncond; cond]`: the forward folds it into
    /// the image head and gives the guided logits `[B, ...]`.
    pub guidance: Option<f32>,
    /// Steps those logits: the request's sampler with guidance off (it is the forward's).
    pub sampler: Sampler,
    pub layout: TokenLayout,
    /// `[rows, 5]`
    pub micro: Vec<f32>,
    /// `[rows, 77]` CLIP ids of the model batch.
    pub text_ids: Vec<i64>,
    /// `[B, n]`: the ids the first step reads (all masked for text-to-image).
    pub start_ids: Vec<u32>,
    /// `[n]`: positions never written (none for text-to-image).
    pub keep: Vec<bool>,
    /// The first step to run; `S` when an edit masked nothing (the start ids are the result).
    pub start: usize,
}

/// An image-to-text request: captioning without questions, VQA with them.
#[derive(Debug, Clone)]
pub struct ImageToText {
    /// `[B, 3, R, R]` in `[0, 1]`, already resized to the resolution.
    pub images: Vec<f32>,
    pub batch: usize,
    pub resolution: usize,
    /// None: captioning. One question for all images, or one per image.
    pub questions: Option<Vec<String>>,
    pub sampler: SamplerConfig,
}

/// An image-to-text run prepared for its steps (`Pipeline::plan_image_to_text`).
pub(crate) struct ImageToTextPlan {
    /// Images `B`.
    pub batch: usize,
    /// Id grid `(h, w)` of the resolution.
    pub grid: (usize, usize),
    pub sampler: Sampler,
    /// Text rows `[B, 77]` over the text head's vocabulary, masked with `<mask>`.
    pub layout: TokenLayout,
    /// `[B, 77]`: `<mask>`, each question's ids (start token, no end token) in front.
    pub ids: Vec<u32>,
    /// `[B]`: question tokens of each row (0 when captioning).
    pub question_len: Vec<usize>,
    /// `[B, 5]`
    pub micro: Vec<f32>,
}

/// One generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// After upstream's clean-up: repeated words dropped, cut after the last period.
    pub text: String,
    /// As decoded, before the clean-up.
    pub raw: String,
}

impl ModelFolder {
    /// Reads the configs, tokenizer and scheduler config of `root` (no weights), checking that
    /// they fit together: the text encoder's widths are the transformer's, its vocabulary the
    /// tokenizer's, and the VQ-VAE has the transformer's codes.
    pub fn open(root: &Path) -> Result<Self> {
        let transformer_cfg =
            TransformerConfig::from_file(&transformer_dir(root)?.join("config.json"))?;
        let text_encoder_cfg =
            ClipTextConfig::from_file(&text_encoder_dir(root)?.join("config.json"))?;
        let vqvae_cfg = VqConfig::from_file(&vqvae_dir(root)?.join("config.json"))?;
        let tokenizer = ClipTokenizer::from_dir(&tokenizer_dir(root)?)?;
        let vocab = text_encoder_cfg.vocab_size;
        tokenizer.check_text_encoder(vocab, vocab)?;
        let schedule = read_schedule(root)?;
        let (t, c, v) = (&transformer_cfg, &text_encoder_cfg, &vqvae_cfg);
        check_fit(root, t, c, v)?;
        Ok(ModelFolder {
            root: root.to_path_buf(),
            transformer_cfg,
            text_encoder_cfg,
            vqvae_cfg,
            tokenizer,
            schedule,
            text_mask_id: None,
        })
    }

    /// What the configs say about the sizes of runs (see [`crate::limits`]).
    pub fn shape(&self) -> ModelShape {
        ModelShape::loaded(&self.transformer_cfg, &self.vqvae_cfg)
    }

    /// The pixels image sizes come in (see [`ModelShape::size_step`]).
    pub fn size_step(&self) -> usize {
        self.shape().size_step()
    }

    /// The id grid for an image size: a multiple of [`ModelFolder::size_step`].
    pub fn grid(&self, width: usize, height: usize) -> Result<(usize, usize)> {
        self.shape().grid(width, height)
    }

    /// CLIP ids of `texts`: `[B, 77]`.
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(texts.len() * MAX_LEN);
        for t in texts {
            ids.extend(self.tokenizer.encode_padded(t)?);
        }
        Ok(ids)
    }

    fn micro_conds(batch: usize, width: usize, height: usize) -> Vec<f32> {
        (0..batch)
            .flat_map(|_| [width as f32, height as f32, 0.0, 0.0, AESTHETIC_SCORE])
            .collect()
    }

    /// Everything before the text encoder of a text-to-image run: checks, tokens, the sampler
    /// and its token layout. Shared by the CPU loop and the CUDA backend's.
    pub(crate) fn plan_text_to_image(&self, req: &TextToImage) -> Result<TextToImagePlan> {
        self.shape().check_text_to_image(req)?;
        let grid = self.grid(req.width, req.height)?;
        let guidance = req.sampler.guidance;
        guidance.validate()?;
        let stepping = SamplerConfig {
            guidance: Guidance::Off,
            ..req.sampler
        };
        let sampler = Sampler::new(stepping)?.with_seed_per_row();
        let guided = guidance.needs_uncond();
        let batch = req.prompts.len() * req.images_per_prompt;
        // Model batch: [uncond; cond] under guidance, else cond.
        let mut texts: Vec<&str> = Vec::new();
        if guided {
            texts.extend(std::iter::repeat_n(req.negative_prompt.as_str(), batch));
        }
        texts.extend(
            req.prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.as_str(), req.images_per_prompt)),
        );
        let text_ids = self.tokenize(&texts)?;
        let cfg = &self.transformer_cfg;
        let layout = TokenLayout::image(
            batch,
            grid.0,
            grid.1,
            cfg.codebook_size,
            cfg.mask_id() as u32,
        )?;
        let (start_ids, keep, start) = match &req.edit {
            None => (layout.all_masked()?, vec![false; layout.tokens], 0),
            Some(edit) => Self::start_of_edit(edit, &sampler, &layout)?,
        };
        Ok(TextToImagePlan {
            batch,
            rows: texts.len(),
            grid,
            guidance: guidance.scale(),
            sampler,
            layout,
            micro: Self::micro_conds(texts.len(), req.width, req.height),
            text_ids,
            start_ids,
            keep,
            start,
        })
    }

    /// The start ids `[B, n]`, keep grid `[n]` and first step of an edit on `layout`.
    fn start_of_edit(
        edit: &EditIds,
        sampler: &Sampler,
        layout: &TokenLayout,
    ) -> Result<(Vec<u32>, Vec<bool>, usize)> {
        let (n, b) = (layout.tokens, layout.batch);
        let per_image = edit.ids.len() == b * n;
        if !(edit.ids.len() == n || per_image) || edit.keep.len() != n {
            return Err(Error::input(
                "edit",
                format!(
                    "{} ids and {} keep flags for {b} images of {n} tokens (ids [h, w] or [B, h, w], keep [h, w])",
                    edit.ids.len(),
                    edit.keep.len()
                ),
            ));
        }
        let mut ids = match per_image {
            true => edit.ids.clone(),
            false => (0..b).flat_map(|_| edit.ids.iter().copied()).collect(),
        };
        let start = sampler.prepare_edit(&mut ids, &edit.keep, edit.strength, layout)?;
        Ok((ids, edit.keep.clone(), start.unwrap_or(sampler.steps())))
    }

    /// Decodes the final ids `[B, h, w]` of a plan with `decode` (ids, B, h, w -> `[B, 3, H, W]`)
    /// to pixels clipped to `[0, 1]`.
    pub(crate) fn finish_text_to_image(
        &self,
        plan: &TextToImagePlan,
        ids: Vec<u32>,
        text_encode: Duration,
        decode: impl FnOnce(&[i64], usize, usize, usize) -> Result<Vec<f32>>,
    ) -> Result<Images> {
        let (h, w) = plan.grid;
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let start = Instant::now();
        let mut pixels = decode(&ids, plan.batch, h, w)?;
        Error::check_finite(|| "VQ decoder pixels".into(), &pixels)?;
        pixels.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        Ok(Images {
            batch: plan.batch,
            grid: plan.grid,
            ids,
            pixels,
            text_encode,
            vq_decode: start.elapsed(),
        })
    }

    /// Adds `<mask>` to the tokenizer, once; returns its id. Fails for a transformer without
    /// a text head.
    pub fn mask_token(&mut self) -> Result<u32> {
        if let Some(id) = self.text_mask_id {
            return Ok(id);
        }
        if self.transformer_cfg.tokenizer_vocab_size.is_none() {
            return Err(Error::ModelFolder {
                path: self.root.clone(),
                message: "this transformer has no text head (a Meissonic `Transformer2DModel`): captioning and VQA need a Muddit model".into(),
            });
        }
        let id = self.tokenizer.add_mask_token();
        self.text_mask_id = Some(id);
        Ok(id)
    }

    /// Everything before the VQ encoding of an image-to-text run: `<mask>`, checks, the
    /// question tokens, the sampler and its token layout. Shared by the CPU loop and the CUDA
    /// backend's.
    pub(crate) fn plan_image_to_text(&mut self, req: &ImageToText) -> Result<ImageToTextPlan> {
        let mask_id = self.mask_token()?;
        self.shape().check_image_to_text(req)?;
        let b = req.batch;
        let r = req.resolution;
        let grid = self.grid(r, r)?;
        if req.images.len() != b * 3 * r * r {
            return Err(Error::input(
                "image",
                format!("expected {b} images of 3 x {r} x {r}"),
            ));
        }
        if req.sampler.guidance.needs_uncond() {
            return Err(Error::input("cfg", "image-to-text runs without guidance"));
        }
        let sampler = Sampler::new(req.sampler)?;
        let vt = self.transformer_cfg.tokenizer_vocab_size.unwrap_or(0);

        // Text ids start as <mask>; a question (start token, no end token) fills the front.
        let mut ids = vec![mask_id; b * MAX_LEN];
        let mut question_len = vec![0usize; b];
        if let Some(questions) = &req.questions {
            if questions.len() != 1 && questions.len() != b {
                return Err(Error::input(
                    "question",
                    format!(
                        "{} questions for {b} images: give one, or one per image",
                        questions.len()
                    ),
                ));
            }
            for i in 0..b {
                let q = self
                    .tokenizer
                    .encode(&questions[if questions.len() == 1 { 0 } else { i }])?;
                let len = q.len() - 1;
                if len >= MAX_LEN {
                    return Err(Error::input(
                        "question",
                        format!(
                            "{len} tokens with the start token; at most {} fit before the answer",
                            MAX_LEN - 1
                        ),
                    ));
                }
                for (slot, &id) in ids[i * MAX_LEN..].iter_mut().zip(&q[..len]) {
                    *slot = id as u32;
                }
                question_len[i] = len;
            }
        }
        // The sampler's own check of the first step, before any model runs.
        if let Some(at) = ids
            .iter()
            .position(|&id| id != mask_id && id as usize >= vt)
        {
            return Err(SamplerError::IdOutOfRange {
                row: at / MAX_LEN,
                token: at % MAX_LEN,
                id: ids[at],
                vocab: vt,
                mask_id,
            }
            .into());
        }
        Ok(ImageToTextPlan {
            batch: b,
            grid,
            sampler,
            layout: TokenLayout::text(b, MAX_LEN, vt, mask_id),
            ids,
            question_len,
            micro: Self::micro_conds(b, r, r),
        })
    }

    /// The answers of a plan from the argmax `[B, 77]` of the last step's text logits: the
    /// tokens after each question, decoded and cleaned as upstream.
    pub(crate) fn finish_image_to_text(
        &self,
        plan: &ImageToTextPlan,
        best: &[u32],
    ) -> Result<Vec<Answer>> {
        if best.len() != plan.batch * MAX_LEN {
            return Err(Error::input(
                "text logits",
                format!(
                    "{} argmax ids for {} rows of {MAX_LEN}",
                    best.len(),
                    plan.batch
                ),
            ));
        }
        Ok((0..plan.batch)
            .map(|i| {
                let answer: Vec<i64> = best[i * MAX_LEN + plan.question_len[i]..(i + 1) * MAX_LEN]
                    .iter()
                    .map(|&id| id as i64)
                    .collect();
                let raw = self.tokenizer.decode(&answer, true);
                Answer {
                    text: keep_upto_last_period(&dedup_consecutive_words(&raw)),
                    raw,
                }
            })
            .collect())
    }
}

impl Pipeline {
    /// Loads transformer, text encoder, tokenizer, VQ-VAE and scheduler config from `root`.
    pub fn load(root: &Path) -> Result<Self> {
        Self::load_with(root, Compute::F32)
    }

    /// [`Pipeline::load`] with every matrix product in `compute` arithmetic (`Compute::Bf16`:
    /// bf16 weights and activations into the products, f32 accumulation).
    pub fn load_with(root: &Path, compute: Compute) -> Result<Self> {
        // The configs are read once, by the folder; the loaders take them from there.
        let folder = ModelFolder::open(root)?;
        let transformer =
            transformer_from(&transformer_dir(root)?, &folder.transformer_cfg, compute)?;
        let text_encoder =
            text_encoder_from(&text_encoder_dir(root)?, &folder.text_encoder_cfg, compute)?;
        folder
            .tokenizer
            .check_text_encoder(text_encoder.cfg.vocab_size, text_encoder.vocab_rows())?;
        let vqvae = vqvae_from(&vqvae_dir(root)?, &folder.vqvae_cfg, compute)?;
        Ok(Pipeline {
            folder,
            transformer,
            text_encoder,
            vqvae,
            mask_row_set: false,
        })
    }

    /// Generates images. `on_step` is called after every step.
    pub fn text_to_image(
        &self,
        req: &TextToImage,
        on_step: &mut dyn FnMut(StepEvent),
    ) -> Result<Images> {
        let plan = self.plan_text_to_image(req)?;
        let start = Instant::now();
        let text = self.text_encoder.forward(&plan.text_ids, plan.rows)?;
        Error::check_finite(|| "text encoder hidden states".into(), &text.penultimate)?;
        let text_encode = start.elapsed();
        let (h, w) = plan.grid;
        let mut ids = plan.start_ids.clone();
        let (mut scratch, mut logits) = (Scratch::default(), Vec::new());
        for step in plan.start..plan.sampler.steps() {
            crate::cancel::check()?;
            let t0 = Instant::now();
            let model_ids: Vec<i64> = ids
                .iter()
                .chain(if plan.guidance.is_some() {
                    ids.iter()
                } else {
                    [].iter()
                })
                .map(|&i| i as i64)
                .collect();
            let input = MmditInput {
                image_tokens: &model_ids,
                batch: plan.rows,
                height: h,
                width: w,
                encoder_hidden_states: &text.penultimate,
                text_len: MAX_LEN,
                pooled_projections: &text.text_embeds,
                timestep: plan.sampler.model_timestep(step)?,
                micro_conds: &plan.micro,
            };
            let model = &self.transformer;
            model.forward_image_into(&input, plan.guidance, &mut scratch, &mut logits)?;
            let t1 = Instant::now();
            Error::check_finite(
                || format!("transformer image logits of step {step}"),
                &logits,
            )?;
            plan.sampler
                .step_keeping(step, &mut ids, &logits, &plan.layout, &plan.keep)?;
            on_step(StepEvent {
                step,
                steps: plan.sampler.steps(),
                text_encoder: Duration::ZERO,
                transformer: t1 - t0,
                sampler: t1.elapsed(),
            });
        }
        // The decoder's maps can take the steps' memory, already paged in (fresh pages cost
        // a fault and a clear each).
        drop((scratch, logits, text));
        self.finish_text_to_image(&plan, ids, text_encode, |ids, b, h, w| {
            self.vqvae.decode(ids, b, h, w)
        })
    }

    /// Adds `<mask>` to the tokenizer and its embedding (from `mask_token_embedding.pth`) to the
    /// CPU text encoder, once; returns its id.
    pub fn prepare_captioning(&mut self) -> Result<u32> {
        let id = self.folder.mask_token()?;
        if !self.mask_row_set {
            let path = mask_embedding_path(&self.root)?;
            let row = read_mask_embedding(&path, self.text_encoder.cfg.hidden_size)?;
            self.text_encoder.set_token_embedding(id as usize, &row)?;
            self.mask_row_set = true;
        }
        Ok(id)
    }

    /// Captions images (no questions) or answers questions about them.
    pub fn image_to_text(
        &mut self,
        req: &ImageToText,
        on_step: &mut dyn FnMut(StepEvent),
    ) -> Result<Vec<Answer>> {
        self.prepare_captioning()?;
        let plan = self.folder.plan_image_to_text(req)?;
        let (b, (h, w), r) = (plan.batch, plan.grid, req.resolution);
        let sampler = &plan.sampler;
        let image_ids = self.vqvae.encode(&req.images, b, r, r)?;
        let mut ids = plan.ids.clone();
        let mut last: Option<Vec<f32>> = None;
        let mut scratch = Scratch::default();
        for step in 0..sampler.steps() {
            crate::cancel::check()?;
            let t0 = Instant::now();
            let text_ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            let enc = self.text_encoder.forward(&text_ids, b)?;
            let t1 = Instant::now();
            let out = self.transformer.forward_text_in(
                &MmditInput {
                    image_tokens: &image_ids,
                    batch: b,
                    height: h,
                    width: w,
                    encoder_hidden_states: &enc.penultimate,
                    text_len: MAX_LEN,
                    pooled_projections: &enc.text_embeds,
                    timestep: sampler.model_timestep(step)?,
                    micro_conds: &plan.micro,
                },
                &mut scratch,
            )?;
            let t2 = Instant::now();
            let logits = out.unwrap_or_default();
            Error::check_finite(
                || format!("transformer text logits of step {step}"),
                &logits,
            )?;
            sampler.step(step, &mut ids, &logits, &plan.layout)?;
            on_step(StepEvent {
                step,
                steps: sampler.steps(),
                text_encoder: t1 - t0,
                transformer: t2 - t1,
                sampler: t2.elapsed(),
            });
            last = Some(logits);
        }
        let logits = last.unwrap_or_default(); // [B, 77, Vt]
        let vt = plan.layout.vocab.max(1);
        let best: Vec<u32> = logits
            .chunks_exact(vt)
            .map(|row| argmax(row) as u32)
            .collect();
        self.finish_image_to_text(&plan, &best)
    }
}

/// Fails unless a text encoder and VQ-VAE of these configs fit the transformer's: its text and
/// pooled widths, and its codebook.
pub(crate) fn check_fit(
    root: &Path,
    t: &TransformerConfig,
    c: &ClipTextConfig,
    v: &VqConfig,
) -> Result<()> {
    if c.hidden_size == t.joint_attention_dim
        && c.projection_dim == t.pooled_projection_dim
        && v.num_vq_embeddings == t.codebook_size
    {
        return Ok(());
    }
    Err(Error::ModelFolder {
        path: root.to_path_buf(),
        message: format!(
            "the text encoder gives {}-wide features and {}-wide pooled vectors and the VQ-VAE has {} codes; the transformer takes {}, {} and predicts {}",
            c.hidden_size, c.projection_dim, v.num_vq_embeddings,
            t.joint_attention_dim, t.pooled_projection_dim, t.codebook_size
        ),
    })
}

/// The masking schedule named by `scheduler/scheduler_config.json`.
/// The masking schedule of the model root `root` (`scheduler/scheduler_config.json`, cosine
/// when it names none).
pub fn read_schedule(root: &Path) -> Result<MaskSchedule> {
    let path = root.join("scheduler").join("scheduler_config.json");
    crate::limits::regular_file(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let file: SchedulerFile = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let name = file.masking_schedule.as_deref().unwrap_or("cosine");
    MaskSchedule::from_config_name(name).map_err(|e| Error::Config {
        path,
        message: e.to_string(),
    })
}

/// First index of the largest value.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Python's `str.isspace`, what upstream's `split()` and `strip()` cut at: Unicode White_Space
/// and also the separators U+001C..U+001F (a caption can hold them: the byte-level tokens
/// decode to any byte).
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Upstream's clean-up, step 1: drops a word equal to the one before it.
pub fn dedup_consecutive_words(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for word in text.split(is_python_space).filter(|w| !w.is_empty()) {
        if out.last() != Some(&word) {
            out.push(word);
        }
    }
    if out.is_empty() {
        text.to_string()
    } else {
        out.join(" ")
    }
}

/// Upstream's clean-up, step 2: removes its "such" phrases, trims, and keeps everything up to
/// the last period (the whole text when there is none).
pub fn keep_upto_last_period(text: &str) -> String {
    let text = text
        .replace("is such is", "")
        .replace("such is", "")
        .replace("such as", "")
        .replace("such", "");
    let text = text.trim_matches(is_python_space);
    match text.rfind('.') {
        Some(i) => text[..=i].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_that_overflow_or_pass_the_largest_side_are_refused() {
        let ids = [1i64; 4];
        let too_wide = crate::limits::MAX_SIDE;
        for pads in [
            [usize::MAX, 0, 0, 0],
            [0, 1, 0, usize::MAX - 1],
            [0, 0, too_wide, 0],
        ] {
            let e = EditIds::place(&ids, (2, 2), None, pads, 7, 1.0).expect_err("refused");
            assert!(e.to_string().contains("outpaint"), "{pads:?}: {e}");
        }
        let ((h, w), edit) =
            EditIds::place(&ids, (2, 2), None, [1, 0, 0, 2], 7, 1.0).expect("placed");
        assert_eq!((h, w), (4, 3));
        assert_eq!(edit.ids, [7, 1, 1, 7, 1, 1, 7, 7, 7, 7, 7, 7]);
    }

    #[test]
    fn clean_up_matches_upstream_rules() {
        assert_eq!(
            dedup_consecutive_words("a a red red circle a"),
            "a red circle a"
        );
        assert_eq!(dedup_consecutive_words("   "), "   ");
        assert_eq!(
            keep_upto_last_period("a cat. on a mat. and"),
            "a cat. on a mat."
        );
        assert_eq!(keep_upto_last_period(" such as a dog "), "a dog");
        assert_eq!(keep_upto_last_period("no period"), "no period");
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), 1);
        // Python's split() and strip() also cut at U+001C..U+001F, not at U+200B.
        assert_eq!(
            dedup_consecutive_words("a\u{1d}a b\u{1f}b c\u{200b}c"),
            "a b c\u{200b}c"
        );
        assert_eq!(
            keep_upto_last_period("\u{1c} such a cat. x\u{1e}"),
            "a cat."
        );
        assert_eq!(keep_upto_last_period("\u{1d}no period\u{1f}"), "no period");
    }
}
