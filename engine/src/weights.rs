//! Safetensors checkpoints through mmap: one file or shards named by `*.safetensors.index.json`.
//!
//! Tensors are looked up by their PyTorch module path and widened to `f32` on request; the store
//! remembers which names were taken so that a checkpoint holding tensors the config does not
//! account for (more blocks than `num_layers`, say) is reported instead of silently ignored.

use crate::error::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use muddit_kernels::cpu::packed::{Compute, Storage};
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the mmap (header included in the offset).
    start: usize,
    end: usize,
}

/// All tensors of one model component (e.g. `transformer/`).
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
    used: Mutex<HashSet<String>>,
    /// The `*.safetensors.index.json` the files were named by, if any.
    index: Option<PathBuf>,
}

/// The checkpoint file names the public layouts use, in order of preference.
const SINGLE_FILES: [&str; 2] = ["diffusion_pytorch_model.safetensors", "model.safetensors"];

impl Weights {
    /// Opens the safetensors of a component folder: an `*.safetensors.index.json` if there is one,
    /// else a single `*.safetensors` file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let listing = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut names: Vec<String> = listing
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if let Some(index) = names
            .iter()
            .find(|n| n.ends_with(".safetensors.index.json"))
        {
            return Self::open_index(&dir.join(index));
        }
        let candidates: Vec<&String> = names
            .iter()
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        let chosen = SINGLE_FILES
            .iter()
            .find(|f| candidates.iter().any(|c| c == *f))
            .map(|f| f.to_string());
        match (chosen, candidates.as_slice()) {
            (Some(f), _) => Self::open_files(&[dir.join(f)]),
            (None, [only]) => Self::open_files(&[dir.join(only)]),
            (None, []) => Err(Error::ModelFolder {
                path: dir.to_path_buf(),
                message: "no .safetensors file".into(),
            }),
            (None, many) => Err(Error::ModelFolder {
                path: dir.to_path_buf(),
                message: format!(
                    "several .safetensors files ({}) and no index to say which belong together",
                    many.len()
                ),
            }),
        }
    }

    /// Opens the shards an index names (`{"weight_map": {tensor: file}}`), checking that each
    /// tensor is found in the shard the index says.
    pub fn open_index(index: &Path) -> Result<Self> {
        crate::limits::regular_file(index)?;
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: index.to_path_buf(),
            message: e.to_string(),
        })?;
        if parsed.weight_map.is_empty() {
            return Err(Error::Config {
                path: index.to_path_buf(),
                message: "its `weight_map` names no tensor".into(),
            });
        }
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<&String> = parsed.weight_map.values().collect();
        shards.sort();
        shards.dedup();
        let paths: Vec<PathBuf> = shards
            .iter()
            .map(|s| shard_path(index, dir, s))
            .collect::<Result<_>>()?;
        let mut weights = Self::open_files(&paths)?;
        weights.index = Some(index.to_path_buf());
        for (name, shard) in &parsed.weight_map {
            match weights.entries.get(name) {
                Some(e) if weights.files[e.file].0 == dir.join(shard) => {}
                _ => {
                    return Err(Error::MissingWeight {
                        path: dir.join(shard),
                        name: name.clone(),
                    })
                }
            }
        }
        Ok(weights)
    }

    /// Opens and validates the given safetensors files (header, offsets, file length).
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for path in paths {
            crate::limits::regular_file(path)?;
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only and lives as long as `Weights`; a checkpoint modified
            // by another process while we run is outside what we can guard against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let bad = |message: String| Error::Safetensors {
                path: path.clone(),
                message,
            };
            // `deserialize` checks the header and that every tensor's bytes lie inside the file.
            SafeTensors::deserialize(&mmap).map_err(|e| bad(e.to_string()))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let entry = Entry {
                    file: files.len(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(bad(format!(
                        "tensor `{name}` appears in more than one shard"
                    )));
                }
            }
            files.push((path.clone(), mmap));
        }
        Ok(Weights {
            files,
            entries,
            used: Mutex::new(HashSet::new()),
            index: None,
        })
    }

    /// The file that holds `name`; for a tensor it lacks, the index that names the files, or
    /// the first file. For messages.
    fn path_of(&self, name: &str) -> PathBuf {
        let file = match (self.entries.get(name), &self.index) {
            (Some(e), _) => e.file,
            (None, Some(index)) => return index.clone(),
            (None, None) => 0,
        };
        self.files
            .get(file)
            .map(|f| f.0.clone())
            .unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape stored for `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Tensor `name` widened to `f32`, after checking that its shape is `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let (entry, bytes) = self.checked(name, shape)?;
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => {
                in_place(bytes, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).into_owned()
            }
            Dtype::BF16 => halves(bytes)
                .par_iter()
                .map(|&b| bf16::from_bits(b).to_f32())
                .collect(),
            Dtype::F16 => halves(bytes)
                .par_iter()
                .map(|&b| f16::from_bits(b).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path_of(name),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        check_finite(|| self.path_of(name), name, &values)?;
        self.taken(name, entry);
        Ok(values)
    }

    /// `f` of tensor `name` as bf16 bit patterns when it is stored as bf16 (else `None`, and the
    /// tensor is not marked as taken), after checking that its shape is `shape` and that it holds
    /// no NaN or infinity. `f` reads the mapped file in place (a copy only when the tensor's bytes
    /// sit at an odd offset), so a weight packed by `f` is read from the checkpoint once.
    pub fn with_bf16_bits<R>(
        &self,
        name: &str,
        shape: &[usize],
        f: impl FnOnce(&[u16]) -> R,
    ) -> Result<Option<R>> {
        let (entry, bytes) = self.checked(name, shape)?;
        if entry.dtype != Dtype::BF16 {
            return Ok(None);
        }
        let bits = halves(bytes);
        if !bf16_all_finite(&bits) {
            return Err(Error::NonFiniteWeight {
                path: self.path_of(name),
                name: name.to_string(),
            });
        }
        let out = f(&bits);
        self.taken(name, entry);
        Ok(Some(out))
    }

    /// The entry of `name` and its bytes, after checking that its shape is `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<(&Entry, &[u8])> {
        let entry = self.entries.get(name).ok_or_else(|| Error::MissingWeight {
            path: self.path_of(name),
            name: name.to_string(),
        })?;
        if entry.shape != shape {
            return Err(Error::ShapeMismatch {
                path: self.path_of(name),
                name: name.into(),
                expected: shape.to_vec(),
                got: entry.shape.clone(),
            });
        }
        Ok((entry, &self.files[entry.file].1[entry.start..entry.end]))
    }

    /// Marks `name` as taken and hands its mapped pages back: the model keeps its own copy, so
    /// loading peaks at that copy's size, not at the sum of both.
    fn taken(&self, name: &str, entry: &Entry) {
        #[cfg(unix)]
        {
            // SAFETY: the map is a private read-only file mapping that nothing borrows past this
            // point (the caller's copy is made); pages dropped here are read back from the file
            // if needed.
            let _ = unsafe {
                self.files[entry.file].1.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    entry.start,
                    entry.end - entry.start,
                )
            };
        }
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
    }

    /// Whether `name` is stored as bf16 (then bf16 storage of it loses nothing).
    pub fn is_bf16(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.dtype == Dtype::BF16)
    }

    /// Fails if some stored tensor was never taken: the config describes a different model.
    pub fn ensure_all_used(&self) -> Result<()> {
        self.ensure_all_used_but(&[])
    }

    /// [`Weights::ensure_all_used`] for a model that reads part of a checkpoint: tensors whose
    /// names start with one of `skip` (e.g. the `encoder.` of a decoder-only load) may stay.
    pub fn ensure_all_used_but(&self, skip: &[&str]) -> Result<()> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut unused: Vec<&String> = self
            .entries
            .keys()
            .filter(|n| !used.contains(*n) && !skip.iter().any(|p| n.starts_with(p)))
            .collect();
        unused.sort();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(Error::UnexpectedWeights {
                path: self.path_of(first),
                count: unused.len(),
                example: (*first).clone(),
            }),
        }
    }
}

/// The file of shard `name` named by `index` in `dir`: a plain name inside `dir` (no absolute
/// path, no `..`, no link leading out of the folder).
fn shard_path(index: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let refuse = |why: &str| Error::Config {
        path: index.to_path_buf(),
        message: format!("shard `{name}` {why}; shards must be files in the index's folder"),
    };
    let plain = Path::new(name)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if name.is_empty() || !plain {
        return Err(refuse("is not a plain file name"));
    }
    let path = dir.join(name);
    let inside = match (path.canonicalize(), dir.canonicalize()) {
        (Ok(file), Ok(folder)) => file.starts_with(folder),
        _ => true,
    };
    if !inside {
        return Err(refuse("leads out of the folder through a link"));
    }
    Ok(path)
}

/// Little-endian values of `T` in `bytes`, in place, or decoded by `decode` into a copy when
/// they are not aligned for `T` (or this CPU is big-endian).
fn in_place<T: bytemuck::Pod>(bytes: &[u8], decode: impl Fn(&[u8]) -> T) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(values) if cfg!(target_endian = "little") => Cow::Borrowed(values),
        _ => Cow::Owned(
            bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(decode)
                .collect(),
        ),
    }
}

/// 16-bit values (bf16 or f16 bits) of `bytes`, see [`in_place`].
fn halves(bytes: &[u8]) -> Cow<'_, [u16]> {
    in_place(bytes, |c| u16::from_le_bytes([c[0], c[1]]))
}

/// Whether `ok` holds for every value, in parallel blocks whose loop the compiler vectorises.
fn all_values<T: Sync>(values: &[T], ok: impl Fn(&T) -> bool + Sync) -> bool {
    use rayon::prelude::*;
    values
        .par_chunks(1 << 16)
        .all(|block| block.iter().fold(true, |all, v| all & ok(v)))
}

/// Whether no bf16 bit pattern of `bits` is a NaN or an infinity (all eight exponent bits set).
fn bf16_all_finite(bits: &[u16]) -> bool {
    all_values(bits, |&b| b & 0x7f80 != 0x7f80)
}

/// Fails with [`Error::NonFiniteWeight`] when `values` hold NaN or infinity.
fn check_finite(path: impl FnOnce() -> PathBuf, name: &str, values: &[f32]) -> Result<()> {
    let finite = all_values(values, |v| v.is_finite());
    if finite {
        return Ok(());
    }
    Err(Error::NonFiniteWeight {
        path: path(),
        name: name.to_string(),
    })
}

/// Where a `Vb` takes its tensors from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Weights(&'a Weights),
    /// Hands out zeros and writes down every (name, shape) asked for: the list of tensors a
    /// config implies, used to write checkpoints in the exact layout the loader reads.
    Record(&'a Mutex<Vec<(String, Vec<usize>)>>),
}

/// A view of a tensor source under a name prefix, as in `vb.pp("attn").pp("to_q")`.
#[derive(Clone)]
pub struct Vb<'a> {
    source: Source<'a>,
    prefix: String,
    compute: Compute,
}

impl<'a> Vb<'a> {
    pub fn new(weights: &'a Weights) -> Self {
        Vb {
            source: Source::Weights(weights),
            prefix: String::new(),
            compute: Compute::F32,
        }
    }

    /// A builder that records names and shapes instead of reading them (see `Source::Record`).
    /// The zeros it returns are lazily mapped pages, so recording a 1B model costs no memory.
    pub fn recorder(log: &'a Mutex<Vec<(String, Vec<usize>)>>) -> Self {
        Vb {
            source: Source::Record(log),
            prefix: String::new(),
            compute: Compute::F32,
        }
    }

    /// The view one module down: `pp("attn")`, `pp(0)`.
    pub fn pp(&self, part: impl std::fmt::Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Vb {
            source: self.source,
            prefix,
            compute: self.compute,
        }
    }

    /// The same view whose matrix products (`nn::Linear`, convolutions) use `compute`.
    pub fn with_compute(mut self, compute: Compute) -> Self {
        self.compute = compute;
        self
    }

    /// The arithmetic of the matrix products built from this view.
    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// How a weight `name` under this prefix is kept: bf16 for bf16 products, and for f32
    /// products when the checkpoint stores it as bf16 (widening is exact), else f32.
    pub fn storage(&self, name: &str) -> Storage {
        let stored_bf16 = match self.source {
            Source::Weights(w) => w.is_bf16(&self.full(name)),
            Source::Record(_) => false,
        };
        if stored_bf16 || self.compute == Compute::Bf16 {
            Storage::Bf16
        } else {
            Storage::F32
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// `f` of tensor `name` under this prefix as bf16 bits when stored as bf16, checked to have
    /// `shape` ([`Weights::with_bf16_bits`]).
    pub fn with_bf16_bits<R>(
        &self,
        name: &str,
        shape: &[usize],
        f: impl FnOnce(&[u16]) -> R,
    ) -> Result<Option<R>> {
        match self.source {
            Source::Weights(w) => w.with_bf16_bits(&self.full(name), shape, f),
            Source::Record(_) => Ok(None),
        }
    }

    /// Tensor `name` under this prefix, as `f32`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.source {
            Source::Weights(w) => w.get(&self.full(name), shape),
            Source::Record(log) => {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((self.full(name), shape.to_vec()));
                Ok(vec![0.0; shape.iter().product()])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A named safetensors view of `bytes`.
    fn view<'a>(
        name: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: &'a [u8],
    ) -> (String, TensorView<'a>) {
        let view = TensorView::new(dtype, shape, bytes).expect("view");
        (name.to_string(), view)
    }

    #[test]
    fn f32_f16_and_bf16_are_widened_exactly() {
        let values = [1.0f32, -2.5, 0.099975586, 65504.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let tmp =
            std::env::temp_dir().join(format!("muddit-weights-{}.safetensors", std::process::id()));
        let views = vec![
            view("a", Dtype::F32, vec![2, 2], &f32_bytes),
            view("b", Dtype::F16, vec![4], &f16_bytes),
            view("c", Dtype::BF16, vec![4], &bf16_bytes),
        ];
        safetensors::serialize_to_file(views, None, &tmp).expect("write");
        let w = Weights::open_files(std::slice::from_ref(&tmp)).expect("open");
        assert_eq!(w.get("a", &[2, 2]).expect("a"), values);
        let want_f16: Vec<f32> = values.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert_eq!(w.get("b", &[4]).expect("b"), want_f16);
        let want_bf16: Vec<f32> = values.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
        assert_eq!(w.get("c", &[4]).expect("c"), want_bf16);
        assert!(matches!(w.get("a", &[4]), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(w.ensure_all_used(), Ok(())));
        std::fs::remove_file(&tmp).ok();
    }

    #[test]
    fn untaken_tensors_are_reported() {
        let bytes: Vec<u8> = [0.5f32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tmp =
            std::env::temp_dir().join(format!("muddit-unused-{}.safetensors", std::process::id()));
        let views = vec![
            view("x", Dtype::F32, vec![1], &bytes),
            view("y", Dtype::F32, vec![1], &bytes),
        ];
        safetensors::serialize_to_file(views, None, &tmp).expect("write");
        let w = Weights::open_files(std::slice::from_ref(&tmp)).expect("open");
        w.get("x", &[1]).expect("x");
        assert!(
            matches!(w.ensure_all_used(), Err(Error::UnexpectedWeights { count: 1, example, .. }) if example == "y")
        );
        std::fs::remove_file(&tmp).ok();
    }

    /// A safetensors file written by hand: `tensors` (name, dtype name, shape, bytes) laid out
    /// back to back in the given order, so a tensor can start at an odd offset.
    fn write_raw(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [start, data.len()] }),
            );
        }
        let mut header = serde_json::to_vec(&header).expect("json");
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&header);
        file.extend_from_slice(&data);
        std::fs::write(path, file).expect("write");
    }

    #[test]
    fn bf16_bits_are_read_in_place_or_copied_and_checked() {
        let bits: Vec<u16> = (0..300_000u32)
            .map(|i| bf16::from_f32((i % 977) as f32 * 0.25 - 100.0).to_bits())
            .collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut nan = bytes.clone();
        nan[2 * 299_999..].copy_from_slice(&bf16::NAN.to_le_bytes());
        let mut inf = bytes.clone();
        inf[2 * 70_001..2 * 70_002].copy_from_slice(&bf16::NEG_INFINITY.to_le_bytes());
        let tmp =
            std::env::temp_dir().join(format!("muddit-bits-{}.safetensors", std::process::id()));
        write_raw(
            &tmp,
            &[
                ("aligned", "BF16", vec![300, 1000], bytes.clone()),
                ("odd", "U8", vec![1], vec![7]),
                ("shifted", "BF16", vec![300_000], bytes),
                ("nan", "BF16", vec![300_000], nan),
                ("inf", "BF16", vec![300_000], inf),
                ("wide", "F32", vec![1], 1.5f32.to_le_bytes().to_vec()),
            ],
        );
        let w = Weights::open_files(std::slice::from_ref(&tmp)).expect("open");
        let copy = |name: &str, shape: &[usize]| w.with_bf16_bits(name, shape, |b| b.to_vec());
        assert_eq!(
            copy("aligned", &[300, 1000]).expect("aligned"),
            Some(bits.clone())
        );
        assert_eq!(copy("shifted", &[300_000]).expect("shifted"), Some(bits));
        for name in ["nan", "inf"] {
            assert!(
                matches!(copy(name, &[300_000]), Err(Error::NonFiniteWeight { name: n, .. }) if n == name),
                "{name}"
            );
        }
        assert!(matches!(
            copy("aligned", &[1000, 300]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert_eq!(copy("wide", &[1]).expect("wide"), None);
        assert!(
            matches!(
                w.ensure_all_used(),
                Err(Error::UnexpectedWeights { count: 4, .. })
            ),
            "only the two tensors read as bits are taken"
        );
        std::fs::remove_file(&tmp).ok();
    }
}
