//! The transformer's matrix products at the public 1B shape, one guided 512 px step:
//! 666 rows (2 x (77 text + 256 image tokens)) against the block weights.
//!
//! `matmul/{f32,bf16w_f32,bf16}/MxKxN`: f32 weights and products; bf16-stored weights with f32
//! products; bf16 products on the path this CPU's table picks (`isa::Isa::bf16_path`).
//! `bf16_widened` and `bf16_dot` are the two AVX-512 bf16 paths forced (bf16 widened to f32 FMAs
//! at the `avx512` level; `vdpbf16ps` at `avx512bf16`, where the CPU has it): the benchmark that
//! checks the per-family table. `f32_avx2` is the AVX2 + FMA kernel. `gemm_crate/MxKxN` is the
//! `gemm` crate on the same f32 operands (the portable level). Throughput is reported in elements = FLOPs
//! (`2 M N K`), so criterion's "elem/s" reads as FLOP/s.
//!
//! `ceiling/{f32_fma,f32_fma256,bf16_dot}`: the machine's ceiling in the same sitting, from a
//! loop of independent register-only `vfmadd231ps` (zmm, 24 accumulators; ymm, 12) /
//! `vdpbf16ps` (24) on every rayon thread; the ratio of a product's FLOP/s to its dtype's
//! ceiling is what BENCHMARKS.md quotes.
//!
//! Run: `cargo bench -p muddit-benches --bench matmul` (`MUDDIT_BENCH_MODES=f32,bf16` to pick;
//! every mode: `f32,bf16w_f32,bf16,bf16_widened,bf16_dot,f32_avx2,gemm_crate`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use muddit_kernels::cpu::isa::Isa;
use muddit_kernels::cpu::matmul;
use muddit_kernels::cpu::packed::{
    linear, Bf16Path, Compute, Epilogue, PackedMatrix, Source, Storage,
};

const SHAPES: [(usize, usize, usize); 4] = [
    (666, 1024, 4096),
    (666, 4096, 1024),
    (666, 1024, 3072),
    (666, 5120, 1024),
];

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) >> 9) as f32 / 4_194_304.0 - 1.0)
        .map(|v| v * 0.05)
        .collect()
}

/// `iters` rounds of `CHAINS` independent FMAs (f32) or bf16 dot products on one thread. Twelve
/// chains cover the latency of both instructions, and stay in registers: with 24 the compiler
/// kept a third of the 512-bit accumulators on the stack, and the loop measured the store
/// forwarding (303 instead of 461 GFLOP/s bf16 on an AMD EPYC Zen 4, whose `simd_peak.c` gives 461).
#[cfg(target_arch = "x86_64")]
mod ceiling {
    use std::arch::x86_64::*;

    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn f32_fma(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999_9));
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f32_fma256(iters: u64) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(0.999_999_9));
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            acc.iter().fold(b, |s, v| _mm256_add_ps(s, *v)),
        );
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_dot(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let one: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, one, one);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }
}

#[cfg(target_arch = "x86_64")]
fn bench_ceiling(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>) {
    const ITERS: u64 = 1 << 23;
    let threads = rayon::current_num_threads() as u64;
    // One OS thread per worker, all started together.
    let on_all = |f: unsafe fn(u64) -> f32| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || unsafe { f(std::hint::black_box(ITERS)) }))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .sum::<f32>()
        })
    };
    if is_x86_feature_detected!("avx512f") {
        g.throughput(Throughput::Elements(
            threads * ITERS * ceiling::CHAINS as u64 * 32,
        ));
        // SAFETY (inside on_all): avx512f checked above.
        g.bench_function("ceiling/f32_fma", |b| b.iter(|| on_all(ceiling::f32_fma)));
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        g.throughput(Throughput::Elements(
            threads * ITERS * ceiling::CHAINS as u64 * 16,
        ));
        // SAFETY (inside on_all): avx2 and fma checked above.
        g.bench_function("ceiling/f32_fma256", |b| {
            b.iter(|| on_all(ceiling::f32_fma256))
        });
    }
    if is_x86_feature_detected!("avx512bf16") {
        g.throughput(Throughput::Elements(
            threads * ITERS * ceiling::CHAINS as u64 * 64,
        ));
        // SAFETY (inside on_all): avx512f and avx512bf16 checked above.
        g.bench_function("ceiling/bf16_dot", |b| b.iter(|| on_all(ceiling::bf16_dot)));
    }
}

fn bench(c: &mut Criterion) {
    let only = std::env::var("MUDDIT_BENCH_MODES")
        .unwrap_or_else(|_| "f32,bf16w_f32,bf16,bf16_widened,bf16_dot,gemm_crate".into());
    let mut g = c.benchmark_group("matmul");
    g.sample_size(20);
    #[cfg(target_arch = "x86_64")]
    bench_ceiling(&mut g);
    for (m, k, n) in SHAPES {
        let x = values(m * k, 1);
        let w = values(n * k, 2);
        let bias = values(n, 3);
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = format!("{m}x{k}x{n}");
        let best = Isa::detect();
        for (name, storage, compute, isa, path) in [
            ("f32", Storage::F32, Compute::F32, best, None),
            ("bf16w_f32", Storage::Bf16, Compute::F32, best, None),
            ("bf16", Storage::Bf16, Compute::Bf16, best, None),
            (
                "bf16_widened",
                Storage::Bf16,
                Compute::Bf16,
                Isa::Avx512,
                Some(Bf16Path::Widened),
            ),
            (
                "bf16_dot",
                Storage::Bf16,
                Compute::Bf16,
                Isa::Avx512Bf16,
                Some(Bf16Path::Dot),
            ),
            ("f32_avx2", Storage::F32, Compute::F32, Isa::Avx2, None),
        ] {
            // A forced level or path this CPU lacks is skipped.
            if !only.split(',').any(|o| o == name) || isa > best {
                continue;
            }
            let mut pw = PackedMatrix::with_isa(Source::F32(&w), n, k, storage, compute, isa);
            if let Some(path) = path {
                pw = pw.with_bf16_path(path);
            }
            g.bench_function(format!("{name}/{id}"), |b| {
                b.iter(|| linear(&x, &pw, Some(&bias), Epilogue::None, &mut out))
            });
        }
        if only.split(',').any(|o| o == "gemm_crate") {
            g.bench_function(format!("gemm_crate/{id}"), |b| {
                b.iter(|| matmul::linear(&x, &w, Some(&bias), m, k, n, &mut out))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
