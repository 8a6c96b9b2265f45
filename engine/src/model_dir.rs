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

/// Reads the config file `path` with `parse` (its text -> the config, or a message naming the
/// offending key); errors name the file.
pub(crate) fn read_config<C>(
    path: &Path,
    parse: impl FnOnce(&str) -> std::result::Result<C, String>,
) -> Result<C> {
    crate::limits::regular_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text).map_err(|message| Error::Config {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses config `text`, a JSON object, into `C`: `check` sees the object first, then any key
/// that is neither `_`-prefixed metadata nor in `known` is refused by name.
pub(crate) fn parse_config<C: serde::de::DeserializeOwned>(
    text: &str,
    known: &[&str],
    check: impl FnOnce(&serde_json::Map<String, serde_json::Value>) -> std::result::Result<(), String>,
) -> std::result::Result<C, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let map = value.as_object().ok_or("the config is not a JSON object")?;
    check(map)?;
    if let Some(key) = map
        .keys()
        .find(|key| !key.starts_with('_') && !known.contains(&key.as_str()))
    {
        return Err(format!(
            "unknown key `{key}`: this engine does not know what it changes"
        ));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The component folder `name` of `dir` (see [`component_dir`]) and its config, read with
/// `from_file`.
pub(crate) fn open_config<C>(
    dir: &Path,
    name: &str,
    from_file: fn(&Path) -> Result<C>,
) -> Result<(PathBuf, C)> {
    let dir = component_dir(dir, name)?;
    let cfg = from_file(&dir.join("config.json"))?;
    Ok((dir, cfg))
}

/// Builds a model with `build` from the weights of the folder `dir` (products in `compute`),
/// then `check`s that it used them all.
pub(crate) fn build_from<M>(
    dir: &Path,
    compute: Compute,
    build: impl FnOnce(&Vb) -> Result<M>,
    check: impl FnOnce(&Weights) -> Result<()>,
) -> Result<M> {
    let weights = Weights::open_dir(dir)?;
    let model = build(&Vb::new(&weights).with_compute(compute))?;
    check(&weights)?;
    Ok(model)
}

/// The transformer of the `transformer/` folder `dir` whose config is already read.
pub(crate) fn transformer_from(
    dir: &Path,
    cfg: &TransformerConfig,
    compute: Compute,
) -> Result<Mmdit> {
    build_from(
        dir,
        compute,
        |vb| Mmdit::new(cfg, vb),
        Weights::ensure_all_used,
    )
}

/// Loads the transformer of a model folder: config, weights, and a check that the weights hold
/// nothing the config does not account for.
pub fn load_transformer(dir: &Path) -> Result<Mmdit> {
    load_transformer_with(dir, Compute::F32)
}

/// [`load_transformer`] with the matrix products in `compute` arithmetic.
pub fn load_transformer_with(dir: &Path, compute: Compute) -> Result<Mmdit> {
    let (dir, cfg) = open_config(dir, "transformer", TransformerConfig::from_file)?;
    transformer_from(&dir, &cfg, compute)
}
