//! Shared helpers for the criterion benches in `benches/benches/`.

use muddit_engine::config::TransformerConfig;
use muddit_engine::random::{write_random_transformer, WeightDtype};
use muddit_engine::random_sides::write_random_sides;
use std::path::PathBuf;
use std::time::Duration;

/// `target/bench-models/NAME` of the workspace.
fn bench_models(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-models")
        .join(name)
}

/// A random model folder's sides (text encoder, VQ-VAE, tokenizer) for `preset`, stored in bf16,
/// under `target/bench-models/`, written on first use.
pub fn bench_sides(preset: &str) -> PathBuf {
    let root = bench_models(&format!("sides-{preset}-bf16"));
    if !root.join("vqvae/config.json").is_file() {
        let cfg =
            TransformerConfig::preset(preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
        write_random_sides(&root, &cfg, WeightDtype::Bf16, 0, None).expect("write the sides");
    }
    root
}

/// Criterion for the public shapes, whose one iteration takes seconds: 10 samples over
/// `measure_s` seconds after a one-second warm-up.
pub fn heavy(measure_s: u64) -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(measure_s))
        .warm_up_time(Duration::from_secs(1))
}

/// A random checkpoint of `preset` in `dtype` under `target/bench-models/`, written on first use
/// (the public 1B shape takes about 12 s and 2 GB in bf16).
pub fn bench_model(preset: &str, dtype: WeightDtype) -> PathBuf {
    let tag = match dtype {
        WeightDtype::F32 => "f32",
        WeightDtype::Bf16 => "bf16",
    };
    let root = bench_models(&format!("{preset}-{tag}"));
    let dir = root.join("transformer");
    if !dir.join("config.json").is_file() {
        let cfg =
            TransformerConfig::preset(preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
        write_random_transformer(&cfg, &dir, dtype, 0, None).expect("write the bench checkpoint");
    }
    root
}
