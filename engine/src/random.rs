//! Random checkpoints in the exact public layout, so that tests and benches need no download.
//!
//! The tensor list comes from building the model with a recording `Vb`, so it can never drift
//! from what the loader reads. Values are seeded per tensor (from the seed and the tensor's
//! name), so a checkpoint is the same whatever the thread count.

use crate::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::mmdit::Mmdit;
use crate::tensor_io::HostTensor;
use crate::weights::Vb;
use half::bf16;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Storage type of a written checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
}

impl WeightDtype {
    fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 => 2,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }
}

/// Every tensor the transformer of `cfg` reads, with its shape, in load order.
pub fn transformer_tensors(cfg: &TransformerConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let log = Mutex::new(Vec::new());
    Mmdit::new(cfg, &Vb::recorder(&log))?;
    Ok(log.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// 64-bit FNV-1a of a name, to seed each tensor on its own.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Random values for one tensor, chosen so that activations stay of order one: norm weights
/// near 1, small biases, embedding rows of unit variance, matrices scaled by `1/sqrt(fan_in)`.
fn random_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed ^ name_hash(name));
    let n: usize = shape.iter().product();
    let (mean, std) = if name.ends_with(".bias") {
        (0.0, 0.02)
    } else if shape.len() == 1 {
        (1.0, 0.1)
    } else if name.contains("embeddings") || name.contains("embedding.") {
        (0.0, 1.0)
    } else {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    };
    (0..n)
        .map(|_| mean + std * rng.sample::<f32, _>(StandardNormal))
        .collect()
}

fn encode(values: &[f32], dtype: WeightDtype) -> Vec<u8> {
    match dtype {
        WeightDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightDtype::Bf16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Removes what an earlier write of `stem` left in `dir` (one file, or shards and their
/// index), so that the folder loads this write's tensors only.
fn remove_earlier(dir: &Path, stem: &str) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let shard = name
            .strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| rest.contains("-of-") && rest.ends_with(".safetensors"));
        let whole = [".safetensors", ".safetensors.index.json"]
            .iter()
            .any(|ext| name.strip_prefix(stem) == Some(ext));
        if shard || whole {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Gives a file written through a private temporary file (mode 0600, as `safetensors` writes)
/// the mode of the folder's other files, 0644.
fn readable_by_all(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(path, mode).map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes random values for `tensors` as `<stem>.safetensors` in `dir`, or, when they exceed
/// `max_shard_bytes`, as `<stem>-0000i-of-0000n.safetensors` shards with `<stem>.safetensors.index.json`.
pub fn write_random_tensors(
    dir: &Path,
    stem: &str,
    tensors: &[(String, Vec<usize>)],
    dtype: WeightDtype,
    seed: u64,
    max_shard_bytes: Option<usize>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_earlier(dir, stem)?;
    // Shards: consecutive runs of tensors up to the byte limit.
    let mut shards: Vec<Vec<&(String, Vec<usize>)>> = vec![Vec::new()];
    let mut in_shard = 0usize;
    for t in tensors {
        let bytes = t.1.iter().product::<usize>() * dtype.bytes();
        if let Some(limit) = max_shard_bytes {
            if in_shard > 0 && in_shard + bytes > limit {
                shards.push(Vec::new());
                in_shard = 0;
            }
        }
        in_shard += bytes;
        shards.last_mut().map(|s| s.push(t));
    }
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            format!("{stem}.safetensors")
        } else {
            format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let data: Vec<Vec<u8>> = shard
            .par_iter()
            .map(|(name, shape)| encode(&random_values(name, shape, seed), dtype))
            .collect();
        let views = shard
            .iter()
            .zip(&data)
            .map(|((name, shape), bytes)| {
                TensorView::new(dtype.safetensors(), shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Safetensors {
                path: dir.join(&file),
                message: e.to_string(),
            })?;
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, None, &path).map_err(|e| Error::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        readable_by_all(&path)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    if count > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        let path = dir.join(format!("{stem}.safetensors.index.json"));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&index).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// A random transformer folder: `config.json` and `diffusion_pytorch_model.safetensors`
/// (sharded past `max_shard_bytes`), in the public names and shapes.
pub fn write_random_transformer(
    cfg: &TransformerConfig,
    dir: &Path,
    dtype: WeightDtype,
    seed: u64,
    max_shard_bytes: Option<usize>,
) -> Result<()> {
    let tensors = transformer_tensors(cfg)?;
    write_random_tensors(
        dir,
        "diffusion_pytorch_model",
        &tensors,
        dtype,
        seed,
        max_shard_bytes,
    )?;
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_json()).map_err(|e| Error::io(&path, e))
}

/// Inputs for one transformer forward of `cfg` in the `debug forward` names: a `grid x grid`
/// id grid, fully masked but for a random third, random text features and pooled vectors,
/// timestep 0.5 and micro-conditions `[px, px, 0, 0, 6]` with `px = 16 * grid`.
pub fn random_inputs(
    cfg: &TransformerConfig,
    batch: usize,
    grid: usize,
    text_len: usize,
    seed: u64,
) -> BTreeMap<String, HostTensor> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mask = cfg.mask_id() as i64;
    let ids: Vec<i64> = (0..batch * grid * grid)
        .map(|_| {
            if rng.random::<f32>() < 0.33 {
                rng.random_range(0..cfg.codebook_size as i64)
            } else {
                mask
            }
        })
        .collect();
    let mut normal = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect()
    };
    let text = normal(batch * text_len * cfg.joint_attention_dim);
    let pooled = normal(batch * cfg.pooled_projection_dim);
    let px = (16 * grid) as f32;
    let micro: Vec<f32> = (0..batch).flat_map(|_| [px, px, 0.0, 0.0, 6.0]).collect();
    BTreeMap::from([
        (
            "image_tokens".to_string(),
            HostTensor::i64(vec![batch, grid, grid], ids),
        ),
        (
            "encoder_hidden_states".to_string(),
            HostTensor::f32(vec![batch, text_len, cfg.joint_attention_dim], text),
        ),
        (
            "pooled_projections".to_string(),
            HostTensor::f32(vec![batch, cfg.pooled_projection_dim], pooled),
        ),
        ("timestep".to_string(), HostTensor::f32(vec![1], vec![0.5])),
        (
            "micro_conds".to_string(),
            HostTensor::f32(vec![batch, 5], micro),
        ),
    ])
}
