//! One sampler step, as between two transformer calls.
//!
//! `image_1024px_cfg`: 1024 px text-to-image with guidance: logits `[2, 4096, 8192]`
//! (unconditional + conditional halves of a 64x64 grid, 8192 codes, mask id 8255), combined
//! as `u + 9 (c - u)` and stepped at step 0 of 16 (every token masked, so all 4096 tokens are
//! drawn: the heaviest step). `caption_77`: a captioning step, logits `[1, 77, 49409]`.
//!
//! Run: `cargo bench -p muddit-benches --bench sampler_step`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use muddit_sampler::{Guidance, Sampler, SamplerConfig, TokenLayout};

/// Continuous pseudo-random logits in [-8, 8) from a SplitMix64 hash of the index: `[len]`.
fn logits(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut z = (i ^ (seed << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / 1_048_576.0 - 8.0
        })
        .collect()
}

/// Benchmarks step 0 of a 16-step run on all-mask ids.
fn bench_step(c: &mut Criterion, name: &str, layout: TokenLayout, guidance: Guidance) {
    let config = SamplerConfig {
        guidance,
        seed: 1,
        ..SamplerConfig::new(16)
    };
    let sampler = Sampler::new(config).expect("a valid config");
    let logits = logits(layout.logits_len(guidance).expect("a valid layout"), 5);
    let start = layout.all_masked().expect("a valid layout");
    c.bench_function(name, |b| {
        b.iter_batched_ref(
            || start.clone(),
            |ids| {
                sampler
                    .step(0, ids, &logits, &layout)
                    .expect("a valid step")
            },
            BatchSize::SmallInput,
        )
    });
}

fn sampler_step(c: &mut Criterion) {
    let image = TokenLayout::image(1, 64, 64, 8192, 8255).expect("a 64x64 grid");
    bench_step(
        c,
        "sampler_step/image_1024px_cfg",
        image,
        Guidance::Cfg { scale: 9.0 },
    );
    let caption = TokenLayout::text(1, 77, 49_409, 49_408);
    bench_step(c, "sampler_step/caption_77", caption, Guidance::Off);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = sampler_step
}
criterion_main!(benches);
