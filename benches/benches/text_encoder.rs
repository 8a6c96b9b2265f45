//! The CLIP text encoder on one 77-token row, public shape (OpenCLIP ViT-H/14 text tower:
//! 24 layers, width 1024, 16 heads, vocabulary 49408), random weights stored in bf16 and
//! computed in f32; and the tiny test shape.
//!
//! `cargo bench -p muddit-benches --bench text_encoder`

use criterion::{criterion_group, criterion_main, Criterion};
use muddit_engine::clip_text::load_text_encoder;
use muddit_engine::config::TransformerConfig;
use muddit_engine::random::WeightDtype;
use muddit_engine::random_sides::write_random_sides;
use std::path::PathBuf;
use std::time::Duration;

/// A random model folder's sides for `preset` under `target/bench-models/`, written on first use.
fn sides(preset: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-models")
        .join(format!("sides-{preset}-bf16"));
    if !root.join("vqvae/config.json").is_file() {
        let cfg = TransformerConfig::preset(preset).expect("preset");
        write_random_sides(&root, &cfg, WeightDtype::Bf16, 0, None).expect("write the sides");
    }
    root
}

fn encode(c: &mut Criterion, preset: &str, batch: usize) {
    let model = load_text_encoder(&sides(preset)).expect("load");
    let v = model.cfg.vocab_size as i64;
    let ids: Vec<i64> = (0..batch * 77).map(|i| (i as i64 * 7919) % v).collect();
    c.bench_function(&format!("text_encoder/{preset}/b{batch}x77"), |b| {
        b.iter(|| model.forward(&ids, batch).expect("forward"))
    });
}

fn tiny(c: &mut Criterion) {
    encode(c, "tiny", 1);
}

fn public_shape(c: &mut Criterion) {
    encode(c, "muddit-512", 1);
    encode(c, "muddit-512", 2);
}

criterion_group!(quick, tiny);
criterion_group! {
    name = heavy;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(1));
    targets = public_shape
}
criterion_main!(quick, heavy);
