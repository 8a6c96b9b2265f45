//! Which model folder a command uses: `--model` (a folder, or a Hugging Face repo id found in
//! the local Hugging Face cache), else `MUDDIT_MODEL` (through clap), else the embedded default.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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

/// The model root (or component folder) to load.
pub fn resolve(arg: Option<&Path>) -> Result<PathBuf> {
    let Some(arg) = arg else {
        bail!("no model given; {HOW_TO_GET_ONE}")
    };
    let dir = if arg.exists() {
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
        let got = resolve(Some(Path::new("Org/Model/512"))).expect("resolve");
        assert_eq!(got, tmp.join("models--Org--Model/snapshots/abc123/512"));
        let e = resolve(Some(Path::new("Org/Model"))).expect_err("two models would be ambiguous");
        assert!(e.to_string().contains("512"), "{e}");
        let e = resolve(Some(Path::new("Org/Missing"))).expect_err("not cached");
        assert!(e.to_string().contains("huggingface-cli download"), "{e}");
        std::fs::remove_dir_all(&tmp).ok();
    }
}
