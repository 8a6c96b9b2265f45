//! The CLIP text encoder on one 77-token row, public shape (OpenCLIP ViT-H/14 text tower:
//! 24 layers, width 1024, 16 heads, vocabulary 49408), random weights stored in bf16 and
//! computed in f32; and the tiny test shape.
//!
//! `cargo bench -p muddit-benches --bench text_encoder`

use criterion::{criterion_group, criterion_main, Criterion};
use muddit_benches::bench_sides;
use muddit_engine::clip_text::load_text_encoder;

fn encode(c: &mut Criterion, preset: &str, batch: usize) {
    let model = load_text_encoder(&bench_sides(preset)).expect("load");
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
criterion_group!(name = heavy; config = muddit_benches::heavy(20); targets = public_shape);
criterion_main!(quick, heavy);
