//! The transformer's matrix products at the public 1B shape, one guided 512 px step:
//! 666 rows (2 x (77 text + 256 image tokens)) against the block weights.
//!
//! `matmul/{f32,bf16w_f32,bf16}/MxKxN`: f32 weights and products; bf16-stored weights with f32
//! products; bf16 products (`vdpbf16ps`). `gemm_crate/MxKxN` is the `gemm` crate on the same
//! f32 operands (the previous implementation). Throughput is reported in elements = FLOPs
//! (`2 M N K`), so criterion's "elem/s" reads as FLOP/s.
//!
//! Run: `cargo bench -p muddit-benches --bench matmul`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use muddit_kernels::cpu::matmul;
use muddit_kernels::cpu::packed::{linear, Compute, Epilogue, PackedMatrix, Storage};

const SHAPES: [(usize, usize, usize); 4] = [(666, 1024, 4096), (666, 4096, 1024), (666, 1024, 3072), (666, 5120, 1024)];

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) >> 9) as f32 / 4_194_304.0 - 1.0)
        .map(|v| v * 0.05)
        .collect()
}

fn bench(c: &mut Criterion) {
    let only = std::env::var("MUDDIT_BENCH_MODES").unwrap_or_else(|_| "f32,bf16w_f32,bf16,gemm_crate".into());
    let mut g = c.benchmark_group("matmul");
    g.sample_size(20);
    for (m, k, n) in SHAPES {
        let x = values(m * k, 1);
        let w = values(n * k, 2);
        let bias = values(n, 3);
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = format!("{m}x{k}x{n}");
        for (name, storage, compute) in [
            ("f32", Storage::F32, Compute::F32),
            ("bf16w_f32", Storage::Bf16, Compute::F32),
            ("bf16", Storage::Bf16, Compute::Bf16),
        ] {
            if !only.split(',').any(|o| o == name) {
                continue;
            }
            let pw = PackedMatrix::new(&w, n, k, storage, compute);
            g.bench_function(format!("{name}/{id}"), |b| b.iter(|| linear(&x, &pw, Some(&bias), Epilogue::None, &mut out)));
        }
        if only.split(',').any(|o| o == "gemm_crate") {
            g.bench_function(format!("gemm_crate/{id}"), |b| b.iter(|| matmul::linear(&x, &w, Some(&bias), m, k, n, &mut out)));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
