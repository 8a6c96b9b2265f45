//! Model folders in the public layout (reference section 1).

use crate::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::mmdit::Mmdit;
use crate::weights::{Vb, Weights};
use crate::Compute;
use std::path::{Path, PathBuf};

/// `dir/<name>` when it holds a `config.json`, else `dir` itself when it does: `--model` may name
/// the model root or one component's folder.
pub(crate) fn component_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    if dir.join(name).join("config.json").is_file() {
        return Ok(dir.join(name));
    }
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let message = if dir.is_dir() {
        format!("neither `{name}/config.json` nor `config.json` is there")
    } else {
        "no such folder".to_string()
    };
    Err(Error::ModelFolder {
        path: dir.to_path_buf(),
        message,
    })
}

/// The `transformer/` folder of `dir`, which may be the model root or that folder itself.
pub fn transformer_dir(dir: &Path) -> Result<PathBuf> {
    component_dir(dir, "transformer")
}

/// Loads the transformer of a model folder: config, weights, and a check that the weights hold
/// nothing the config does not account for.
pub fn load_transformer(dir: &Path) -> Result<Mmdit> {
    load_transformer_with(dir, Compute::F32)
}

/// [`load_transformer`] with the matrix products in `compute` arithmetic.
pub fn load_transformer_with(dir: &Path, compute: Compute) -> Result<Mmdit> {
    let dir = transformer_dir(dir)?;
    let cfg = TransformerConfig::from_file(&dir.join("config.json"))?;
    transformer_from(&dir, &cfg, compute)
}

/// The transformer of the `transformer/` folder `dir` whose config is already read.
pub(crate) fn transformer_from(
    dir: &Path,
    cfg: &TransformerConfig,
    compute: Compute,
) -> Result<Mmdit> {
    let weights = Weights::open_dir(dir)?;
    let model = Mmdit::new(cfg, &Vb::new(&weights).with_compute(compute))?;
    weights.ensure_all_used()?;
    Ok(model)
}
