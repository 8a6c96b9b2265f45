//! Shared helpers for the criterion benches in `benches/benches/`.

use muddit_engine::config::TransformerConfig;
use muddit_engine::random::{write_random_transformer, WeightDtype};
use std::path::PathBuf;

/// A random checkpoint of `preset` in `dtype` under `target/bench-models/`, written on first use
/// (the public 1B shape takes about 12 s and 2 GB in bf16).
pub fn bench_model(preset: &str, dtype: WeightDtype) -> PathBuf {
    let tag = match dtype {
        WeightDtype::F32 => "f32",
        WeightDtype::Bf16 => "bf16",
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-models")
        .join(format!("{preset}-{tag}"));
    let dir = root.join("transformer");
    if !dir.join("config.json").is_file() {
        let cfg =
            TransformerConfig::preset(preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
        write_random_transformer(&cfg, &dir, dtype, 0, None).expect("write the bench checkpoint");
    }
    root
}
