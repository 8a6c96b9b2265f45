//! PNG files that carry their generation parameters, so that `muddit t2i --from-png` can
//! reproduce them.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

/// The iTXt keyword under which the parameters are stored (JSON).
pub const KEYWORD: &str = "muddit-parameters";

/// Everything needed to regenerate one image: the whole batch it came from (the random draws
/// depend on the row) and its index in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub images_per_prompt: usize,
    /// Row of this image in the batch: `prompt index * images_per_prompt + k`.
    pub index: usize,
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
        encoder.add_itxt_chunk(KEYWORD.to_string(), serde_json::to_string(params)?)?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// The parameters stored in a PNG written by `write_png`.
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
        };
        let path = std::env::temp_dir().join(format!("muddit-meta-{}.png", std::process::id()));
        let rgb = vec![7u8; 64 * 32 * 3];
        crate::output::write_image(&path, true, &rgb, 64, 32, Some(&params)).expect("write");
        assert_eq!(read_params(&path).expect("read"), params);
        let img = image::open(&path).expect("a valid PNG").to_rgb8();
        assert_eq!((img.width(), img.height()), (64, 32));
        std::fs::remove_file(&path).ok();
    }
}
