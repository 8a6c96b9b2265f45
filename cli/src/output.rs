//! Every file a command writes goes through here (images, id and tensor files, eval images).
//!
//! Before any model work, [`Outputs::plan`] checks each target of the run: its folder exists
//! and takes new files, the target is not a folder or device, it differs from every other output
//! of the run, and it does not exist unless `--overwrite` was given. [`write_file`] then writes
//! through a temporary file in the same folder, syncs it and renames it into place: with
//! `--overwrite` a plain rename, else one that fails if the name appeared meanwhile (no
//! check-then-write race). A crash half-way leaves the old file or none, never half a file.

use crate::png_meta::{self, GenerationParams};
use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The targets of one run, checked as they are added.
pub struct Outputs {
    overwrite: bool,
    /// Each target as its canonical folder joined with its file name.
    planned: Vec<(PathBuf, String)>,
}

impl Outputs {
    /// Targets that may replace existing files only when `overwrite` is set.
    pub fn new(overwrite: bool) -> Self {
        Outputs {
            overwrite,
            planned: Vec::new(),
        }
    }

    /// Checks `path` (given by `flag`) as an output of this run; see the module comment.
    pub fn plan(&mut self, flag: &str, path: &Path) -> Result<()> {
        let at = || format!("{flag} {}", path.display());
        let (dir, name) = split(path).with_context(at)?;
        let folder = dir.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{}: the folder {} does not exist; create it first",
                at(),
                dir.display()
            ),
            _ => anyhow::Error::new(e).context(format!("{}: folder {}", at(), dir.display())),
        })?;
        if !folder.is_dir() {
            bail!("{}: {} is not a folder", at(), dir.display());
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => bail!("{}: is a folder; name a file in it", at()),
            Ok(m) if !m.is_file() => bail!(
                "{}: not a regular file (a device or pipe?); name a file",
                at()
            ),
            Ok(_) if !self.overwrite => {
                bail!("{}: already exists; pass --overwrite to replace it", at())
            }
            Err(_) if !self.overwrite && is_link(path) => bail!(
                "{}: is a dangling symbolic link (to {}); pass --overwrite to replace the link",
                at(),
                std::fs::read_link(path).unwrap_or_default().display()
            ),
            _ => {}
        }
        tempfile::Builder::new()
            .prefix(".muddit-check-")
            .tempfile_in(&folder)
            .with_context(|| format!("{}: cannot write in {}", at(), folder.display()))?;
        let key = folder.join(&name);
        if let Some((_, other)) = self.planned.iter().find(|(k, _)| *k == key) {
            bail!(
                "{}: the same file as {other}; give each output its own name",
                at()
            );
        }
        self.planned.push((key, at()));
        Ok(())
    }
}

/// Whether `path` is a symbolic link (the link itself, not what it points to).
fn is_link(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
}

/// The folder and file name of an output path (`.` for a bare name).
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let name = match path.file_name() {
        Some(n) if !path.as_os_str().to_string_lossy().ends_with('/') => n,
        _ => bail!("not a file name"),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// Writes `path` through a synced temporary file in its folder renamed into place; without
/// `overwrite` the rename fails if `path` exists.
pub fn write_file(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let (dir, name) = split(path).with_context(|| format!("{}", path.display()))?;
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        // Read and write for everyone the umask allows, as `File::create` makes files.
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(&dir).with_context(|| {
        format!(
            "{}: cannot create a file in {}",
            path.display(),
            dir.display()
        )
    })?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w).with_context(|| format!("writing {}", path.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    let placed = if overwrite {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    placed.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{}: appeared while this run worked; pass --overwrite to replace it",
            path.display()
        ),
        _ => anyhow::Error::new(e.error).context(format!("writing {}", path.display())),
    })?;
    if let Ok(folder) = std::fs::File::open(&dir) {
        // The rename itself reaches the disk with the folder; a failure here loses nothing.
        let _ = folder.sync_all();
    }
    Ok(())
}

/// Image formats written, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// With the generation parameters (`--from-png` reads them back).
    Png,
    /// Quality 95, without the parameters.
    Jpeg,
    /// Lossless, without the parameters.
    Webp,
}

impl ImageFormat {
    /// The format `path`'s extension names; others are refused by name.
    pub fn of(flag: &str, path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(ImageFormat::Png),
            Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
            Some("webp") => Ok(ImageFormat::Webp),
            Some(other) => bail!("{flag} {}: cannot write `.{other}` images; name a .png, .jpg, .jpeg or .webp file", path.display()),
            None => bail!("{flag} {}: no extension to choose the image format; name a .png, .jpg, .jpeg or .webp file", path.display()),
        }
    }
}

/// Writes `rgb` (`[H, W, 3]` bytes) to `path` in the format of its extension; PNGs carry
/// `params`.
pub fn write_image(
    path: &Path,
    overwrite: bool,
    rgb: &[u8],
    width: usize,
    height: usize,
    params: Option<&GenerationParams>,
) -> Result<()> {
    let format = ImageFormat::of("output", path)?;
    let (w, h) = (u32::try_from(width)?, u32::try_from(height)?);
    write_file(path, overwrite, |out| {
        match format {
            ImageFormat::Png => png_meta::encode_png(out, rgb, w, h, params)?,
            ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(out, 95)
                .encode(rgb, w, h, image::ExtendedColorType::Rgb8)?,
            ImageFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(out).encode(
                rgb,
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )?,
        }
        Ok(())
    })
}

/// Writes named tensors to a safetensors file at `path`.
pub fn write_tensors(
    path: &Path,
    overwrite: bool,
    tensors: &std::collections::BTreeMap<String, muddit_engine::tensor_io::HostTensor>,
) -> Result<()> {
    let bytes = muddit_engine::tensor_io::to_bytes(path, tensors)?;
    write_file(path, overwrite, |out| Ok(out.write_all(&bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_and_writes_never_clobber() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = dir.path().join("a.png");
        let mut outputs = Outputs::new(false);
        outputs
            .plan("-o", &a)
            .expect("a new file in an existing folder");
        let same = dir.path().join(".").join("a.png");
        assert!(outputs
            .plan("--output-ids", &same)
            .unwrap_err()
            .to_string()
            .contains("same file"));
        assert!(outputs.plan("-o", dir.path()).is_err(), "a folder");
        assert!(outputs
            .plan("-o", &dir.path().join("missing/x.png"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(outputs
            .plan("-o", Path::new("/dev/null"))
            .unwrap_err()
            .to_string()
            .contains("regular file"));
        write_file(&a, false, |w| Ok(w.write_all(b"first")?)).expect("write");
        assert!(Outputs::new(false)
            .plan("-o", &a)
            .unwrap_err()
            .to_string()
            .contains("--overwrite"));
        let e = write_file(&a, false, |w| Ok(w.write_all(b"second")?)).expect_err("no clobber");
        assert!(e.to_string().contains("--overwrite"), "{e}");
        assert_eq!(std::fs::read(&a).expect("read"), b"first");
        write_file(&a, true, |w| Ok(w.write_all(b"third")?)).expect("overwrite");
        assert_eq!(std::fs::read(&a).expect("read"), b"third");
        let e = write_file(&a, true, |_| bail!("encoder failed")).expect_err("failed write");
        assert!(format!("{e:#}").contains("encoder failed"));
        assert_eq!(
            std::fs::read(&a).expect("read"),
            b"third",
            "a failed write leaves the old file"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn image_format_follows_the_extension() {
        assert_eq!(
            ImageFormat::of("-o", Path::new("x.PNG")).expect("png"),
            ImageFormat::Png
        );
        assert_eq!(
            ImageFormat::of("-o", Path::new("x.jpeg")).expect("jpeg"),
            ImageFormat::Jpeg
        );
        assert_eq!(
            ImageFormat::of("-o", Path::new("x.webp")).expect("webp"),
            ImageFormat::Webp
        );
        assert!(ImageFormat::of("-o", Path::new("x.gif"))
            .unwrap_err()
            .to_string()
            .contains(".gif"));
        assert!(ImageFormat::of("-o", Path::new("x")).is_err());
        let dir = tempfile::tempdir().expect("tmp");
        for (name, format) in [
            ("a.png", image::ImageFormat::Png),
            ("a.jpg", image::ImageFormat::Jpeg),
            ("a.webp", image::ImageFormat::WebP),
        ] {
            let path = dir.path().join(name);
            write_image(&path, false, &[200u8; 8 * 4 * 3], 8, 4, None).expect("write");
            let bytes = std::fs::read(&path).expect("read");
            assert_eq!(
                image::guess_format(&bytes).expect("known"),
                format,
                "{name}"
            );
        }
    }
}
