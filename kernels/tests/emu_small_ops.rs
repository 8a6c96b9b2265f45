//! qk-norm + rotary positions, embeddings, activations, guidance and the sinusoidal embedding
//! under the emulator vs the CPU ops. bf16 outputs: atol 1e-3 + rtol 2^-8 (output rounding); f32
//! outputs of transcendental functions: atol 1e-6 + rtol 1e-5 (device libm vs Rust's).
#![cfg(feature = "emulate")]

mod common;
use common::*;
use muddit_kernels::cpu::{act, norm, rope};
use muddit_kernels::cuda::{
    common::{Act, RowMap},
    elementwise::{self, ActParams, EmbeddingParams, GuideParams, SinEmbedParams},
    rope::QkNormRopeParams,
};
use muddit_kernels::emu;

#[test]
fn qk_norm_rope_on_the_image_part_of_a_joint_buffer() {
    let (batch, text, rows, cols, heads) = (2, 7, 5, 6, 2);
    for dh in [64usize, 128] {
        let axes = if dh == 128 { [16, 56, 56] } else { [8, 28, 28] };
        let image = rows * cols;
        let seq = text + image;
        let stride = heads * dh + 8;
        let mut rng = Rng::new(dh as u64);
        let x = round_bf16(&rng.vec(batch * seq * stride, 2.0));
        let mut xb = to_bf16(&x);
        let w = rng.vec(dh, 1.0);
        let ids: Vec<[f64; 3]> = (0..seq)
            .map(|s| match s < text {
                true => [0.0; 3],
                false => [0.0, ((s - text) / cols) as f64, ((s - text) % cols) as f64],
            })
            .collect();
        let (cos, sin) = rope::rope_tables(&ids, &axes);
        let map = RowMap::part(image, seq, text);
        let p = QkNormRopeParams {
            x: addr(&xb),
            out: addr_mut(&mut xb),
            weight: addr(&w),
            cos: addr(&cos),
            sin: addr(&sin),
            rows: (batch * image) as i32,
            heads: heads as i32,
            head_dim: dh as i32,
            seq: seq as i32,
            x_stride: stride as i32,
            out_stride: stride as i32,
            map,
            eps: 1e-6,
            pad_: 0,
        };
        // SAFETY: every mapped row lies in x ([B * seq] rows of `stride`), in place; the tables
        // hold seq * dh floats.
        unsafe { emu::run(&muddit_kernels::cuda::rope::qk_norm_rope(p).unwrap()) };
        let (mut got, mut want) = (vec![], vec![]);
        for m in 0..batch * image {
            let r = map.row(m);
            let mut v = x[r * stride..r * stride + heads * dh].to_vec(); // [H, Dh]
            norm::rms_norm_(&mut v, &w, 1e-6);
            let pos = r % seq;
            rope::apply_rope_(
                &mut v,
                &cos[pos * dh..(pos + 1) * dh],
                &sin[pos * dh..(pos + 1) * dh],
                heads,
                dh,
            );
            want.extend(v);
            got.extend(from_bf16(&xb[r * stride..r * stride + heads * dh]));
        }
        check(
            &format!("qk_norm_rope Dh {dh}"),
            &got,
            &want,
            1e-3,
            1.0 / 256.0,
        );
        // The text rows are untouched.
        for b in 0..batch {
            let r = b * seq * stride..(b * seq + text) * stride;
            assert_eq!(from_bf16(&xb[r.clone()]), x[r]);
        }
    }
}

#[test]
fn embedding_with_positions_into_f32() {
    let (vocab, d, seq, batch) = (50, 24, 7, 3);
    let mut rng = Rng::new(3);
    let table = round_bf16(&rng.vec(vocab * d, 1.0));
    let pos = round_bf16(&rng.vec(seq * d, 1.0));
    let ids: Vec<i32> = (0..batch * seq)
        .map(|i| ((i * 13) % vocab) as i32)
        .collect();
    let (tb, pb) = (to_bf16(&table), to_bf16(&pos));
    let mut out = vec![0.0f32; batch * seq * d];
    let p = EmbeddingParams {
        ids: addr(&ids),
        table: addr(&tb),
        pos: addr(&pb),
        out: addr_mut(&mut out),
        rows: (batch * seq) as i32,
        d: d as i32,
        seq: seq as i32,
        out_f32: 1,
    };
    // SAFETY: ids are below vocab; the tables and out hold the rows read and written.
    unsafe { emu::run(&elementwise::embedding(p).unwrap()) };
    for (r, &id) in ids.iter().enumerate() {
        for c in 0..d {
            let want = table[id as usize * d + c] + pos[(r % seq) * d + c];
            assert_eq!(out[r * d + c], want);
        }
    }
}

/// `guide_bf16`: `u + g (c - u)` of the halves of a bf16 `[u; c]`, against the same in f32
/// rounded once; odd lengths, a scale below 1 and a large one.
#[test]
fn guidance_matches_cpu() {
    for (n, scale) in [(1usize, 9.0f32), (1001, 0.5), (4096, 3.0)] {
        let x = round_bf16(&Rng::new(n as u64).vec(2 * n, 4.0));
        let xb = to_bf16(&x);
        let mut out = to_bf16(&vec![0.0; n]);
        let p = GuideParams {
            x: addr(&xb),
            out: addr_mut(&mut out),
            n: n as i64,
            scale,
            pad_: 0,
        };
        // SAFETY: xb holds 2n bf16 values, out n.
        unsafe { emu::run(&elementwise::guide(p).unwrap()) };
        let (u, c) = x.split_at(n);
        let want: Vec<f32> = u.iter().zip(c).map(|(u, c)| u + scale * (c - u)).collect();
        check(
            &format!("guide n {n} scale {scale}"),
            &from_bf16(&out),
            &want,
            1e-3,
            1.0 / 256.0,
        );
    }
    let bad = GuideParams {
        scale: f32::NAN,
        ..GuideParams::default()
    };
    assert!(elementwise::guide(bad).is_err());
}

#[test]
fn activations_match_cpu() {
    let x = Rng::new(4).vec(1000, 6.0);
    let cases: [(Act, fn(&mut [f32])); 4] = [
        (Act::Silu, act::silu_),
        (Act::GeluTanh, act::gelu_tanh_),
        (Act::GeluErf, act::gelu_erf_),
        (Act::QuickGelu, act::quick_gelu_),
    ];
    for (a, cpu) in cases {
        let mut want = x.clone();
        cpu(&mut want);
        let mut y = vec![0.0f32; x.len()];
        let p = ActParams {
            x: addr(&x),
            y: addr_mut(&mut y),
            n: x.len() as i64,
            act: a as i32,
            x_f32: 1,
            y_f32: 1,
            pad_: 0,
        };
        // SAFETY: x and y hold n floats.
        unsafe { emu::run(&elementwise::activation(p).unwrap()) };
        check(&format!("{a:?} f32"), &y, &want, 1e-6, 1e-5);
        // bf16 in place.
        let xr = round_bf16(&x);
        let mut xb = to_bf16(&xr);
        let p = ActParams {
            x: addr(&xb),
            y: addr_mut(&mut xb),
            x_f32: 0,
            y_f32: 0,
            ..p
        };
        // SAFETY: xb holds n bf16, read and written in place element by element.
        unsafe { emu::run(&elementwise::activation(p).unwrap()) };
        let mut want = xr;
        cpu(&mut want);
        check(
            &format!("{a:?} bf16"),
            &from_bf16(&xb),
            &want,
            1e-3,
            1.0 / 256.0,
        );
    }
}

/// The diffusers embedding as engine::nn::sinusoidal_embedding computes it, in f32.
fn sinusoidal(xs: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::new();
    for &x in xs {
        out.extend(freqs.iter().map(|f| (x * f).cos()));
        out.extend(freqs.iter().map(|f| (x * f).sin()));
    }
    out
}

#[test]
fn sinusoidal_embedding_matches_cpu() {
    let x = [0.0f32, 0.75, 0.03125, 1.0];
    let mut out = vec![0.0f32; 4 * 256];
    let p = SinEmbedParams {
        x: addr(&x),
        out: addr_mut(&mut out),
        rows: 4,
        half: 128,
        out_stride: 256,
        scale: 1000.0,
    };
    // SAFETY: x holds 4 floats, out 4 * 256.
    unsafe { emu::run(&elementwise::sin_embed(p).unwrap()) };
    let scaled: Vec<f32> = x.iter().map(|v| v * 1000.0).collect();
    // Angles reach 1000 rad: an ulp of the angle moves the result by ~ 6e-5.
    check("sin_embed", &out, &sinusoidal(&scaled, 256), 2e-4, 1e-5);
}
