//! The tensor-core GEMM under the emulator (mma.sync / ldmatrix / cp.async with the PTX
//! fragment layouts) vs kernels::cpu::matmul::linear on the same bf16-rounded inputs.
//!
//! Tolerances: f32 outputs differ only by f32 summation order: atol 1e-4 + rtol 1e-4 (inputs in
//! [-1, 1], |C| up to ~ 20). bf16 outputs add the output rounding: rtol 2^-8 (twice bf16's
//! half-ulp) plus the f32 accumulation: rtol 5e-3 + atol 1e-3.
#![cfg(feature = "emulate")]

mod common;
use common::*;
use muddit_kernels::cpu::{act, matmul::linear};
use muddit_kernels::cuda::{
    common::{Act, RowMap},
    gemm::{self, GemmOut, GemmParams},
};
use muddit_kernels::emu;

const F32_TOL: (f32, f32) = (1e-4, 1e-4);
const BF16_TOL: (f32, f32) = (1e-3, 5e-3);

struct Case {
    m: usize,
    n: usize,
    k: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    xb: Vec<u16>,
    wb: Vec<u16>,
}

impl Case {
    fn new(m: usize, n: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let x = round_bf16(&rng.vec(m * k, 1.0));
        let w = round_bf16(&rng.vec(n * k, 1.0));
        let bias = rng.vec(n, 0.5);
        let (xb, wb) = (to_bf16(&x), to_bf16(&w));
        Case {
            m,
            n,
            k,
            x,
            w,
            bias,
            xb,
            wb,
        }
    }

    /// `x · wᵀ + bias` in f32 on the CPU: `[M, N]`.
    fn reference(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.m * self.n];
        linear(
            &self.x,
            &self.w,
            Some(&self.bias),
            self.m,
            self.k,
            self.n,
            &mut out,
        );
        out
    }

    fn params(&self, c: u64) -> GemmParams {
        GemmParams {
            bias: addr(&self.bias),
            ..GemmParams::dense(addr(&self.xb), addr(&self.wb), c, self.m, self.n, self.k)
        }
    }
}

const SHAPES: [(usize, usize, usize); 6] = [
    (1, 100, 48),
    (77, 100, 64),
    (333, 100, 48),
    (333, 100, 64),
    (130, 257, 1024),
    (2, 136, 200),
];

#[test]
fn f32_output_matches_cpu_on_awkward_shapes() {
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        let case = Case::new(m, n, k, 10 + i as u64);
        let mut c = vec![f32::NAN; m * n];
        let launch = gemm::gemm(GemmOut::F32, case.params(addr_mut(&mut c))).unwrap();
        // SAFETY: x [M, K], w [N, K] bf16, bias [N] and c [M, N] f32 live through the call.
        unsafe { emu::run(&launch) };
        check(
            &format!("gemm f32 M {m} N {n} K {k}"),
            &c,
            &case.reference(),
            F32_TOL.0,
            F32_TOL.1,
        );
    }
}

#[test]
fn bf16_output_with_gelu_and_residual_matches_cpu() {
    for &(m, n, k) in &[(77, 100, 64), (333, 100, 48)] {
        let case = Case::new(m, n, k, 20);
        let res = round_bf16(&Rng::new(21).vec(m * n, 2.0));
        let resb = to_bf16(&res);
        let mut c = vec![0u16; m * n];
        // GELU-tanh epilogue.
        let mut p = case.params(addr_mut(&mut c));
        p.act = Act::GeluTanh as i32;
        // SAFETY: as in the f32 test; c holds M x N bf16.
        unsafe { emu::run(&gemm::gemm(GemmOut::Bf16, p).unwrap()) };
        let mut want = case.reference();
        act::gelu_tanh_(&mut want);
        check(
            &format!("gemm gelu M {m} N {n} K {k}"),
            &from_bf16(&c),
            &want,
            BF16_TOL.0,
            BF16_TOL.1,
        );
        // Plain epilogue plus a bf16 residual.
        p.act = Act::None as i32;
        p.res = addr(&resb);
        // SAFETY: as above; res holds M x N bf16.
        unsafe { emu::run(&gemm::gemm(GemmOut::Bf16, p).unwrap()) };
        let want: Vec<f32> = case
            .reference()
            .iter()
            .zip(&res)
            .map(|(y, r)| y + r)
            .collect();
        check(
            &format!("gemm + residual M {m} N {n} K {k}"),
            &from_bf16(&c),
            &want,
            BF16_TOL.0,
            BF16_TOL.1,
        );
    }
}

/// `x[b] += gate[b] * (A W^T + bias)` per batch item, the gate a chunk of `[B, 6D]` mods.
#[test]
fn gated_residual_matches_cpu() {
    let (batch, per_item, n, k) = (2, 77, 100, 64);
    let m = batch * per_item;
    let case = Case::new(m, n, k, 30);
    let mods = Rng::new(31).vec(batch * 6 * n, 1.0);
    let x0 = Rng::new(32).vec(m * n, 3.0);
    let mut x = x0.clone();
    let p = GemmParams {
        gate: addr(&mods[2 * n..]),
        rows_per_item: per_item as i32,
        gate_stride: (6 * n) as i32,
        ..case.params(addr_mut(&mut x))
    };
    // SAFETY: as above; x is the f32 [M, N] residual, mods [B, 6N] holds every gate row read.
    unsafe { emu::run(&gemm::gemm(GemmOut::Residual, p).unwrap()) };
    let y = case.reference();
    let mut want = x0;
    for (row, (wr, yr)) in want.chunks_mut(n).zip(y.chunks(n)).enumerate() {
        let gate = &mods[(row / per_item) * 6 * n + 2 * n..][..n];
        for ((w, &yv), &g) in wr.iter_mut().zip(yr).zip(gate) {
            *w += g * yv;
        }
    }
    check("gemm gated residual", &x, &want, F32_TOL.0, F32_TOL.1);
}

/// Reading the image part of a joint `[B, L + N, lda]` buffer and writing the text part of
/// another, with strides wider than the rows.
#[test]
fn row_maps_and_strides_address_parts_of_joint_buffers() {
    let (batch, text, image, n, k) = (2, 7, 45, 40, 48);
    let seq = text + image;
    let (lda, ldc) = (k + 16, n + 3);
    let mut rng = Rng::new(40);
    let joint = round_bf16(&rng.vec(batch * seq * lda, 1.0));
    let w = round_bf16(&rng.vec(n * k, 1.0));
    let (jb, wb) = (to_bf16(&joint), to_bf16(&w));
    let mut c = vec![0.0f32; batch * seq * ldc];
    let m = batch * image;
    let p = GemmParams {
        lda: lda as i32,
        ldc: ldc as i32,
        a_map: RowMap::part(image, seq, text),
        c_map: RowMap::part(image, seq, text),
        ..GemmParams::dense(addr(&jb), addr(&wb), addr_mut(&mut c), m, n, k)
    };
    // SAFETY: the maps keep every row inside [B * seq] rows of lda (A) and ldc (C) elements.
    unsafe { emu::run(&gemm::gemm(GemmOut::F32, p).unwrap()) };
    let rows: Vec<usize> = (0..m).map(|i| p.a_map.row(i)).collect();
    let x: Vec<f32> = rows
        .iter()
        .flat_map(|&r| joint[r * lda..r * lda + k].to_vec())
        .collect();
    let mut want = vec![0.0; m * n];
    linear(&x, &w, None, m, k, n, &mut want);
    let got: Vec<f32> = rows
        .iter()
        .flat_map(|&r| c[r * ldc..r * ldc + n].to_vec())
        .collect();
    check("gemm with row maps", &got, &want, F32_TOL.0, F32_TOL.1);
    // The text rows and the padding columns stay untouched.
    for b in 0..batch {
        for t in 0..text {
            assert!(c[(b * seq + t) * ldc..][..ldc].iter().all(|&v| v == 0.0));
        }
    }
    assert!(rows
        .iter()
        .all(|&r| c[r * ldc + n..(r + 1) * ldc].iter().all(|&v| v == 0.0)));
}

/// Runs `launches` (one GEMM, or split-K's two) in order.
///
/// # Safety
/// Every address in the launches' parameters must be live for the call.
unsafe fn run_all(launches: &[muddit_kernels::cuda::Launch<GemmParams>]) {
    for l in launches {
        // SAFETY: the caller's guarantee.
        unsafe { emu::run(l) };
    }
}

/// Split-K against the CPU, for every epilogue: K not a multiple of the slice (K = 200 in 3
/// slices of 96, 96 and 8), ragged M and N, a slice count the depth caps (12 steps asked 5
/// ways: 4 slices of 3), and row maps on A and C.
#[test]
fn split_k_matches_cpu_for_every_epilogue() {
    for &(m, n, k, splits, want_launches) in &[
        (130, 257, 1024, 3, 2),
        (77, 100, 200, 3, 2),
        (333, 136, 384, 5, 2),
        (2, 40, 64, 1, 1),
    ] {
        let case = Case::new(m, n, k, 50 + k as u64);
        let mut partial = vec![f32::NAN; gemm::split_k_scratch(m, n, k, splits).max(1)];
        let partial_addr = addr_mut(&mut partial);
        let with_partial = |p: GemmParams| GemmParams {
            partial: partial_addr,
            ..p
        };
        let mut c = vec![f32::NAN; m * n];
        let launches = gemm::gemm_split(
            GemmOut::F32,
            with_partial(case.params(addr_mut(&mut c))),
            splits,
        )
        .unwrap();
        assert_eq!(
            launches.len(),
            want_launches,
            "M {m} N {n} K {k} / {splits}"
        );
        // SAFETY: x, w, bias, c and the partials (split_k_scratch elements) outlive the call.
        unsafe { run_all(&launches) };
        let reference = case.reference();
        let name = format!("split-K f32 M {m} N {n} K {k} / {splits}");
        check(&name, &c, &reference, F32_TOL.0, F32_TOL.1);

        // bf16 output: GELU, then a bf16 residual.
        let res = round_bf16(&Rng::new(51).vec(m * n, 2.0));
        let resb = to_bf16(&res);
        let mut cb = vec![0u16; m * n];
        let mut p = with_partial(case.params(addr_mut(&mut cb)));
        p.act = Act::GeluTanh as i32;
        p.res = addr(&resb);
        // SAFETY: as above; res and cb hold M x N bf16.
        unsafe { run_all(&gemm::gemm_split(GemmOut::Bf16, p, splits).unwrap()) };
        let mut want = reference.clone();
        act::gelu_tanh_(&mut want);
        want.iter_mut().zip(&res).for_each(|(w, r)| *w += r);
        let name = format!("split-K gelu + residual M {m} N {n} K {k} / {splits}");
        check(&name, &from_bf16(&cb), &want, BF16_TOL.0, BF16_TOL.1);

        // Gated f32 residual, two items of rows.
        let per_item = m.div_ceil(2);
        let mods = Rng::new(52).vec(2 * 3 * n, 1.0);
        let x0 = Rng::new(53).vec(m * n, 3.0);
        let mut x = x0.clone();
        let p = GemmParams {
            gate: addr(&mods[n..]),
            rows_per_item: per_item as i32,
            gate_stride: (3 * n) as i32,
            ..with_partial(case.params(addr_mut(&mut x)))
        };
        // SAFETY: as above; mods [2, 3N] holds every gate row read.
        unsafe { run_all(&gemm::gemm_split(GemmOut::Residual, p, splits).unwrap()) };
        let mut want = x0;
        for (row, (wr, yr)) in want.chunks_mut(n).zip(reference.chunks(n)).enumerate() {
            let gate = &mods[(row / per_item) * 3 * n + n..][..n];
            for ((w, &yv), &g) in wr.iter_mut().zip(yr).zip(gate) {
                *w += g * yv;
            }
        }
        let name = format!("split-K gated residual M {m} N {n} K {k} / {splits}");
        check(&name, &x, &want, F32_TOL.0, F32_TOL.1);
    }
}

/// Split-K through row maps: the image rows of a joint buffer in, the same rows out.
#[test]
fn split_k_follows_row_maps() {
    let (batch, text, image, n, k) = (2, 7, 45, 40, 320);
    let seq = text + image;
    let mut rng = Rng::new(60);
    let joint = round_bf16(&rng.vec(batch * seq * k, 1.0));
    let w = round_bf16(&rng.vec(n * k, 1.0));
    let (jb, wb) = (to_bf16(&joint), to_bf16(&w));
    let m = batch * image;
    let mut partial = vec![f32::NAN; gemm::split_k_scratch(m, n, k, 4)];
    let mut c = vec![0.0f32; batch * seq * n];
    let p = GemmParams {
        a_map: RowMap::part(image, seq, text),
        c_map: RowMap::part(image, seq, text),
        partial: addr_mut(&mut partial),
        ..GemmParams::dense(addr(&jb), addr(&wb), addr_mut(&mut c), m, n, k)
    };
    let launches = gemm::gemm_split(GemmOut::F32, p, 4).unwrap();
    assert_eq!(launches[0].grid[2], 4, "four K slices of 96, 96, 96 and 32");
    // SAFETY: the maps keep every row inside [B * seq] rows; the partials hold 4 * M * N.
    unsafe { run_all(&launches) };
    let rows: Vec<usize> = (0..m).map(|i| p.a_map.row(i)).collect();
    let x: Vec<f32> = rows
        .iter()
        .flat_map(|&r| joint[r * k..(r + 1) * k].to_vec())
        .collect();
    let mut want = vec![0.0; m * n];
    linear(&x, &w, None, m, k, n, &mut want);
    let got: Vec<f32> = rows
        .iter()
        .flat_map(|&r| c[r * n..(r + 1) * n].to_vec())
        .collect();
    check("split-K with row maps", &got, &want, F32_TOL.0, F32_TOL.1);
    for b in 0..batch {
        for t in 0..text {
            assert!(c[(b * seq + t) * n..][..n].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn split_k_without_a_partial_buffer_is_an_error() {
    let p = GemmParams::dense(16, 16, 16, 4, 4, 512);
    let err = gemm::gemm_split(GemmOut::F32, p, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("partial-sum buffer"), "{err}");
}

#[test]
fn shape_errors_are_reported() {
    let bad = GemmParams::dense(0, 0, 0, 4, 4, 12);
    let err = gemm::gemm(GemmOut::F32, bad).unwrap_err().to_string();
    assert!(err.contains("multiple of 8"), "{err}");
}

#[test]
fn parameter_struct_matches_its_c_mirror() {
    for name in [
        "gemm_bf16",
        "gemm_f32out_bf16",
        "gemm_residual_bf16",
        "conv2d_bf16",
        "gemm_splitk_bf16",
        "gemm_splitk_f32out",
        "gemm_splitk_residual",
    ] {
        assert_eq!(
            emu::params_size(name),
            Some(std::mem::size_of::<GemmParams>()),
            "{name}"
        );
    }
}
