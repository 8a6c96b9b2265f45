//! Request bodies checked and turned into jobs, every refusal naming its field. The numeric
//! limits are gathered here, in one place, so that they can follow the CLI's own checks.

use super::error::ApiError;
use super::queue::T2iJob;
use crate::model::Defaults;
use muddit_engine::image_io::{from_rgb8, resize_bilinear};
use muddit_engine::pipeline::{ImageToText, ModelFolder, TextToImage};
use muddit_sampler::{DrawRule, Guidance, SamplerConfig, Temperature};
use serde::Deserialize;

/// Images one request may ask for (`n`).
pub const MAX_IMAGES: usize = 16;
/// Denoising steps.
pub const MAX_STEPS: usize = 1000;
/// Pixels on a side of a generated image.
pub const MAX_SIDE: usize = 2048;
/// Characters of a prompt, negative prompt or question (CLIP reads 75 tokens of it).
pub const MAX_TEXT_CHARS: usize = 4000;
/// Pixels on a side of an uploaded image, before resizing.
pub const MAX_UPLOAD_SIDE: u32 = 8192;

/// `POST /v1/images/generations`: OpenAI's fields, then ours.
#[derive(Deserialize)]
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

/// What the checks read: the model's configs and tokenizer, and its command defaults.
pub struct Checks<'a> {
    pub folder: &'a ModelFolder,
    pub defaults: &'a Defaults,
}

fn text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::field(
            field,
            format!("longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(())
}

fn steps(value: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let steps = value.unwrap_or(default);
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(ApiError::field(
            "steps",
            format!("{steps} is not between 1 and {MAX_STEPS}"),
        ));
    }
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
    match parsed {
        Some((w, h)) if (1..=MAX_SIDE).contains(&w) && (1..=MAX_SIDE).contains(&h) => Ok((w, h)),
        Some(_) => Err(ApiError::field(
            "size",
            format!("{text}: each side between 1 and {MAX_SIDE} px"),
        )),
        None => Err(ApiError::field(
            "size",
            format!(
                "{text}: expected WIDTHxHEIGHT, e.g. {}x{}",
                defaults.width, defaults.height
            ),
        )),
    }
}

fn draw(greedy: Option<bool>, default: bool) -> DrawRule {
    match greedy.unwrap_or(default) {
        true => DrawRule::Greedy,
        false => DrawRule::Sample,
    }
}

impl Checks<'_> {
    /// A prompt CLIP can read: not blank, not too long.
    fn prompt(&self, field: &str, value: &str, blank_ok: bool) -> Result<(), ApiError> {
        if !blank_ok && value.trim().is_empty() {
            return Err(ApiError::field(field, "empty"));
        }
        text(field, value)?;
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
        if !(1..=MAX_IMAGES).contains(&n) {
            return Err(ApiError::field(
                "n",
                format!("{n} is not between 1 and {MAX_IMAGES}"),
            ));
        }
        match body.response_format.as_deref() {
            None | Some("b64_json") => {}
            Some("url") => return Err(ApiError::field("response_format", "`url` is not offered: this server keeps no files; use `b64_json` (the default)")),
            Some(other) => return Err(ApiError::field("response_format", format!("`{other}`: only `b64_json`"))),
        }
        let (width, height) = size(body.size.as_deref(), self.defaults)?;
        self.folder
            .grid(width, height)
            .map_err(|e| ApiError::field("size", e.to_string()))?;
        let cfg = body.cfg.unwrap_or(self.defaults.cfg);
        let guidance =
            Guidance::from_scale(cfg).map_err(|e| ApiError::field("cfg", e.to_string()))?;
        let sampler = SamplerConfig {
            steps: steps(body.steps, self.defaults.t2i_steps)?,
            schedule: self.folder.schedule,
            temperature: Temperature::default(),
            guidance,
            draw: draw(body.greedy, self.defaults.greedy),
            seed: body.seed.unwrap_or(0),
        };
        Ok(T2iJob {
            request: TextToImage {
                prompts: vec![body.prompt],
                negative_prompt,
                images_per_prompt: n,
                width,
                height,
                sampler,
            },
            cfg,
            seed: body.seed,
        })
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
        let pixels = decode_image(&body.image, r)?;
        Ok(ImageToText {
            images: pixels,
            batch: 1,
            resolution: r,
            questions,
            sampler: SamplerConfig {
                steps: steps(body.steps, self.defaults.i2t_steps)?,
                schedule: self.folder.schedule,
                temperature: Temperature::default(),
                guidance: Guidance::Off,
                draw: draw(body.greedy, self.defaults.greedy),
                seed: body.seed.unwrap_or(0),
            },
        })
    }
}

/// PNG, JPEG or WebP bytes -> `[3, r, r]` in `[0, 1]`, resized as `muddit caption` does.
fn decode_image(bytes: &[u8], r: usize) -> Result<Vec<f32>, ApiError> {
    let bad = |message: String| ApiError::field("image", message);
    if bytes.is_empty() {
        return Err(bad("missing or empty".into()));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG, JPEG or WebP image".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_UPLOAD_SIDE);
    limits.max_image_height = Some(MAX_UPLOAD_SIDE);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?
        .to_rgb8();
    Ok(from_rgb8(&resize_bilinear(img, r, r)).data)
}
