//! Flash attention under the emulator vs kernels::cpu::attention on the same bf16-rounded
//! q, k, v. Differences: f32 online softmax vs the CPU's f64 row sums, the probabilities
//! rounded to bf16 before P·V, and the bf16 output. Tolerance atol 4e-3 + rtol 2^-7 (outputs
//! are convex combinations of values in [-2, 2]).
#![cfg(feature = "emulate")]

mod common;
use common::*;
use muddit_kernels::cpu::attention::{attention, AttnShape};
use muddit_kernels::cuda::attention::{self, AttnParams};
use muddit_kernels::emu;

const ATOL: f32 = 4e-3;
const RTOL: f32 = 1.0 / 128.0;

/// Attention over `q`, `k`, `v` (bf16 rows of `stride` elements, each `heads` heads wide) into
/// `o` (rows of `o_stride`), `batch` sequences of `seq`, not causal.
fn params(
    (q, k, v): (&[u16], &[u16], &[u16]),
    (o, o_stride): (&mut [u16], usize),
    (batch, seq, heads): (usize, usize, usize),
    stride: usize,
) -> AttnParams {
    AttnParams {
        q: addr(q),
        k: addr(k),
        v: addr(v),
        o: addr_mut(o),
        batch: batch as i32,
        seq: seq as i32,
        heads: heads as i32,
        q_stride: stride as i32,
        k_stride: stride as i32,
        v_stride: stride as i32,
        o_stride: o_stride as i32,
        ..AttnParams::default()
    }
}

fn run_case(b: usize, s: usize, h: usize, dh: usize, causal: bool, seed: u64) {
    let n = b * s * h * dh;
    let mut rng = Rng::new(seed);
    // Larger q and k make the softmax peaky (the harder case for the online rescaling).
    let q = round_bf16(&rng.vec(n, 2.0));
    let k = round_bf16(&rng.vec(n, 2.0));
    let v = round_bf16(&rng.vec(n, 2.0));
    let (qb, kb, vb) = (to_bf16(&q), to_bf16(&k), to_bf16(&v));
    let mut o = vec![0u16; n];
    let width = h * dh;
    let p = AttnParams {
        causal: causal as i32,
        ..params((&qb, &kb, &vb), (&mut o, width), (b, s, h), width)
    };
    let launch = attention::attention(dh, p).unwrap();
    // SAFETY: q, k, v, o each hold B * S * H * Dh bf16 and live through the call.
    unsafe { emu::run(&launch) };
    let want = reference(&q, &k, &v, (b, s, h, dh), causal);
    let what = format!("attention B {b} S {s} H {h} Dh {dh} causal {causal}");
    check(&what, &from_bf16(&o), &want, ATOL, RTOL);
}

/// The CPU attention over `q, k, v [B, S, H, Dh]`: the reference.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, s, h, dh): (usize, usize, usize, usize),
    causal: bool,
) -> Vec<f32> {
    let shape = AttnShape::new(b, s, h, dh, causal);
    let mut want = vec![0.0; q.len()];
    attention(q, k, v, shape, &mut want);
    want
}

#[test]
fn non_causal_matches_cpu() {
    run_case(1, 1, 1, 64, false, 1);
    run_case(2, 77, 2, 64, false, 2);
    run_case(1, 333, 2, 128, false, 3);
}

#[test]
fn causal_matches_cpu() {
    run_case(2, 77, 2, 64, true, 4);
    run_case(1, 130, 1, 128, true, 5);
}

/// q, k and v as slices of one fused `[B, S, 3, H, Dh]` buffer, the output into a wider one.
#[test]
fn fused_qkv_strides() {
    let (b, s, h, dh) = (2, 70, 2, 64);
    let width = h * dh;
    let mut rng = Rng::new(9);
    let qkv = round_bf16(&rng.vec(b * s * 3 * width, 2.0));
    let qkvb = to_bf16(&qkv);
    let o_stride = width + 8;
    let mut o = vec![0u16; b * s * o_stride];
    let p = params(
        (&qkvb, &qkvb[width..], &qkvb[2 * width..]),
        (&mut o, o_stride),
        (b, s, h),
        3 * width,
    );
    // SAFETY: every row read lies in qkv ([B * S] rows of 3 * width), every row written in o.
    unsafe { emu::run(&attention::attention(dh, p).unwrap()) };
    let part = |i: usize| -> Vec<f32> {
        qkv.chunks(3 * width)
            .flat_map(|r| r[i * width..(i + 1) * width].to_vec())
            .collect()
    };
    let want = reference(&part(0), &part(1), &part(2), (b, s, h, dh), false);
    let got: Vec<f32> = o
        .chunks(o_stride)
        .flat_map(|r| from_bf16(&r[..width]))
        .collect();
    check("attention fused qkv", &got, &want, ATOL, RTOL);
    assert!(o
        .chunks(o_stride)
        .all(|r| r[width..].iter().all(|&x| x == 0)));
}

#[test]
fn unsupported_head_dim_is_an_error() {
    let err = attention::attention(96, AttnParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("head dim 96"), "{err}");
}

/// Heads of 16 and 32 values zero-padded to 64 (`attention::attention_padded`): the same result as
/// unpadded attention over the true head width, and zeros in the padding of the output.
#[test]
fn narrow_heads_padded_to_64_match_cpu() {
    for (dh, seed) in [(16, 11), (32, 12)] {
        let (b, s, h, dp) = (2, 101, 2, 64);
        let n = b * s * h * dh;
        let mut rng = Rng::new(seed);
        let q = round_bf16(&rng.vec(n, 2.0));
        let k = round_bf16(&rng.vec(n, 2.0));
        let v = round_bf16(&rng.vec(n, 2.0));
        let pad = |x: &[f32]| -> Vec<u16> {
            let mut out = vec![0u16; b * s * h * dp];
            for (i, head) in x.chunks(dh).enumerate() {
                out[i * dp..i * dp + dh].copy_from_slice(&to_bf16(head));
            }
            out
        };
        let (qb, kb, vb) = (pad(&q), pad(&k), pad(&v));
        let mut o = vec![0xFFFFu16; b * s * h * dp];
        let width = h * dp;
        let p = params((&qb, &kb, &vb), (&mut o, width), (b, s, h), width);
        let launch = attention::attention_padded(dp, dh, p).unwrap();
        // SAFETY: q, k, v, o each hold B * S * H * 64 bf16 and live through the call.
        unsafe { emu::run(&launch) };
        let want = reference(&q, &k, &v, (b, s, h, dh), false);
        let got: Vec<f32> = o.chunks(dp).flat_map(|r| from_bf16(&r[..dh])).collect();
        check(
            &format!("attention Dh {dh} padded to 64"),
            &got,
            &want,
            ATOL,
            RTOL,
        );
        assert!(o.chunks(dp).all(|r| r[dh..].iter().all(|&x| x == 0)));
    }
    assert!(attention::attention_padded(64, 65, AttnParams::default()).is_err());
}
