//! RMSNorm and LayerNorm (+ modulation, affine, plain) under the emulator vs kernels::cpu::norm.
//! Inputs are rounded to bf16 first where the kernel reads bf16, so the only differences are
//! f32 vs f64 sums and the bf16 rounding of the output: tolerance rtol 2^-8 (twice bf16's
//! half-ulp) + atol 1e-3.
#![cfg(feature = "emulate")]

mod common;
use common::*;
use muddit_kernels::cpu::norm;
use muddit_kernels::cuda::norm::{layer_norm, rms_norm, LayerNormParams, RmsNormParams};
use muddit_kernels::emu;

const RTOL: f32 = 1.0 / 256.0;
const ATOL: f32 = 1e-3;

#[test]
fn rms_norm_matches_cpu() {
    let mut rng = Rng::new(1);
    for &(rows, d, stride) in &[(1, 64, 64), (77, 100, 128), (333, 1024, 1024), (5, 33, 40)] {
        let x = round_bf16(&rng.vec(rows * stride, 3.0));
        let w = rng.vec(d, 1.5);
        let xb = to_bf16(&x);
        let mut out = vec![0u16; rows * d];
        let launch = rms_norm(RmsNormParams {
            x: addr(&xb),
            out: addr_mut(&mut out),
            weight: addr(&w),
            rows: rows as i32,
            d: d as i32,
            x_stride: stride as i32,
            out_stride: d as i32,
            eps: 1e-6,
            pad_: 0,
        })
        .unwrap();
        // SAFETY: x holds rows * stride bf16, out rows * d, w d floats, all alive for the call.
        unsafe { emu::run(&launch) };
        let mut want: Vec<f32> = x.chunks(stride).flat_map(|r| r[..d].to_vec()).collect();
        norm::rms_norm_(&mut want, &w, 1e-6);
        check(
            &format!("rms_norm rows {rows} d {d}"),
            &from_bf16(&out),
            &want,
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn layer_norm_modulate_affine_and_plain_match_cpu() {
    let mut rng = Rng::new(2);
    for &(batch, per_item, d) in &[(1, 1, 64), (2, 77, 100), (2, 333, 1024)] {
        let rows = batch * per_item;
        let x: Vec<f32> = rng.vec(rows * d, 4.0).iter().map(|v| v + 2.0).collect();
        let chunks = 6;
        let mods = rng.vec(batch * chunks * d, 1.0); // [B, 6D]
        let (shift_at, scale_at) = (3, 4);
        // Modulation.
        let mut out = vec![0u16; rows * d];
        let mut p = LayerNormParams {
            x: addr(&x),
            out: addr_mut(&mut out),
            scale: addr(&mods[scale_at * d..]),
            shift: addr(&mods[shift_at * d..]),
            rows: rows as i32,
            d: d as i32,
            x_stride: d as i32,
            out_stride: d as i32,
            rows_per_item: per_item as i32,
            item_stride: (chunks * d) as i32,
            scale_add: 1.0,
            eps: 1e-6,
        };
        // SAFETY: x and out hold rows * d elements; mods holds B * 6D floats, so the scale and
        // shift rows of every item lie inside it.
        unsafe { emu::run(&layer_norm(p).unwrap()) };
        let mut want = vec![0.0; rows * d];
        for b in 0..batch {
            let m = &mods[b * chunks * d..(b + 1) * chunks * d];
            let r = b * per_item * d..(b + 1) * per_item * d;
            norm::layer_norm_modulate(
                &x[r.clone()],
                &m[shift_at * d..(shift_at + 1) * d],
                &m[scale_at * d..(scale_at + 1) * d],
                1e-6,
                &mut want[r],
            );
        }
        check(
            &format!("layer_norm modulate B {batch} rows {per_item} d {d}"),
            &from_bf16(&out),
            &want,
            ATOL,
            RTOL,
        );
        // Affine weights (CLIP): scale_add 0, one weight and bias for all rows.
        let (w, bias) = (rng.vec(d, 1.0), rng.vec(d, 0.5));
        p.scale = addr(&w);
        p.shift = addr(&bias);
        p.item_stride = 0;
        p.scale_add = 0.0;
        // SAFETY: as above; w and bias hold d floats.
        unsafe { emu::run(&layer_norm(p).unwrap()) };
        let mut want = x.clone();
        norm::layer_norm_(&mut want, d, 1e-6);
        for row in want.chunks_mut(d) {
            for ((v, &wi), &bi) in row.iter_mut().zip(&w).zip(&bias) {
                *v = *v * wi + bi;
            }
        }
        check(
            &format!("layer_norm affine rows {rows} d {d}"),
            &from_bf16(&out),
            &want,
            ATOL,
            RTOL,
        );
        // Plain (the text head).
        p.scale = 0;
        p.shift = 0;
        p.scale_add = 1.0;
        // SAFETY: as above; null scale and shift are never read.
        unsafe { emu::run(&layer_norm(p).unwrap()) };
        let mut want = x.clone();
        norm::layer_norm_(&mut want, d, 1e-6);
        check(
            &format!("layer_norm plain rows {rows} d {d}"),
            &from_bf16(&out),
            &want,
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn parameter_structs_match_their_c_mirrors() {
    use std::mem::size_of;
    assert_eq!(
        emu::params_size("rms_norm_bf16"),
        Some(size_of::<RmsNormParams>())
    );
    assert_eq!(
        emu::params_size("layer_norm_f32"),
        Some(size_of::<LayerNormParams>())
    );
}
