//! Request bodies checked and turned into jobs, every refusal naming its field. The numbers
//! go through the one validation the CLI uses (`muddit_engine::limits`), so a request is
//! refused exactly where `muddit t2i`, `caption` or `vqa` would refuse the same numbers.

use super::error::ApiError;
use super::queue::{ServedEdit, T2iJob};
use crate::edit::{self, EditInput, EditRequest};
use crate::model::Defaults;
use muddit_engine::image_io::decode_image;
use muddit_engine::limits::{self, ModelShape};
use muddit_engine::pipeline::{ImageToText, ModelFolder, TextToImage};
use muddit_sampler::{DrawRule, Guidance, SamplerConfig, Temperature};
use serde::Deserialize;

/// `POST /v1/images/generations`: OpenAI's fields, then ours.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GenerationBody {
    pub prompt: String,
    pub n: Option<usize>,
    /// `"WxH"` or `"auto"`.
    pub size: Option<String>,
    pub response_format: Option<String>,
    /// Accepted (clients send their own default) and answered with the served model's id.
    #[serde(rename = "model")]
    pub _model: Option<String>,
    #[serde(rename = "user")]
    pub _user: Option<String>,
    pub negative_prompt: Option<String>,
    pub steps: Option<usize>,
    pub cfg: Option<f32>,
    pub seed: Option<u64>,
    pub greedy: Option<bool>,
}

/// `POST /v1/captions` and `/v1/vqa` once their image is read (JSON or multipart).
#[derive(Default)]
pub struct I2tBody {
    pub image: Vec<u8>,
    pub question: Option<String>,
    pub steps: Option<usize>,
    pub seed: Option<u64>,
    pub greedy: Option<bool>,
}

/// `POST /v1/images/edits` once its files are read (multipart, or JSON with base64 files):
/// the generation's fields, then the edit's.
#[derive(Default)]
pub struct EditBody {
    pub generation: GenerationBody,
    pub image: Upload,
    pub mask: Option<Upload>,
    pub options: EditOptions,
}

/// An uploaded file: its bytes, and its name if the form gave one.
#[derive(Default)]
pub struct Upload {
    pub bytes: Vec<u8>,
    pub name: Option<String>,
}

impl Upload {
    /// The name and SHA-256 the PNG's parameters record for it.
    fn recorded(&self) -> (String, String) {
        let name = self.name.clone().unwrap_or_else(|| "upload".into());
        (name, edit::sha256_hex(&self.bytes))
    }
}

/// The edit's own settings (JSON fields, or multipart text fields of the same names).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EditOptions {
    pub strength: Option<f32>,
    /// `"L,T,R,B"` pixels.
    pub outpaint: Option<String>,
    pub keep_unmasked_pixels: Option<bool>,
    pub mask_blur: Option<f32>,
}

/// What the checks read: the model's configs, sizes and tokenizer, and its command defaults.
pub struct Checks<'a> {
    pub folder: &'a ModelFolder,
    pub shape: &'a ModelShape,
    pub defaults: &'a Defaults,
}

/// A refusal of the shared limits, named by the request's field: the engine's `width` and
/// `height` are `size` (the message keeps which side), its `batch` is `n`; a run too large for
/// the memory left is `n`'s.
fn refused(e: muddit_engine::Error) -> ApiError {
    match e {
        muddit_engine::Error::InvalidInput { name, message } => match name.as_str() {
            "width" | "height" => ApiError::field("size", format!("{name} {message}")),
            "batch" => ApiError::field("n", message),
            _ => ApiError::field(&name, message),
        },
        other => ApiError::field("n", other.to_string()),
    }
}

fn steps(value: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let steps = value.unwrap_or(default);
    limits::check_steps(steps).map_err(refused)?;
    Ok(steps)
}

/// `"WxH"` -> (W, H); `"auto"` or nothing -> the model's default size.
fn size(value: Option<&str>, defaults: &Defaults) -> Result<(usize, usize), ApiError> {
    let Some(text) = value.filter(|s| *s != "auto") else {
        return Ok((defaults.width, defaults.height));
    };
    let parsed = text
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
    parsed.ok_or_else(|| {
        let example = format!("{}x{}", defaults.width, defaults.height);
        ApiError::field(
            "size",
            format!("{text}: expected WIDTHxHEIGHT, e.g. {example}"),
        )
    })
}

/// The draw rule; a seed with greedy draws is refused, as it would change nothing (the CLI
/// says so in a note; a request is refused, as its unknown fields are).
fn draw(greedy: Option<bool>, default: bool, seed: Option<u64>) -> Result<DrawRule, ApiError> {
    match (greedy.unwrap_or(default), seed) {
        (true, Some(_)) => {
            let whose = if greedy.is_none() {
                " (the model's default)"
            } else {
                ""
            };
            Err(ApiError::field(
                "seed",
                format!("has no effect with greedy draws{whose}, which draw nothing at random; drop it, or set `greedy` false"),
            ))
        }
        (true, None) => Ok(DrawRule::Greedy),
        (false, _) => Ok(DrawRule::Sample),
    }
}

impl Checks<'_> {
    /// A prompt CLIP can read: not blank, not too long.
    fn prompt(&self, field: &str, value: &str, blank_ok: bool) -> Result<(), ApiError> {
        if !blank_ok && value.trim().is_empty() {
            return Err(ApiError::field(field, "empty"));
        }
        limits::check_text(field, value).map_err(refused)?;
        self.folder
            .tokenizer
            .encode_padded(value)
            .map_err(|e| ApiError::field(field, e.to_string()))?;
        Ok(())
    }

    /// A generation request as a job.
    pub fn t2i(&self, body: GenerationBody) -> Result<T2iJob, ApiError> {
        self.prompt("prompt", &body.prompt, false)?;
        let negative_prompt = body.negative_prompt.unwrap_or_default();
        self.prompt("negative_prompt", &negative_prompt, true)?;
        let n = body.n.unwrap_or(1);
        limits::check_images("n", n).map_err(refused)?;
        match body.response_format.as_deref() {
            None | Some("b64_json") => {}
            Some("url") => return Err(ApiError::field(
                "response_format",
                "`url` is not offered: this server keeps no files; use `b64_json` (the default)",
            )),
            Some(other) => {
                return Err(ApiError::field(
                    "response_format",
                    format!("`{other}`: only `b64_json`"),
                ))
            }
        }
        let (width, height) = size(body.size.as_deref(), self.defaults)?;
        let cfg = body.cfg.unwrap_or(self.defaults.cfg);
        let guidance =
            Guidance::from_scale(cfg).map_err(|e| ApiError::field("cfg", e.to_string()))?;
        let sampler = SamplerConfig {
            steps: steps(body.steps, self.defaults.t2i_steps)?,
            schedule: self.folder.schedule,
            temperature: Temperature::default(),
            guidance,
            draw: draw(body.greedy, self.defaults.greedy, body.seed)?,
            seed: body.seed.unwrap_or(0),
        };
        let request = TextToImage {
            prompts: vec![body.prompt],
            negative_prompt,
            images_per_prompt: n,
            width,
            height,
            sampler,
            edit: None,
        };
        self.shape.check_text_to_image(&request).map_err(refused)?;
        Ok(T2iJob {
            request,
            cfg,
            seed: body.seed,
            edit: None,
        })
    }

    /// An edit request as a job: the generation's checks, then the edit's (the files decoded
    /// here; the worker encodes them). Without `size` the canvas is the image's own size
    /// rounded to the model's step, plus the outpainting pads.
    pub fn edit(&self, body: EditBody) -> Result<T2iJob, ApiError> {
        if body.image.bytes.is_empty() {
            return Err(ApiError::field("image", "missing or empty"));
        }
        let size = match body.generation.size.as_deref() {
            None | Some("auto") => (None, None),
            asked => {
                let (w, h) = size(asked, self.defaults)?;
                (Some(w), Some(h))
            }
        };
        let options = body.options;
        let pads = match options.outpaint.as_deref() {
            Some(text) => edit::parse_pads(text).map_err(|e| ApiError::field("outpaint", e))?,
            None => [0; 4],
        };
        let request = EditRequest {
            image: &body.image.bytes,
            mask: body.mask.as_ref().map(|m| m.bytes.as_slice()),
            pads,
            size,
            strength: options.strength,
            keep_pixels: options.keep_unmasked_pixels,
            mask_blur: options.mask_blur,
        };
        let planned = edit::plan(&request, self.folder).map_err(|e| {
            let field = match e.input {
                EditInput::Image => "image",
                EditInput::Mask => "mask",
                EditInput::Strength => "strength",
                EditInput::Width | EditInput::Height => "size",
                EditInput::KeepPixels => "keep_unmasked_pixels",
                EditInput::MaskBlur => "mask_blur",
                EditInput::Outpaint => "outpaint",
            };
            ApiError::field(field, e.message)
        })?;
        let mut job = self.t2i(GenerationBody {
            size: None,
            ..body.generation
        })?;
        (job.request.width, job.request.height) = planned.size();
        self.shape
            .check_text_to_image(&job.request)
            .map_err(refused)?;
        let record = planned.record(
            body.image.recorded(),
            body.mask.as_ref().map(Upload::recorded),
        );
        job.edit = Some(Box::new(ServedEdit { planned, record }));
        Ok(job)
    }

    /// A captioning (`question` None) or VQA request; the image decoded and resized to the
    /// model's resolution.
    pub fn i2t(&self, body: I2tBody, vqa: bool) -> Result<ImageToText, ApiError> {
        let questions = match (vqa, body.question) {
            (true, None) => return Err(ApiError::field("question", "missing")),
            (true, Some(q)) => {
                self.prompt("question", &q, false)?;
                Some(vec![q])
            }
            (false, Some(_)) => {
                return Err(ApiError::field(
                    "question",
                    "captions take no question; POST /v1/vqa asks one",
                ))
            }
            (false, None) => None,
        };
        let r = self.defaults.resolution;
        if body.image.is_empty() {
            return Err(ApiError::field("image", "missing or empty"));
        }
        let draw = draw(body.greedy, self.defaults.greedy, body.seed)?;
        let image = decode_image(&body.image, r, r).map_err(refused)?;
        let request = ImageToText {
            images: image.data,
            batch: 1,
            resolution: r,
            questions,
            sampler: SamplerConfig {
                steps: steps(body.steps, self.defaults.i2t_steps)?,
                schedule: self.folder.schedule,
                temperature: Temperature::default(),
                guidance: Guidance::Off,
                draw,
                seed: body.seed.unwrap_or(0),
            },
        };
        self.shape.check_image_to_text(&request).map_err(refused)?;
        Ok(request)
    }
}
