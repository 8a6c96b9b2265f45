//! Small safetensors files of named host tensors: the `debug` commands' inputs and outputs.

use crate::error::{Error, Result};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Tensor values on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Values {
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Values::F32(v) => Some(v),
            Values::I64(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match self {
            Values::I64(v) => Some(v),
            Values::F32(_) => None,
        }
    }
}

/// A named tensor read from or written to a file.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor {
            shape,
            values: Values::F32(data),
        }
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        HostTensor {
            shape,
            values: Values::I64(data),
        }
    }
}

/// All tensors of a file: floats widened to `f32`, integers to `i64`.
pub struct TensorFile {
    path: std::path::PathBuf,
    tensors: BTreeMap<String, HostTensor>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        crate::limits::regular_file(path)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let b = view.data();
            let values = match view.dtype() {
                Dtype::F32 => Values::F32(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                Dtype::BF16 => Values::F32(
                    b.chunks_exact(2)
                        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                Dtype::F16 => Values::F32(
                    b.chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                Dtype::I64 => Values::I64(
                    b.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                ),
                Dtype::I32 => Values::I64(
                    b.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect(),
                ),
                other => {
                    return Err(Error::UnsupportedDtype {
                        path: path.to_path_buf(),
                        name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            tensors.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// The names in the file, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingWeight {
            path: self.path.clone(),
            name: name.into(),
        })
    }

    fn check_rank(&self, name: &str, t: &HostTensor, rank: usize, what: &str) -> Result<()> {
        if t.shape.len() != rank {
            return Err(Error::input(
                name,
                format!(
                    "{}: expected {what}, found shape {:?}",
                    self.path.display(),
                    t.shape
                ),
            ));
        }
        Ok(())
    }

    /// A float tensor of the given rank (`what` describes it for the message, e.g. `[B,L,J]`).
    pub fn f32(&self, name: &str, rank: usize, what: &str) -> Result<(&[usize], &[f32])> {
        self.typed(name, rank, what, ("a float", "integers"), Values::as_f32)
    }

    /// An integer tensor of the given rank.
    pub fn i64(&self, name: &str, rank: usize, what: &str) -> Result<(&[usize], &[i64])> {
        self.typed(name, rank, what, ("an integer", "floats"), Values::as_i64)
    }

    /// Tensor `name` of rank `rank` whose values `pick` takes; else an error saying it holds
    /// `kinds.1` where `kinds.0` was expected.
    fn typed<'a, T>(
        &'a self,
        name: &str,
        rank: usize,
        what: &str,
        (want, found): (&str, &str),
        pick: fn(&Values) -> Option<&[T]>,
    ) -> Result<(&'a [usize], &'a [T])> {
        let t = self.entry(name)?;
        self.check_rank(name, t, rank, what)?;
        let values = pick(&t.values).ok_or_else(|| {
            let path = self.path.display();
            Error::input(
                name,
                format!("{path}: expected {want} tensor {what}, found {found}"),
            )
        })?;
        Ok((&t.shape, values))
    }
}

/// Named tensors (`f32` and `i64`, little endian) as the bytes of a safetensors file; `path`
/// (where they go) names errors.
pub fn to_bytes(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes) = match &t.values {
            Values::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Values::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        owned.push((name.clone(), dtype, t.shape.clone(), bytes));
    }
    let bad = |e: safetensors::SafeTensorError| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    safetensors::serialize(views, None).map_err(bad)
}

/// Writes named tensors to a safetensors file (see [`to_bytes`]).
pub fn write(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let bytes = to_bytes(path, tensors)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
