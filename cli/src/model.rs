//! Which model folder a command uses: `--model` (a folder, or a Hugging Face repo id found in
//! the local Hugging Face cache), else `MUDDIT_MODEL` (through clap), else the default model
//! committed in this repository (`models/shapes-64/`), built into the binary and unpacked into
//! the user's cache folder on first use (see [`crate::embedded`]).
//! A model root may hold `muddit.json` with the command defaults that suit it (see [`Defaults`]).

use crate::Global;
use anyhow::{bail, Context, Result};
use muddit_engine::cuda::{self, CudaPipeline};
use muddit_engine::limits;
use muddit_engine::pipeline::{
    Answer, ImageToText, Images, ModelFolder, Pipeline, StepEvent, TextToImage,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Command defaults a model folder may set in `muddit.json` at its root; keys left out keep the
/// public model's defaults (512 px, 48 text-to-image steps at guidance 9, 32 image-to-text steps,
/// sampled draws).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Text-to-image width and height in pixels.
    pub width: usize,
    pub height: usize,
    /// Text-to-image steps and guidance scale.
    pub t2i_steps: usize,
    pub cfg: f32,
    /// Image-to-text steps and the resolution images are resized to.
    pub i2t_steps: usize,
    pub resolution: usize,
    /// Argmax draws and no noise by default (`--greedy`) for `t2i`, `caption`, `vqa`, `eval`.
    pub greedy: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            width: 512,
            height: 512,
            t2i_steps: 48,
            cfg: 9.0,
            i2t_steps: 32,
            resolution: 512,
            greedy: false,
        }
    }
}

/// `muddit.json` of the model root `root` (or of its parent when `root` is the `transformer/`
/// folder), else the public defaults. The file must be a JSON object whose numbers pass the
/// same limits as the flags (`muddit_engine::limits`).
pub fn defaults(root: &Path) -> Result<Defaults> {
    let candidates = [root.join("muddit.json"), root.join("../muddit.json")];
    let Some(path) = candidates.iter().find(|p| p.exists()) else {
        return Ok(Defaults::default());
    };
    muddit_engine::limits::regular_file(path)
        .context("the model's defaults must be a JSON object file")?;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{}: cannot read the model's defaults (it must be a JSON object file)",
            path.display()
        )
    })?;
    let defaults = parse_defaults(&text).with_context(|| format!("{}", path.display()))?;
    check_sizes(&defaults, path).with_context(|| format!("{}", path.display()))?;
    Ok(defaults)
}

/// The sizes of `defaults`, read from `path`, against the model folder beside it: multiples of
/// its size step. A folder whose configs cannot be read is left to the loading, which names them.
fn check_sizes(defaults: &Defaults, path: &Path) -> Result<()> {
    let Ok(shape) = limits::ModelShape::read(path.parent().unwrap_or(Path::new("."))) else {
        return Ok(());
    };
    shape.grid(defaults.width, defaults.height)?;
    let step = shape.size_step();
    anyhow::ensure!(
        defaults.resolution.is_multiple_of(step),
        "`resolution` {} px: this model reads images at positive multiples of {step} px",
        defaults.resolution
    );
    Ok(())
}

/// The defaults of a `muddit.json` text: a JSON object of [`Defaults`] keys, within the limits.
pub fn parse_defaults(text: &str) -> Result<Defaults> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    anyhow::ensure!(value.is_object(), "not a JSON object of command defaults");
    let d: Defaults = serde_json::from_value(value)?;
    limits::check_side("width", d.width)?;
    limits::check_side("height", d.height)?;
    limits::check_side("resolution", d.resolution)?;
    for steps in [d.t2i_steps, d.i2t_steps] {
        limits::check_steps(steps)?;
    }
    anyhow::ensure!(
        d.cfg.is_finite() && d.cfg >= 0.0,
        "`cfg` {} must be finite and >= 0",
        d.cfg
    );
    Ok(d)
}

/// `--greedy` / `--sample`, shared by `t2i`, `caption`, `vqa` and `eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrawFlags {
    /// Argmax draws and no noise: deterministic, seed-independent output [default: the model's
    /// `muddit.json`, or for `t2i` the PNG given to --from-png].
    #[arg(long)]
    greedy: bool,
    /// Sampled draws even where the model's `muddit.json` (or the PNG given to --from-png) asks
    /// for greedy ones.
    #[arg(long, conflicts_with = "greedy")]
    sample: bool,
}

impl DrawFlags {
    /// Greedy draws or not, given the default (`muddit.json`'s or a stored PNG's).
    pub fn greedy(&self, default: bool) -> bool {
        !self.sample && (self.greedy || default)
    }
}

/// What to tell a user who has no model.
const HOW_TO_GET_ONE: &str = "pass --model DIR (a folder in the public layout), a Hugging Face repo id already in your local cache \
(e.g. `--model MeissonFlow/Muddit/512` after `huggingface-cli download MeissonFlow/Muddit`), or set MUDDIT_MODEL; \
`muddit debug random-checkpoint --preset tiny --out DIR` makes a random model for trying the commands";

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
fn hub_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// `Org/Name[/subfolder...]` in the hub cache: the snapshot `refs/main` names, else the only one.
fn from_hub_cache(id: &str) -> Result<PathBuf> {
    let parts: Vec<&str> = id.split('/').collect();
    let (org, name, sub) = (parts[0], parts[1], &parts[2..]);
    let cache = hub_cache().context("no home folder to find the Hugging Face cache in")?;
    let repo = cache.join(format!("models--{org}--{name}"));
    if !repo.is_dir() {
        bail!("--model {id}: not a folder, and {} is not in the Hugging Face cache ({}); {HOW_TO_GET_ONE}", format!("{org}/{name}"), cache.display());
    }
    let snapshots = repo.join("snapshots");
    let snapshot = match std::fs::read_to_string(repo.join("refs/main")) {
        Ok(rev) => snapshots.join(rev.trim()),
        Err(_) => {
            let mut all: Vec<PathBuf> = std::fs::read_dir(&snapshots)
                .with_context(|| format!("reading {}", snapshots.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect();
            all.sort();
            match all.as_slice() {
                [one] => one.clone(),
                [] => bail!("{}: no snapshot of {org}/{name}", snapshots.display()),
                _ => bail!(
                    "{}: several snapshots and no refs/main to choose one",
                    snapshots.display()
                ),
            }
        }
    };
    let dir = sub.iter().fold(snapshot, |p, s| p.join(s));
    if !dir.is_dir() {
        bail!("--model {id}: {} does not exist", dir.display());
    }
    Ok(dir)
}

/// Subfolders of `dir` that are model roots (hold `transformer/`), e.g. `512` and `1024`.
fn model_subfolders(dir: &Path) -> Vec<String> {
    let mut subs: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("transformer").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    subs.sort();
    subs
}

/// The model root of a command that runs the whole model (`t2i`, `caption`, `vqa`, `bench`,
/// `eval`): a component folder (`transformer/`, `vqvae/`) is refused with its root named.
pub fn resolve_root(arg: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let dir = resolve(arg, quiet)?;
    if !dir.join("transformer").is_dir() && dir.join("config.json").is_file() {
        let parent = dir.parent().filter(|p| p.join("transformer").is_dir());
        match parent {
            Some(root) => bail!(
                "--model {}: one component of a model; this command needs the model root: --model {}",
                dir.display(),
                root.display()
            ),
            None => bail!(
                "--model {}: a lone component folder; this command needs a model root holding transformer/, text_encoder/, vqvae/, tokenizer/ and scheduler/",
                dir.display()
            ),
        }
    }
    Ok(dir)
}

/// The model root (or component folder) to load; with no `arg`, the built-in default model (the
/// shapes-world Muddit trained by `tools/shapes/`), unpacked when first used (said on stderr
/// unless `quiet`).
pub fn resolve(arg: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let Some(arg) = arg else {
        return crate::embedded::DEFAULT_MODEL.folder(quiet);
    };
    if arg.as_os_str().is_empty() {
        bail!("--model is empty (or MUDDIT_MODEL is set to nothing): name a model folder, or leave both out for the default model");
    }
    let dir = if arg.is_file() {
        bail!(
            "--model {}: a file, not a model folder; {HOW_TO_GET_ONE}",
            arg.display()
        );
    } else if arg.exists() {
        arg.to_path_buf()
    } else {
        let text = arg.to_string_lossy();
        if text.split('/').count() >= 2 && !text.starts_with('.') && !text.starts_with('/') {
            from_hub_cache(&text)?
        } else {
            bail!(
                "--model {}: no such folder; {HOW_TO_GET_ONE}",
                arg.display()
            );
        }
    };
    if !dir.join("transformer").is_dir() && !dir.join("config.json").is_file() {
        let subs = model_subfolders(&dir);
        if !subs.is_empty() {
            bail!(
                "{} holds several models ({}): name one, e.g. --model {}",
                dir.display(),
                subs.join(", "),
                dir.join(&subs[0]).display()
            );
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_snapshots_and_subfolders_resolve() {
        let tmp = std::env::temp_dir().join(format!("muddit-hub-{}", std::process::id()));
        let snap = tmp.join("models--Org--Model/snapshots/abc123/512/transformer");
        std::fs::create_dir_all(&snap).expect("mkdir");
        std::fs::create_dir_all(tmp.join("models--Org--Model/refs")).expect("mkdir");
        std::fs::write(tmp.join("models--Org--Model/refs/main"), "abc123\n").expect("write");
        // SAFETY of the test: no other test in this binary reads HF_HUB_CACHE.
        unsafe { std::env::set_var("HF_HUB_CACHE", &tmp) };
        let got = resolve(Some(Path::new("Org/Model/512")), true).expect("resolve");
        assert_eq!(got, tmp.join("models--Org--Model/snapshots/abc123/512"));
        let e =
            resolve(Some(Path::new("Org/Model")), true).expect_err("two models would be ambiguous");
        assert!(e.to_string().contains("512"), "{e}");
        let e = resolve(Some(Path::new("Org/Missing")), true).expect_err("not cached");
        assert!(e.to_string().contains("huggingface-cli download"), "{e}");
        std::fs::remove_dir_all(&tmp).ok();
    }
}

/// The models a command runs: the CPU pipeline, or with `--device cuda` the folder's configs,
/// tokenizer and scheduler on the host and every model on the GPU (no CPU weights loaded).
pub enum Models {
    Cpu(Pipeline),
    Cuda {
        folder: ModelFolder,
        models: CudaPipeline,
    },
}

impl Models {
    /// Loads the models of `root` where `--device` says.
    pub fn load(root: &Path, global: &Global) -> Result<Self> {
        Ok(match &global.cuda {
            None => Models::Cpu(Pipeline::load_with(root, global.compute())?),
            Some(device) => Models::Cuda {
                folder: ModelFolder::open(root)?,
                models: CudaPipeline::load(device, root)?,
            },
        })
    }

    pub fn folder(&self) -> &ModelFolder {
        match self {
            Models::Cpu(pipeline) => pipeline,
            Models::Cuda { folder, .. } => folder,
        }
    }

    pub fn text_to_image(
        &self,
        request: &TextToImage,
        on_step: &mut dyn FnMut(StepEvent),
    ) -> Result<Images> {
        Ok(match self {
            Models::Cpu(pipeline) => pipeline.text_to_image(request, on_step)?,
            Models::Cuda { folder, models } => {
                cuda::text_to_image(folder, models, request, on_step)?
            }
        })
    }

    /// VQ-encodes one image `[3, H, W]` in `[0, 1]` on the run's backend: ids `[H / f, W / f]`.
    pub fn encode(&self, image: &[f32], height: usize, width: usize) -> Result<Vec<i64>> {
        Ok(match self {
            Models::Cpu(pipeline) => pipeline.vqvae.encode(image, 1, height, width)?,
            Models::Cuda { models, .. } => models.vq_encoder.encode(image, 1, height, width)?,
        })
    }

    pub fn image_to_text(
        &mut self,
        request: &ImageToText,
        on_step: &mut dyn FnMut(StepEvent),
    ) -> Result<Vec<Answer>> {
        Ok(match self {
            Models::Cpu(pipeline) => pipeline.image_to_text(request, on_step)?,
            Models::Cuda { folder, models } => {
                cuda::image_to_text(folder, models, request, on_step)?
            }
        })
    }
}
