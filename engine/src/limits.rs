//! The one validation of every number a run is asked for, whatever its source (command-line
//! flags, a model's `muddit.json`, the parameters stored in a PNG, an HTTP request): image sizes
//! against the model's VQ grid, batch, steps, threads and prompt length against stated limits,
//! and the memory a run needs against what the machine has, all before anything is allocated.
//!
//! [`ModelShape`] holds what a model folder's configs say about sizes; its `check_*` methods
//! refuse a request with an [`Error`] that names the input (`width`, `batch`, `steps`, ...).
//! The pipelines call them again when they plan a run, so no caller can skip them.

use crate::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::pipeline::{ImageToText, TextToImage};
use crate::vqvae::VqConfig;
use std::path::Path;

/// Largest image side in pixels (a 4096 px side is 8 times the public model's resolution).
pub const MAX_SIDE: usize = 4096;
/// Most images in one run (prompts x images per prompt, or images to caption).
pub const MAX_IMAGES: usize = 256;
/// Most denoising steps.
pub const MAX_STEPS: usize = 1000;
/// Most worker threads.
pub const MAX_THREADS: usize = 1024;
/// Longest prompt, negative prompt or question in bytes (CLIP reads the first 77 tokens).
pub const MAX_PROMPT_BYTES: usize = 4096;
/// Largest side of an input image in pixels, read from its header before decoding.
pub const MAX_INPUT_SIDE: usize = 16384;
/// Most bytes the decoder of one input image may allocate.
pub const MAX_INPUT_BYTES: u64 = 1 << 30;
/// Largest size, width or count a model config may state (layers, heads, channels, vocabularies).
pub const MAX_CONFIG_SIZE: usize = 1 << 20;

const GIB: f64 = (1u64 << 30) as f64;
/// Text tokens the transformer sees besides the image's.
const TEXT_LEN: f64 = 77.0;

/// What a model folder's configs say about the sizes of its runs.
#[derive(Debug, Clone)]
pub struct ModelShape {
    transformer: TransformerConfig,
    vqvae: VqConfig,
    /// Bytes the weights take once loaded; 0 when they are already resident.
    pub weight_bytes: u64,
}

impl ModelShape {
    /// The shape of the model folder `root` from its configs (no weights read), with the memory
    /// its weights will take once loaded (f32: twice the bytes of f16 and bf16 files).
    pub fn read(root: &Path) -> Result<Self> {
        let (t_dir, transformer) =
            crate::model_dir::open_config(root, "transformer", TransformerConfig::from_file)?;
        let (v_dir, vqvae) = crate::model_dir::open_config(root, "vqvae", VqConfig::from_file)?;
        let weight_bytes = [t_dir, v_dir, root.join("text_encoder")]
            .iter()
            .map(|d| 2 * safetensors_bytes(d))
            .sum();
        Ok(ModelShape {
            transformer,
            vqvae,
            weight_bytes,
        })
    }

    /// The shape of configs whose weights are already loaded.
    pub fn loaded(transformer: &TransformerConfig, vqvae: &VqConfig) -> Self {
        ModelShape {
            transformer: transformer.clone(),
            vqvae: vqvae.clone(),
            weight_bytes: 0,
        }
    }

    /// The pixels image sizes come in: the VQ scale factor, twice that when the transformer's
    /// down block halves the grid.
    pub fn size_step(&self) -> usize {
        let f = self.vqvae.scale_factor();
        match self.transformer.downsample {
            true => 2 * f,
            false => f,
        }
    }

    /// The id grid `(h, w)` of an image size: a multiple of [`ModelShape::size_step`]; at most
    /// [`MAX_SIDE`].
    pub fn grid(&self, width: usize, height: usize) -> Result<(usize, usize)> {
        let f = self.vqvae.scale_factor();
        let step = self.size_step();
        for (name, v) in [("width", width), ("height", height)] {
            check_side(name, v)?;
            if v % step != 0 {
                return Err(Error::input(name, format!("{v} px: this model makes sizes that are positive multiples of {step} px (VQ scale {f}{})", if step > f { " x 2 for the down block" } else { "" })));
            }
        }
        Ok((height / f, width / f))
    }

    /// Checks a text-to-image request: prompts, batch, steps, sizes, and memory.
    pub fn check_text_to_image(&self, req: &TextToImage) -> Result<()> {
        if req.prompts.is_empty() {
            return Err(Error::input("prompt", "no prompt given"));
        }
        for p in req.prompts.iter().chain([&req.negative_prompt]) {
            check_text("prompt", p)?;
        }
        if req.images_per_prompt == 0 {
            return Err(Error::input("batch", "at least one image per prompt"));
        }
        let images = req
            .prompts
            .len()
            .checked_mul(req.images_per_prompt)
            .unwrap_or(usize::MAX);
        check_images("batch", images)?;
        check_steps(req.sampler.steps)?;
        self.grid(req.width, req.height)?;
        let rows = images
            * if req.sampler.guidance.needs_uncond() {
                2
            } else {
                1
            };
        let bytes = self.text_to_image_bytes(images, rows, req.width, req.height);
        check_memory(bytes + self.weight_bytes as f64)
    }

    /// Checks an image-to-text request: images, steps, resolution, questions, and memory.
    pub fn check_image_to_text(&self, req: &ImageToText) -> Result<()> {
        check_images("image", req.batch)?;
        if req.batch == 0 {
            return Err(Error::input("image", "no image given"));
        }
        for q in req.questions.iter().flatten() {
            check_text("question", q)?;
        }
        check_steps(req.sampler.steps)?;
        self.check_resolution(req.batch, req.resolution)
    }

    /// Checks the resolution `r` that `images` images are resized to, and the memory their
    /// run needs, before any image is read.
    pub fn check_resolution(&self, images: usize, r: usize) -> Result<()> {
        check_images("image", images)?;
        self.grid(r, r).map_err(|e| match e {
            Error::InvalidInput { message, .. } => Error::input("resolution", message),
            other => other,
        })?;
        let bytes = vq_bytes(&self.vqvae, images, r, r) + self.transformer_bytes(images, r, r);
        check_memory(bytes + self.weight_bytes as f64)
    }

    /// Estimated peak bytes of a text-to-image run of `images` images (`rows` model rows) of
    /// `width x height`, weights excluded: the transformer's activations and logits, the VQ
    /// decoder's feature maps.
    fn text_to_image_bytes(&self, images: usize, rows: usize, width: usize, height: usize) -> f64 {
        let tokens = (width / self.vqvae.scale_factor()) as f64
            * (height / self.vqvae.scale_factor()) as f64;
        let logits = rows as f64 * tokens * self.transformer.codebook_size as f64 * 4.0 * 2.0;
        logits
            + self.transformer_bytes(rows, width, height)
            + vq_bytes(&self.vqvae, images, width, height)
    }

    /// The transformer's activations for `rows` rows: about 16 `[rows, S, D]` f32 buffers
    /// (q, k, v, MLP at 4 D, residuals) plus the full-grid embedding before the down block.
    fn transformer_bytes(&self, rows: usize, width: usize, height: usize) -> f64 {
        let f = self.vqvae.scale_factor() as f64;
        let tokens = (width as f64 / f) * (height as f64 / f);
        let seq = TEXT_LEN
            + if self.transformer.downsample {
                tokens / 4.0
            } else {
                tokens
            };
        let d = self.transformer.inner_dim() as f64;
        rows as f64 * (seq * d * 16.0 + tokens * d * 4.0) * 4.0
    }
}

/// The VQ-VAE's feature maps for `images` images of `width x height`: about five f32 maps of
/// the widest level (level `i` has `block_out_channels[i]` channels at `1 / 2^i` of the side;
/// upsampling writes the next level's channels at this level's size).
fn vq_bytes(vqvae: &VqConfig, images: usize, width: usize, height: usize) -> f64 {
    let channels = &vqvae.block_out_channels;
    let area = width as f64 * height as f64;
    let widest = (0..channels.len())
        .map(|i| {
            let c = channels[i].max(*channels.get(i + 1).unwrap_or(&0)) as f64;
            c * area / 4f64.powi(i as i32)
        })
        .fold(0.0, f64::max);
    images as f64 * widest * 4.0 * 5.0
}

/// Checks a VQ-VAE run on the tensor `name` of `images` images of `width x height` pixels
/// (encoded, or decoded from their id grids): at most [`MAX_IMAGES`] images, sides within
/// `1..=MAX_SIDE`, and the memory of its feature maps.
pub fn check_vq_images(
    vqvae: &VqConfig,
    name: &str,
    images: usize,
    width: usize,
    height: usize,
) -> Result<()> {
    if images == 0 || images > MAX_IMAGES {
        return Err(Error::input(
            name,
            format!("{images} images; 1 to {MAX_IMAGES} in one run"),
        ));
    }
    for (side, px) in [("width", width), ("height", height)] {
        if px == 0 || px > MAX_SIDE {
            return Err(Error::input(
                name,
                format!("a {side} of {px} px is outside 1..={MAX_SIDE} px"),
            ));
        }
    }
    check_memory(vq_bytes(vqvae, images, width, height))
}

/// The bytes of the `*.safetensors` files in `dir` (0 when there are none).
fn safetensors_bytes(dir: &Path) -> u64 {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    listing
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `n` within `1..=max`, else an error naming the input `name`.
fn check_range(name: &str, n: usize, max: usize, unit: &str) -> Result<()> {
    if n == 0 || n > max {
        return Err(Error::input(
            name,
            format!("{n}{unit} is outside 1..={max}{unit}"),
        ));
    }
    Ok(())
}

/// A count `n` given as `name`: 1 to `max`.
pub fn check_count(name: &str, n: usize, max: usize) -> Result<()> {
    check_range(name, n, max, "")
}

/// An image side in pixels: 1 to [`MAX_SIDE`].
pub fn check_side(name: &str, px: usize) -> Result<()> {
    check_range(name, px, MAX_SIDE, " px")
}

/// A number of images: at most [`MAX_IMAGES`] in one run.
pub fn check_images(name: &str, n: usize) -> Result<()> {
    if n > MAX_IMAGES {
        return Err(Error::input(
            name,
            format!("{n} images in one run; at most {MAX_IMAGES} (run several)"),
        ));
    }
    Ok(())
}

/// Denoising steps: 1 to [`MAX_STEPS`].
pub fn check_steps(n: usize) -> Result<()> {
    check_range("steps", n, MAX_STEPS, "")
}

/// Worker threads: 1 to [`MAX_THREADS`].
pub fn check_threads(n: usize) -> Result<()> {
    check_range("threads", n, MAX_THREADS, "")
}

/// A prompt or question: at most [`MAX_PROMPT_BYTES`] bytes.
pub fn check_text(name: &str, text: &str) -> Result<()> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(Error::input(
            name,
            format!(
                "{} bytes; at most {MAX_PROMPT_BYTES} (the text encoder reads the first 77 tokens)",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// A size, width or count stated by a model config: 1 to [`MAX_CONFIG_SIZE`]. The message
/// names the key.
pub(crate) fn check_config_sizes(sizes: &[(&str, usize)]) -> std::result::Result<(), String> {
    match sizes.iter().find(|(_, v)| *v == 0 || *v > MAX_CONFIG_SIZE) {
        Some((key, v)) => Err(format!("`{key}` {v} is outside 1..={MAX_CONFIG_SIZE}")),
        None => Ok(()),
    }
}

/// Fails unless `path` is a regular file (or a link to one): a pipe or device given as an input
/// would block the read forever or never end. Checked before opening, since opening a pipe
/// blocks too.
pub fn regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file (a pipe or device?)"
    };
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what}; name a file"),
        ),
    ))
}

/// Refuses a run of `bytes` when the machine has less memory available.
pub fn check_memory(bytes: f64) -> Result<()> {
    match available_memory() {
        Some(has) if bytes > has as f64 => Err(Error::OutOfMemory {
            needs_gib: bytes / GIB,
            has_gib: has as f64 / GIB,
        }),
        _ => Ok(()),
    }
}

/// Memory this process can still take: `MemAvailable` of `/proc/meminfo`, or less when the
/// cgroup's `memory.max` leaves less. `None` where neither is known.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muddit_sampler::SamplerConfig;

    fn shape() -> ModelShape {
        let t = TransformerConfig::preset("muddit-512").expect("preset");
        ModelShape::loaded(&t, &VqConfig::muddit())
    }

    fn request(width: usize, height: usize, images: usize) -> TextToImage {
        TextToImage {
            prompts: vec!["a cat".into()],
            negative_prompt: String::new(),
            images_per_prompt: images,
            width,
            height,
            sampler: SamplerConfig::new(16),
            edit: None,
        }
    }

    #[test]
    fn sizes_batch_and_steps_are_bounded() {
        let s = shape();
        assert_eq!(s.grid(512, 256).expect("grid"), (16, 32));
        for (w, h, n) in [
            (0, 512, 1),
            (1_000_000, 512, 1),
            (520, 512, 1),
            (512, 512, 0),
            (512, 512, MAX_IMAGES + 1),
        ] {
            let e = s
                .check_text_to_image(&request(w, h, n))
                .expect_err("refused");
            assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
        }
        let mut r = request(512, 512, 1);
        r.sampler.steps = MAX_STEPS + 1;
        assert!(s
            .check_text_to_image(&r)
            .expect_err("steps")
            .to_string()
            .contains("steps"));
        r.sampler.steps = 16;
        r.prompts = vec!["x".repeat(MAX_PROMPT_BYTES + 1)];
        assert!(s
            .check_text_to_image(&r)
            .expect_err("prompt")
            .to_string()
            .contains("prompt"));
        assert!(check_threads(0).is_err() && check_threads(MAX_THREADS + 1).is_err());
        assert!(check_threads(8).is_ok());
    }

    #[test]
    fn memory_estimate_grows_with_the_run_and_refuses_what_cannot_fit() {
        let s = shape();
        let small = s.text_to_image_bytes(1, 2, 512, 512);
        let large = s.text_to_image_bytes(4, 8, 1024, 1024);
        assert!(small > 0.0 && large > 8.0 * small, "{small} {large}");
        let e = check_memory(1e30).expect_err("no machine has 1e30 bytes");
        assert!(e.to_string().contains("GiB"), "{e}");
        assert!(check_memory(1.0).is_ok());
    }
}
