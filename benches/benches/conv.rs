//! The VQ decoder's 3x3 convolutions at the public shape, direct (implicit product, fields read
//! in place) against Winograd F(2x2, 3x3), f32 and bf16 products: 256 channels at 128 px and
//! 128 channels at 256 px (9.7 GFLOP each as direct products), plain and of a 2x-upsampled
//! input. Throughput is reported in elements = the direct convolution's FLOPs (`2 H W O 9 C`), so
//! criterion's "elem/s" reads as effective FLOP/s for both.
//!
//! Run: `cargo bench -p muddit-benches --bench conv`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use muddit_kernels::cpu::conv::{conv2d, conv2d_upsampled_2x, patch_major_weight, Conv2dShape};
use muddit_kernels::cpu::packed::{Compute, PackedMatrix, Storage};
use muddit_kernels::cpu::winograd::{conv3x3, Winograd3x3};
use std::time::Duration;

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) >> 9) as f32 / 4_194_304.0 - 1.0)
        .collect()
}

fn convs(c: &mut Criterion) {
    // (output side, channels in = out, upsampled input)
    for (side, ch, up) in [(128, 256, 1), (256, 128, 1), (256, 128, 2)] {
        let x = values(side * side * ch / (up * up), 1);
        let w = values(ch * ch * 9, 2);
        let bias = values(ch, 3);
        let s = Conv2dShape {
            batch: 1,
            height: side,
            width: side,
            c_in: ch,
            c_out: ch,
            kernel: 3,
            stride: 1,
            pad: [1; 4],
        };
        let mut out = vec![0.0; side * side * ch];
        let mut group = c.benchmark_group("conv3x3");
        group.throughput(Throughput::Elements((2 * side * side * ch * ch * 9) as u64));
        for (name, storage, compute) in [
            ("f32", Storage::F32, Compute::F32),
            ("bf16", Storage::Bf16, Compute::Bf16),
        ] {
            let tag = format!("{side}px_{ch}ch_up{up}");
            let direct = PackedMatrix::new(
                &patch_major_weight(&w, ch, ch, 3),
                ch,
                9 * ch,
                storage,
                compute,
            );
            let winograd = Winograd3x3::new(&w, ch, ch, compute);
            group.bench_function(format!("direct_{name}/{tag}"), |b| {
                b.iter(|| match up {
                    1 => conv2d(&x, &direct, Some(&bias), &s, &mut out),
                    _ => conv2d_upsampled_2x(&x, &direct, Some(&bias), &s, &mut out),
                })
            });
            group.bench_function(format!("winograd_{name}/{tag}"), |b| {
                b.iter(|| {
                    conv3x3(
                        &x,
                        up,
                        None,
                        &winograd,
                        Some(&bias),
                        (1, side, side),
                        &mut out,
                        false,
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = convs
}
criterion_main!(benches);
