//! `mask_token_embedding.pth`: one tensor saved with `torch.save`, read without Python.
//!
//! A `torch.save` file is a zip archive: `<name>/data.pkl` (a pickle, protocol 2, describing the
//! object) and one raw little-endian file `<name>/data/<key>` per storage. A tensor is pickled as
//! `torch._utils._rebuild_tensor_v2(persistent_load(("storage", torch.FloatStorage, key, "cpu",
//! numel)), offset, size, stride, requires_grad, OrderedDict())`. The small pickle machine below
//! runs the opcodes such files use, records every tensor it rebuilds, and leaves everything else
//! opaque; the tensor's bytes are then checked against its storage's length and element count.
//! The same embedding may also come as a `.safetensors` file holding one tensor.

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// File names looked for at the model root, in order.
pub const MASK_EMBEDDING_FILES: [&str; 2] = [
    "mask_token_embedding.pth",
    "mask_token_embedding.safetensors",
];

/// A tensor found in the pickle: where its values are and how to read them.
#[derive(Debug, Clone)]
struct TensorRef {
    key: String,
    storage: String,
    numel: usize,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A persistent id (`BINPERSID`).
    Persistent(Box<Value>),
    Tensor(TensorRef),
    /// The result of a call we do not model.
    Object,
    Mark,
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: std::collections::HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end =
            end.ok_or_else(|| format!("data.pkl ends inside an opcode at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Stores the top of the stack under memo key `k` (`what` names the opcode's failure).
    fn memoize(&mut self, k: u32, what: &str) -> std::result::Result<(), String> {
        let top = self.stack.last().cloned().ok_or(what)?;
        self.memo.insert(k, top);
        Ok(())
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated GLOBAL")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    /// Everything above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("no MARK on the pickle stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn string(&mut self, n: usize) -> std::result::Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }

    fn run(mut self) -> std::result::Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack
                        .push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    // LONG1: n little-endian two's-complement bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes"));
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float)
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes)
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memoize(k, "BINPUT on an empty stack")?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(k, "LONG_BINPUT on an empty stack")?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k, "MEMOIZE on an empty stack")?;
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or(format!("memo {k} unset"))?;
                    self.stack.push(v)
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'a' => {
                    let v = self.pop()?;
                    if let Some(Value::List(l)) = self.stack.last_mut() {
                        l.push(v)
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Some(Value::List(l)) = self.stack.last_mut() {
                        l.extend(items)
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Some(Value::Dict(d)) = self.stack.last_mut() {
                        d.push((k, v))
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Some(Value::Dict(d)) = self.stack.last_mut() {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v))
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Persistent(Box::new(pid)))
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    self.pop()?; // BUILD: the state of an object we keep opaque
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Some(*i as usize),
        _ => None,
    }
}

fn usizes(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_usize).collect(),
        _ => None,
    }
}

/// The calls a tensor file makes: tensor and parameter rebuilds; anything else stays opaque.
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object);
    };
    let Value::Tuple(args) = args else {
        return Ok(Value::Object);
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let bad = || format!("malformed {name} arguments");
            let Some(Value::Persistent(pid)) = args.first() else {
                return Err(bad());
            };
            let Value::Tuple(pid) = pid.as_ref() else {
                return Err(bad());
            };
            let (storage, key, numel) = match pid.as_slice() {
                [Value::Str(kind), Value::Global(_, storage), Value::Str(key), _, numel]
                    if kind == "storage" =>
                {
                    (
                        storage.clone(),
                        key.clone(),
                        as_usize(numel).ok_or_else(bad)?,
                    )
                }
                _ => return Err(bad()),
            };
            Ok(Value::Tensor(TensorRef {
                key,
                storage,
                numel,
                offset: args.get(1).and_then(as_usize).ok_or_else(bad)?,
                shape: args.get(2).and_then(usizes).ok_or_else(bad)?,
                stride: args.get(3).and_then(usizes).ok_or_else(bad)?,
            }))
        }
        ("torch._utils", "_rebuild_parameter") => {
            Ok(args.into_iter().next().unwrap_or(Value::None))
        }
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Object),
    }
}

/// Every tensor inside a value (dicts, lists, tuples walked).
fn tensors(v: &Value, out: &mut Vec<TensorRef>) {
    match v {
        Value::Tensor(t) => out.push(t.clone()),
        Value::Tuple(items) | Value::List(items) => items.iter().for_each(|i| tensors(i, out)),
        Value::Dict(items) => items.iter().for_each(|(_, i)| tensors(i, out)),
        Value::None
        | Value::Bool
        | Value::Int(_)
        | Value::Float
        | Value::Str(_)
        | Value::Bytes
        | Value::Global(..)
        | Value::Persistent(_)
        | Value::Object
        | Value::Mark => {}
    }
}

/// Bytes per element of a storage class, and its widening to f32.
fn storage_dtype(storage: &str) -> Option<(usize, fn(&[u8]) -> f32)> {
    match storage {
        "FloatStorage" => Some((4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        "HalfStorage" => Some((2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        "BFloat16Storage" => Some((2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        "DoubleStorage" => Some((8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        })),
        _ => None,
    }
}

/// The single tensor of a `torch.save` file: its shape and values widened to f32.
pub fn read_pth_tensor(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |message: String| Error::Pth {
        path: path.to_path_buf(),
        message,
    };
    crate::limits::regular_file(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        bad(format!(
            "cannot open it as a zip archive: truncated, or not a torch.save file ({e}); files from torch.save before PyTorch 1.6 are not supported, re-save them or use .safetensors"
        ))
    })?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_string)
        .ok_or_else(|| bad("no data.pkl in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let read = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Result<Vec<u8>> {
        let mut entry = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        Ok(bytes)
    };
    if zip.file_names().any(|n| *n == format!("{prefix}byteorder")) {
        let order = read(&mut zip, &format!("{prefix}byteorder"))?;
        if order.trim_ascii() != b"little" {
            return Err(bad("big-endian storages are not supported".into()));
        }
    }
    let pkl = read(&mut zip, &pkl_name)?;
    let root = Unpickler {
        data: &pkl,
        pos: 0,
        stack: Vec::new(),
        memo: Default::default(),
    }
    .run()
    .map_err(|m| bad(format!("{pkl_name}: {m}")))?;
    let mut found = Vec::new();
    tensors(&root, &mut found);
    let t = match found.as_slice() {
        [t] => t.clone(),
        [] => return Err(bad("the file holds no tensor".into())),
        many => {
            return Err(bad(format!(
                "the file holds {} tensors, expected one",
                many.len()
            )))
        }
    };
    let (size, widen) = storage_dtype(&t.storage).ok_or_else(|| {
        bad(format!(
            "unsupported storage type {} (float, half, bfloat16, double are supported)",
            t.storage
        ))
    })?;
    let data = read(&mut zip, &format!("{prefix}data/{}", t.key))?;
    if data.len() != t.numel * size {
        return Err(bad(format!(
            "storage {} holds {} bytes, but the pickle says {} elements of {size} bytes",
            t.key,
            data.len(),
            t.numel
        )));
    }
    let numel: usize = t.shape.iter().product();
    // Contiguous row-major strides of `shape`.
    let mut contiguous = vec![1usize; t.shape.len()];
    for i in (0..t.shape.len().saturating_sub(1)).rev() {
        contiguous[i] = contiguous[i + 1] * t.shape[i + 1];
    }
    if numel > 1 && t.stride != contiguous {
        return Err(bad(format!(
            "non-contiguous tensor (shape {:?}, stride {:?})",
            t.shape, t.stride
        )));
    }
    if t.offset + numel > t.numel {
        return Err(bad(format!(
            "tensor of {numel} elements at offset {} overruns its storage of {}",
            t.offset, t.numel
        )));
    }
    let values = data[t.offset * size..(t.offset + numel) * size]
        .chunks_exact(size)
        .map(widen)
        .collect();
    Ok((t.shape, values))
}

/// The single tensor of a `.safetensors` file, widened to f32.
fn read_safetensors_tensor(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let file = crate::tensor_io::TensorFile::read(path)?;
    let names: Vec<&str> = file.names().collect();
    let [name] = names.as_slice() else {
        return Err(Error::Safetensors {
            path: path.to_path_buf(),
            message: format!("expected exactly one tensor, found {}", names.len()),
        });
    };
    let rank = file.get(name).map_or(0, |t| t.shape.len());
    let (shape, values) = file.f32(name, rank, "a float vector")?;
    Ok((shape.to_vec(), values.to_vec()))
}

/// The `<mask>` embedding file of a model root (or the file itself): `.pth` or `.safetensors`.
pub fn mask_embedding_path(root: &Path) -> Result<PathBuf> {
    if root.is_file() {
        return Ok(root.to_path_buf());
    }
    MASK_EMBEDDING_FILES
        .iter()
        .map(|f| root.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ModelFolder {
            path: root.to_path_buf(),
            message: format!(
                "captioning and VQA need the `<mask>` token's text embedding, `{}` (or `{}`) at the model root, and it is not there; it is never replaced by a random vector",
                MASK_EMBEDDING_FILES[0], MASK_EMBEDDING_FILES[1]
            ),
        })
}

/// Reads the `<mask>` embedding and checks it holds `hidden` values (any shape: `[D]`, `[1, D]`).
pub fn read_mask_embedding(path: &Path, hidden: usize) -> Result<Vec<f32>> {
    let (shape, values) = if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors_tensor(path)?
    } else {
        read_pth_tensor(path)?
    };
    if values.len() != hidden {
        return Err(Error::Pth {
            path: path.to_path_buf(),
            message: format!(
                "the tensor has shape {shape:?} ({} values), but the text encoder's hidden size is {hidden}",
                values.len()
            ),
        });
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFiniteWeight {
            path: path.to_path_buf(),
            name: "<mask> embedding".into(),
        });
    }
    Ok(values)
}

/// Writes `values` as a 1-D f32 tensor in the `torch.save` zip format (what `torch.load` reads).
pub fn write_pth_vector(path: &Path, values: &[f32]) -> Result<()> {
    let n = values.len();
    let mut pkl: Vec<u8> = vec![0x80, 2];
    let global = |out: &mut Vec<u8>, module: &str, name: &str| {
        out.push(b'c');
        out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    };
    let unicode = |out: &mut Vec<u8>, s: &str| {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let int = |out: &mut Vec<u8>, v: usize| {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    };
    global(&mut pkl, "torch._utils", "_rebuild_tensor_v2");
    pkl.extend_from_slice(b"((");
    unicode(&mut pkl, "storage");
    global(&mut pkl, "torch", "FloatStorage");
    unicode(&mut pkl, "0");
    unicode(&mut pkl, "cpu");
    int(&mut pkl, n);
    pkl.extend_from_slice(b"tQ");
    int(&mut pkl, 0);
    int(&mut pkl, n);
    pkl.push(0x85);
    int(&mut pkl, 1);
    pkl.push(0x85);
    pkl.push(0x89);
    global(&mut pkl, "collections", "OrderedDict");
    pkl.extend_from_slice(b")Rt");
    pkl.extend_from_slice(b"R.");
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        for (name, bytes) in [
            ("archive/data.pkl", pkl.as_slice()),
            ("archive/byteorder", b"little".as_slice()),
            ("archive/data/0", data.as_slice()),
            ("archive/version", b"3\n".as_slice()),
        ] {
            zip.start_file(name, opts)?;
            zip.write_all(bytes)?;
        }
        zip.finish()?;
        Ok(())
    };
    write().map_err(|e| Error::io(path, e))
}
