//! The default model and the default evaluation set, built into the binary (see `build.rs`), so
//! an installed `muddit` needs no checkout beside it. On first use each is unpacked into the
//! user's cache folder (`$XDG_CACHE_HOME/muddit/` or `~/.cache/muddit/` on Linux) as
//! `<digest>/<name>/`: a binary with other contents unpacks beside it, never over it, and the
//! folder keeps its name (the model name written into PNG metadata).

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A folder built into the binary: its files as (path relative to the folder, contents).
pub struct Embedded {
    pub name: &'static str,
    /// SHA-256 of the relative paths and contents, in hex.
    pub digest: &'static str,
    pub files: &'static [(&'static str, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Written last into an unpacked folder: its presence says every file was written whole.
const DONE: &str = ".unpacked";

impl Embedded {
    /// The unpacked folder, unpacking it first when it is missing or damaged (a file gone or of
    /// the wrong size). Says so on stderr unless `quiet`.
    pub fn folder(&self, quiet: bool) -> Result<PathBuf> {
        let Some(cache) = dirs::cache_dir() else {
            bail!(
                "the built-in {} has no cache folder to unpack into (neither XDG_CACHE_HOME nor HOME is set): set one, or pass --model DIR",
                self.name
            );
        };
        self.folder_in(&cache.join("muddit"), quiet)
    }

    fn folder_in(&self, base: &Path, quiet: bool) -> Result<PathBuf> {
        let home = base.join(&self.digest[..16]);
        let dir = home.join(self.name);
        if self.is_whole(&dir) {
            return Ok(dir);
        }
        self.unpack(base, &home).with_context(|| {
            format!(
                "unpacking the built-in {} into {} (set XDG_CACHE_HOME to a writable folder, or pass --model DIR)",
                self.name,
                dir.display()
            )
        })?;
        if !quiet {
            eprintln!("unpacked the built-in {} into {}", self.name, dir.display());
        }
        Ok(dir)
    }

    fn is_whole(&self, dir: &Path) -> bool {
        let size = |rel: &str| {
            fs::metadata(dir.join(rel))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
        };
        size(DONE).is_some()
            && self
                .files
                .iter()
                .all(|(rel, bytes)| size(rel) == Some(bytes.len() as u64))
    }

    /// Writes the files into a fresh folder in `base` and renames it to `home`, so a reader never
    /// sees a half-written folder. When another process got there first, its folder wins.
    fn unpack(&self, base: &Path, home: &Path) -> Result<()> {
        let dir = home.join(self.name);
        fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}-", self.name))
            .tempdir_in(base)
            .with_context(|| format!("creating a folder in {}", base.display()))?;
        for (rel, bytes) in self.files.iter().chain([&(DONE, self.digest.as_bytes())]) {
            let path = tmp.path().join(self.name).join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        if home.exists() {
            if self.is_whole(&dir) {
                return Ok(());
            }
            fs::remove_dir_all(home)
                .with_context(|| format!("removing the damaged {}", home.display()))?;
        }
        match fs::rename(tmp.path(), home) {
            Ok(()) => Ok(()),
            Err(_) if self.is_whole(&dir) => Ok(()),
            Err(e) => Err(e)
                .with_context(|| format!("moving {} to {}", tmp.path().display(), home.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_unpacks_whole_and_is_repaired_when_damaged() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = DEFAULT_MODEL.folder_in(base.path(), true).expect("unpacks");
        assert!(dir.starts_with(base.path()) && dir.ends_with("shapes-64"));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64");
        for (rel, bytes) in DEFAULT_MODEL.files {
            let committed = fs::read(repo.join(rel)).expect("the committed file");
            assert_eq!(committed, *bytes, "{rel}");
            assert_eq!(fs::read(dir.join(rel)).expect("unpacked"), *bytes, "{rel}");
        }
        let weights = dir.join("transformer/diffusion_pytorch_model.safetensors");
        fs::write(&weights, b"truncated").expect("damage it");
        assert!(!DEFAULT_MODEL.is_whole(&dir));
        let again = DEFAULT_MODEL
            .folder_in(base.path(), true)
            .expect("unpacks again");
        assert_eq!(again, dir);
        let whole = DEFAULT_MODEL
            .files
            .iter()
            .find(|(rel, _)| rel.ends_with("diffusion_pytorch_model.safetensors"));
        assert_eq!(
            fs::read(&weights).expect("repaired"),
            whole.expect("listed").1
        );
        let leftovers: Vec<_> = fs::read_dir(base.path())
            .expect("base")
            .map(|e| e.expect("entry").file_name())
            .collect();
        let home = dir.parent().expect("home").file_name().expect("name");
        assert_eq!(leftovers, [home.to_owned()], "no temporary folders left");
    }

    #[test]
    fn an_unwritable_cache_is_an_error_naming_the_folder() {
        let base = tempfile::tempdir().expect("tempdir");
        let file = base.path().join("not-a-folder");
        fs::write(&file, b"x").expect("file");
        let e = format!(
            "{:#}",
            DEFAULT_SET
                .folder_in(&file, true)
                .expect_err("a file is no folder")
        );
        assert!(e.contains("not-a-folder") && e.contains("--model"), "{e}");
    }
}
