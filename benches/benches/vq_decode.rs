//! The VQ-VAE decoder from a 32 x 32 id grid to a 512 x 512 image, public shape (5 levels
//! 128-256-256-512-768, 3 ResNet blocks per level, 64 latent channels, 8192 codes), random
//! weights stored in bf16 and computed in f32; and the encoder of a 512 x 512 image. One
//! iteration takes seconds on two cores.
//!
//! `cargo bench -p muddit-benches --bench vq_decode`

use criterion::{criterion_group, criterion_main, Criterion};
use muddit_benches::bench_sides;
use muddit_engine::vqvae::load_vqvae;

fn public_shape(c: &mut Criterion) {
    let model = load_vqvae(&bench_sides("muddit-512")).expect("load");
    let v = model.cfg.num_vq_embeddings as i64;
    let ids: Vec<i64> = (0..32 * 32).map(|i| (i as i64 * 7919) % v).collect();
    c.bench_function("vq_decode/muddit-512/32x32-to-512px", |b| {
        b.iter(|| model.decode(&ids, 1, 32, 32).expect("decode"))
    });
    let image: Vec<f32> = (0..3 * 512 * 512)
        .map(|i| ((i * 2654435761usize) >> 7 & 255) as f32 / 255.0)
        .collect();
    c.bench_function("vq_encode/muddit-512/512px-to-32x32", |b| {
        b.iter(|| model.encode(&image, 1, 512, 512).expect("encode"))
    });
}

criterion_group!(name = heavy; config = muddit_benches::heavy(60); targets = public_shape);
criterion_main!(heavy);
