//! PNG files that carry their generation parameters, so that `muddit t2i --from-png` can
//! reproduce them (our iTXt chunk, JSON), and the de-facto `parameters` tEXt chunk that image
//! viewers and other front-ends read.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

/// The iTXt keyword under which the parameters are stored (JSON).
pub const KEYWORD: &str = "muddit-parameters";

/// The tEXt keyword of the de-facto parameters text (prompt, then a line of `Key: value`s).
pub const TEXT_KEYWORD: &str = "parameters";

/// Everything needed to regenerate one image: the batch it came from, its index in it and its
/// own seed (the batch's seed + index), which alone reproduces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub images_per_prompt: usize,
    /// Row of this image in the batch: `prompt index * images_per_prompt + k`.
    pub index: usize,
    /// This image's seed: the batch's seed + `index`.
    pub seed: u64,
    pub steps: usize,
    pub cfg: f32,
    /// `[start, end]` of the linear temperature ramp.
    pub temperature: [f32; 2],
    pub schedule: String,
    pub greedy: bool,
    pub width: usize,
    pub height: usize,
    pub model: String,
    pub engine_version: String,
    /// The model folder's name, for the `parameters` text.
    #[serde(default)]
    pub model_name: String,
    /// The first 10 hex digits of the SHA-256 of the transformer's weights.
    #[serde(default)]
    pub model_hash: String,
    /// The edit this image came from (img2img, inpainting, outpainting).
    #[serde(default)]
    pub edit: Option<crate::edit::EditRecord>,
}

impl GenerationParams {
    /// This image's prompt.
    pub fn prompt(&self) -> &str {
        let p = self.index / self.images_per_prompt.max(1);
        self.prompts.get(p).map_or("", String::as_str)
    }

    /// The `parameters` text: the prompt, `Negative prompt: ...` when there is one, then
    /// `Steps: 16, Sampler: ..., CFG scale: 9, Seed: 42, Size: 64x64, Model hash: ...`.
    pub fn parameters_text(&self) -> String {
        let mut text = format!("{}\n", self.prompt());
        if !self.negative_prompt.is_empty() {
            text += &format!("Negative prompt: {}\n", self.negative_prompt);
        }
        let draw = if self.greedy { "greedy" } else { "sample" };
        let model = &self.model_name;
        text += &format!(
            "Steps: {}, Sampler: muddit {} {draw}, CFG scale: {}, Seed: {}, Size: {}x{}, Model hash: {}, Model: {model}",
            self.steps, self.schedule, self.cfg, self.seed, self.width, self.height, self.model_hash
        );
        if let Some(edit) = &self.edit {
            text += &format!(", Denoising strength: {}", edit.strength);
            if edit.mask.is_some() {
                text += ", Mask: yes";
            }
            if edit.mask_blur > 0.0 {
                text += &format!(", Mask blur: {}", edit.mask_blur);
            }
            if edit.outpaint.iter().any(|&p| p > 0) {
                let [l, t, r, b] = edit.outpaint;
                text += &format!(", Outpaint: {l},{t},{r},{b}");
            }
        }
        text + &format!(", Version: muddit {}", self.engine_version)
    }
}

/// Encodes `rgb` (`[H, W, 3]` bytes) as an 8-bit RGB PNG into `out`, with `params` in an
/// iTXt chunk.
pub fn encode_png(
    out: &mut dyn Write,
    rgb: &[u8],
    width: u32,
    height: u32,
    params: Option<&GenerationParams>,
) -> Result<()> {
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if let Some(params) = params {
        // tEXt holds Latin-1 only; other text goes in an iTXt of the same keyword, as PIL does.
        let text = params.parameters_text();
        match text.chars().all(|c| u32::from(c) < 256) {
            true => encoder.add_text_chunk(TEXT_KEYWORD.to_string(), text)?,
            false => encoder.add_itxt_chunk(TEXT_KEYWORD.to_string(), text)?,
        }
        encoder.add_itxt_chunk(KEYWORD.to_string(), serde_json::to_string(params)?)?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// The `parameters` text of a PNG (tEXt, or iTXt for text beyond Latin-1), if it has one.
#[cfg(test)]
pub fn read_parameters_text(path: &Path) -> Result<Option<String>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .with_context(|| format!("{}: not a readable PNG", path.display()))?;
    let info = reader.info();
    if let Some(c) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == TEXT_KEYWORD)
    {
        return Ok(Some(c.text.clone()));
    }
    let utf8 = info.utf8_text.iter().find(|c| c.keyword == TEXT_KEYWORD);
    utf8.map(|c| c.get_text())
        .transpose()
        .with_context(|| format!("{}: unreadable `{TEXT_KEYWORD}` chunk", path.display()))
}

/// The parameters stored in a PNG written by `muddit t2i` (or `muddit serve`).
pub fn read_params(path: &Path) -> Result<GenerationParams> {
    muddit_engine::limits::regular_file(path)?;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .with_context(|| format!("{}: not a readable PNG", path.display()))?;
    let chunk = reader
        .info()
        .utf8_text
        .iter()
        .find(|c| c.keyword == KEYWORD)
        .with_context(|| {
            format!(
                "{}: no `{KEYWORD}` text chunk (was it made by `muddit t2i`?)",
                path.display()
            )
        })?;
    let text = chunk
        .get_text()
        .with_context(|| format!("{}: unreadable `{KEYWORD}` chunk", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed `{KEYWORD}` chunk", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_trip() {
        let params = GenerationParams {
            prompts: vec!["a red circle".into(), "ünïcode \"quotes\"".into()],
            negative_prompt: "blurry".into(),
            images_per_prompt: 2,
            index: 3,
            seed: u64::MAX,
            steps: 16,
            cfg: 9.0,
            temperature: [2.0, 0.0],
            schedule: "cosine".into(),
            greedy: false,
            width: 64,
            height: 32,
            model: "/models/x".into(),
            engine_version: "0.1.0".into(),
            model_name: "x".into(),
            model_hash: "0123456789".into(),
            edit: Some(crate::edit::EditRecord {
                init_image: "in.png".into(),
                init_image_sha256: "ab".repeat(32),
                mask: None,
                mask_sha256: None,
                outpaint: [0, 0, 32, 0],
                strength: 1.0,
                keep_unmasked_pixels: true,
                mask_blur: 2.5,
            }),
        };
        let path = std::env::temp_dir().join(format!("muddit-meta-{}.png", std::process::id()));
        let rgb = vec![7u8; 64 * 32 * 3];
        crate::output::write_image(&path, true, &rgb, 64, 32, Some(&params)).expect("write");
        assert_eq!(read_params(&path).expect("read"), params);
        let text = read_parameters_text(&path)
            .expect("read")
            .expect("a parameters chunk");
        assert_eq!(
            text,
            "ünïcode \"quotes\"\nNegative prompt: blurry\nSteps: 16, Sampler: muddit cosine sample, CFG scale: 9, Seed: 18446744073709551615, Size: 64x32, Model hash: 0123456789, Model: x, Denoising strength: 1, Mask blur: 2.5, Outpaint: 0,0,32,0, Version: muddit 0.1.0"
        );
        let img = image::open(&path).expect("a valid PNG").to_rgb8();
        assert_eq!((img.width(), img.height()), (64, 32));
        std::fs::remove_file(&path).ok();
    }
}
