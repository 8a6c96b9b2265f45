//! `gemm.cu`: bf16 matrix products with fused epilogues, split-K, and convolutions as implicit
//! GEMMs. The parameter structs, the launch plans ([`gemm`], [`gemm_split`], [`conv2d`],
//! [`split_k`]) and the runners on a [`Device`] ([`Device::gemm`], [`Device::conv2d`],
//! over a [`Conv`] geometry).

use super::common::{Act, RowMap};
use super::device::{Device, Ptr};
use super::launch::{ensure, grid_1d, mapped_span, span, Launch};
use super::nvrtc::Module;
use super::{CudaError, Result};

/// Convolution geometry of `conv2d_bf16` (gemm.cu): image `[B, h, w, c]`, output `[B, ho, wo, N]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvGeom {
    pub h: i32,
    pub w: i32,
    pub c: i32,
    pub ho: i32,
    pub wo: i32,
    pub ksize: i32,
    pub stride: i32,
    pub pad_t: i32,
    pub pad_l: i32,
    pub pad_: i32,
}

impl ConvGeom {
    /// Image `(h, w, c)` to output `(ho, wo)` by a `ksize` kernel at `stride`, `pad` zeros
    /// above and left.
    pub fn new(
        (h, w, c): (usize, usize, usize),
        (ho, wo): (usize, usize),
        ksize: usize,
        stride: usize,
        pad: usize,
    ) -> ConvGeom {
        let [h, w, c, ho, wo, ksize, stride, pad] =
            [h, w, c, ho, wo, ksize, stride, pad].map(|v| v as i32);
        #[rustfmt::skip]
        let geom = ConvGeom { h, w, c, ho, wo, ksize, stride, pad_t: pad, pad_l: pad, pad_: 0 };
        geom
    }
}

/// The GEMM kernels and `conv2d_bf16` (gemm.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmParams {
    pub a: u64,
    pub w: u64,
    pub bias: u64,
    pub c: u64,
    pub gate: u64,
    pub res: u64,
    /// Split-K: f32 `[splits, M, N]` partial sums (see [`gemm_split`]), or 0.
    pub partial: u64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldc: i32,
    pub act: i32,
    pub rows_per_item: i32,
    pub gate_stride: i32,
    /// K slices and K elements per slice: filled in by [`gemm`] / [`gemm_split`].
    pub splits: i32,
    pub k_split: i32,
    pub a_map: RowMap,
    pub c_map: RowMap,
    pub conv: ConvGeom,
}

impl GemmParams {
    /// `C[M, N] = A[M, K] · W[N, K]ᵀ` with dense rows (`lda = K`, `ldc = N`), no bias.
    pub fn dense(a: u64, w: u64, c: u64, m: usize, n: usize, k: usize) -> Self {
        Self {
            a,
            w,
            c,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            lda: k as i32,
            ldc: n as i32,
            rows_per_item: i32::MAX,
            ..Self::default()
        }
    }
}

device_repr!(GemmParams);

/// The epilogue of a GEMM (see gemm.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmOut {
    /// C bf16 = act(acc + bias) (+ res).
    Bf16,
    /// C f32 = act(acc + bias).
    F32,
    /// C f32 += gate * (acc + bias).
    Residual,
}

/// Rows and columns of one GEMM tile, and the dynamic shared memory of the pipeline.
pub const GEMM_TILE: usize = 128;
const GEMM_SMEM: u32 = 3 * (128 + 128) * 40 * 2;
const GEMM_THREADS: u32 = 256;

fn check_gemm(op: &'static str, p: &GemmParams) -> Result<()> {
    ensure(p.m >= 0 && p.n > 0 && p.k > 0, op, || {
        format!("M {} N {} K {}", p.m, p.n, p.k)
    })?;
    ensure(p.k % 8 == 0, op, || {
        format!("K {} is not a multiple of 8", p.k)
    })?;
    ensure(p.ldc >= p.n, op, || {
        format!("ldc {} below N {}", p.ldc, p.n)
    })?;
    ensure(p.w % 16 == 0 && p.a % 16 == 0, op, || {
        "A and W must be 16-byte aligned".into()
    })?;
    for (what, map) in [("a_map", p.a_map), ("c_map", p.c_map)] {
        ensure(
            map.per > 0 && map.stride >= 0 && map.offset >= 0,
            op,
            || format!("{what} {map:?}"),
        )?;
    }
    ensure(p.rows_per_item > 0, op, || {
        "rows_per_item must be positive".into()
    })?;
    Ok(())
}

fn gemm_grid(op: &'static str, m: i32, n: i32) -> Result<[u32; 3]> {
    let (gm, gn) = (
        (m as usize).div_ceil(GEMM_TILE),
        (n as usize).div_ceil(GEMM_TILE),
    );
    ensure(gm < 65536, op, || {
        format!("M {m} needs {gm} row tiles (at most 65535)")
    })?;
    Ok([gn as u32, gm.max(1) as u32, 1])
}

/// `C = epilogue(A · Wᵀ)`: A bf16 `[M, K]`, W bf16 `[N, K]`, K a multiple of 8, `lda` a
/// multiple of 8 (16-byte rows); one launch, the whole K per block.
pub fn gemm(out: GemmOut, mut p: GemmParams) -> Result<Launch<GemmParams>> {
    const OP: &str = "gemm";
    check_gemm(OP, &p)?;
    ensure(p.lda >= p.k && p.lda % 8 == 0, OP, || {
        format!("lda {} must be >= K {} and a multiple of 8", p.lda, p.k)
    })?;
    ensure(out == GemmOut::Bf16 || p.res == 0, OP, || {
        "a bf16 residual needs the bf16 epilogue".into()
    })?;
    p.splits = 1;
    p.k_split = (p.k as usize).next_multiple_of(GEMM_BK) as i32;
    p.partial = 0;
    Ok(Launch {
        module: Module::Gemm,
        kernel: match out {
            GemmOut::Bf16 => "gemm_bf16",
            GemmOut::F32 => "gemm_f32out_bf16",
            GemmOut::Residual => "gemm_residual_bf16",
        },
        grid: gemm_grid(OP, p.m, p.n)?,
        block: [GEMM_THREADS, 1, 1],
        smem: GEMM_SMEM,
        params: p,
    })
}

/// K elements per pipeline slice of the GEMM kernels.
const GEMM_BK: usize = 32;
/// At most this many K slices in a split-K GEMM.
pub const MAX_SPLITS: usize = 8;
/// The shallowest K slice split-K makes (8 pipeline steps: enough to hide the loads).
const MIN_SPLIT_DEPTH: usize = 8 * GEMM_BK;

/// Tensor-core flops per byte of memory traffic at which a GEMM slot and the bandwidth are
/// equally busy: an H100 SXM at the efficiencies of ROOFLINE.md (55% of 989 TFLOP/s over 75%
/// of 3.35 TB/s).
const FLOPS_PER_BYTE: f64 = 220.0;

/// The K slices an `m x n x k` GEMM should be cut into on a device with `slots` resident GEMM
/// blocks (2 per SM): the count in 1..=[`MAX_SPLITS`], each slice at least 256 deep, with the
/// least modelled time: the busiest slot's waves (`ceil(tiles * s / slots)`) of `ceil(k / s)`
/// deep tiles, plus, when split, the partial sums written and read back (8 bytes per slice
/// and element) at [`FLOPS_PER_BYTE`].
pub fn split_k(m: usize, n: usize, k: usize, slots: usize) -> usize {
    let tiles = m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE);
    let slots = slots.max(1);
    let cost = |s: usize| {
        let (count, depth) = slices(k, s);
        let waves = (tiles * count).div_ceil(slots);
        let flops = (waves * slots * 2 * GEMM_TILE * GEMM_TILE * depth) as f64;
        let bytes = if count > 1 { 8 * count * m * n } else { 0 };
        flops + bytes as f64 * FLOPS_PER_BYTE
    };
    let mut best = 1;
    for s in 2..=MAX_SPLITS {
        if slices(k, s).1 < MIN_SPLIT_DEPTH {
            break;
        }
        if cost(s) < cost(best) {
            best = s;
        }
    }
    best
}

/// `(slices, K elements per slice)` of a GEMM of depth `k` asked to split `splits` ways: the
/// slices are whole pipeline steps, so fewer than asked may come out.
fn slices(k: usize, splits: usize) -> (usize, usize) {
    let steps = k.div_ceil(GEMM_BK);
    let per = steps.div_ceil(splits.clamp(1, steps.max(1)));
    (steps.div_ceil(per), per * GEMM_BK)
}

/// f32 elements of the partial sums an `m x n x k` GEMM split `splits` ways writes.
pub fn split_k_scratch(m: usize, n: usize, k: usize, splits: usize) -> usize {
    match slices(k, splits).0 {
        1 => 0,
        s => s * m * n,
    }
}

/// [`gemm`] with K cut into `splits` slices (see gemm.cu, "Split-K"): one launch when it comes
/// out as one slice, else the partial products into `p.partial` (f32, at least
/// [`split_k_scratch`] elements, the caller's check) and the reduction with the epilogue.
pub fn gemm_split(out: GemmOut, p: GemmParams, splits: usize) -> Result<Vec<Launch<GemmParams>>> {
    const OP: &str = "gemm_split";
    let mut first = gemm(out, p)?;
    let (count, k_split) = slices(p.k as usize, splits);
    if count == 1 {
        return Ok(vec![first]);
    }
    ensure(p.partial != 0 && p.partial % 4 == 0, OP, || {
        "split-K needs an f32 partial-sum buffer".into()
    })?;
    ensure(count <= MAX_SPLITS, OP, || {
        format!("{count} K slices (at most {MAX_SPLITS})")
    })?;
    first.params.partial = p.partial;
    first.params.splits = count as i32;
    first.params.k_split = k_split as i32;
    first.grid[2] = count as u32;
    let elems = p.m as usize * p.n as usize;
    let reduce = Launch {
        module: Module::Gemm,
        kernel: match out {
            GemmOut::Bf16 => "gemm_splitk_bf16",
            GemmOut::F32 => "gemm_splitk_f32out",
            GemmOut::Residual => "gemm_splitk_residual",
        },
        grid: grid_1d(OP, elems.div_ceil(SPLITK_THREADS as usize).min(65535))?,
        block: [SPLITK_THREADS, 1, 1],
        smem: 0,
        params: first.params,
    };
    Ok(vec![first, reduce])
}

/// Threads per block of the split-K reduction.
const SPLITK_THREADS: u32 = 256;

/// 2-D convolution as an implicit GEMM: image bf16 `[B, h, w, c]` (`c % 8 == 0`), weight bf16
/// `[N, (k, k, c)]`, output bf16 `[B, ho, wo, N]` (`ldc` per pixel), optional f32 bias and bf16
/// residual; `p.m` must be `B * ho * wo` and `p.k` `k * k * c`.
pub fn conv2d(mut p: GemmParams) -> Result<Launch<GemmParams>> {
    const OP: &str = "conv2d";
    check_gemm(OP, &p)?;
    let g = p.conv;
    ensure(g.c > 0 && g.c % 8 == 0, OP, || {
        format!("{} input channels: pad to a multiple of 8", g.c)
    })?;
    ensure(
        g.ksize > 0 && g.stride > 0 && g.pad_t >= 0 && g.pad_l >= 0,
        OP,
        || format!("{g:?}"),
    )?;
    ensure(p.k == g.ksize * g.ksize * g.c, OP, || {
        format!("K {} is not k * k * c = {}", p.k, g.ksize * g.ksize * g.c)
    })?;
    ensure(g.ho > 0 && g.wo > 0 && p.m % (g.ho * g.wo) == 0, OP, || {
        format!("M {} is not B * {} * {}", p.m, g.ho, g.wo)
    })?;
    ensure(
        p.a_map == RowMap::IDENTITY && p.c_map == RowMap::IDENTITY,
        OP,
        || "row maps are not supported".into(),
    )?;
    p.splits = 1;
    p.k_split = (p.k as usize).next_multiple_of(GEMM_BK) as i32;
    p.partial = 0;
    Ok(Launch::new(
        (Module::Gemm, "conv2d_bf16"),
        gemm_grid(OP, p.m, p.n)?,
        GEMM_THREADS,
        GEMM_SMEM,
        p,
    ))
}

/// A weight matrix `[N, K]` bf16 with its optional f32 bias `[N]`, as one GEMM reads it.
#[derive(Clone, Copy)]
pub struct Mat {
    pub w: Ptr<u16>,
    pub bias: Option<Ptr<f32>>,
    pub n: usize,
    pub k: usize,
}

/// One implicit-GEMM convolution: square kernel, stride, zero padding above and left (below
/// and right follow from the output size).
#[derive(Debug, Clone, Copy)]
pub struct Conv {
    ksize: usize,
    stride: usize,
    pad: usize,
    /// diffusers' `Downsample2D`: one more row and column of zeros below and right.
    pad_below: bool,
}

impl Conv {
    /// No padding: `ho = (h - ksize) / stride + 1`.
    pub fn valid(ksize: usize, stride: usize) -> Conv {
        Conv {
            ksize,
            stride,
            pad: 0,
            pad_below: false,
        }
    }

    /// An odd `ksize`, stride 1, zero padding `ksize / 2` on every side: `ho = h` (the VQ
    /// decoder's 3x3 convolutions).
    pub fn same(ksize: usize) -> Conv {
        Conv {
            ksize,
            stride: 1,
            pad: ksize / 2,
            pad_below: false,
        }
    }

    /// diffusers' `Downsample2D` of the VQ encoder: stride 2, zero padding 0 above and left and
    /// 1 below and right, so `ho = (h + 1 - ksize) / 2 + 1` (`h / 2` for 3x3 and even `h`).
    pub fn downsample(ksize: usize) -> Conv {
        Conv {
            ksize,
            stride: 2,
            pad: 0,
            pad_below: true,
        }
    }

    /// The output size of an `h x w` image.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let padded = |n: usize| n + 2 * self.pad + usize::from(self.pad_below);
        let side = |n: usize| padded(n).saturating_sub(self.ksize) / self.stride.max(1) + 1;
        (side(h), side(w))
    }
}

/// The row maps, strides, activation and gate of one GEMM; `Default` is dense and plain.
#[derive(Clone, Copy)]
pub struct GemmOpts {
    /// 0: `K`.
    pub lda: usize,
    /// 0: `N`.
    pub ldc: usize,
    pub act: Act,
    pub a_map: RowMap,
    pub c_map: RowMap,
    /// Residual only: `(gate [items, gate_stride], gate_stride, rows_per_item)`.
    pub gate: Option<(Ptr<f32>, usize, usize)>,
    /// `Bf16` only: a bf16 residual added after the activation, indexed as C (may be C).
    pub res: Option<Ptr<u16>>,
}

impl Default for GemmOpts {
    fn default() -> Self {
        GemmOpts {
            lda: 0,
            ldc: 0,
            act: Act::None,
            a_map: RowMap::IDENTITY,
            c_map: RowMap::IDENTITY,
            gate: None,
            res: None,
        }
    }
}

impl GemmOpts {
    /// Dense, `act` applied in the epilogue.
    pub fn with_act(act: Act) -> Self {
        GemmOpts {
            act,
            ..GemmOpts::default()
        }
    }

    /// Dense, `C += gate * (..)` (`Residual` only): `(gate, gate_stride, rows_per_item)`.
    pub fn gated(gate: (Ptr<f32>, usize, usize)) -> Self {
        GemmOpts {
            gate: Some(gate),
            ..GemmOpts::default()
        }
    }
}

impl Device {
    /// `C = epilogue(A · Wᵀ + bias)`: A bf16 `[m, K]`, C bf16 (`Bf16`) or f32 (`F32`,
    /// `Residual`: `C += gate * (..)`) `[m, N]`; `c` must be of the element type `out` writes.
    /// K is split (`split_k`) where the output has too few tiles to fill the device.
    pub fn gemm<C>(
        &self,
        out: GemmOut,
        mat: Mat,
        a: Ptr<u16>,
        m: usize,
        c: Ptr<C>,
        o: GemmOpts,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let (lda, ldc) = (
            if o.lda == 0 { mat.k } else { o.lda },
            if o.ldc == 0 { mat.n } else { o.ldc },
        );
        let c_bytes = std::mem::size_of::<C>();
        let want = if out == GemmOut::Bf16 { 2 } else { 4 };
        if c_bytes != want {
            return Err(CudaError::InvalidLaunch {
                op: OP,
                reason: format!("{out:?} output needs {want}-byte elements"),
            }
            .into());
        }
        let mut p = GemmParams {
            a: a.need(mapped_span(o.a_map, m, lda, mat.k), OP, "A")?,
            w: mat.w.need(mat.n * mat.k, OP, "W")?,
            bias: match mat.bias {
                Some(b) => b.need(mat.n, OP, "bias")?,
                None => 0,
            },
            c: c.need(mapped_span(o.c_map, m, ldc, mat.n), OP, "C")?,
            res: match o.res {
                Some(r) => r.need(mapped_span(o.c_map, m, ldc, mat.n), OP, "res")?,
                None => 0,
            },
            m: m as i32,
            n: mat.n as i32,
            k: mat.k as i32,
            lda: lda as i32,
            ldc: ldc as i32,
            act: o.act as i32,
            rows_per_item: i32::MAX,
            a_map: o.a_map,
            c_map: o.c_map,
            ..GemmParams::default()
        };
        if let Some((gate, stride, per_item)) = o.gate {
            let items = m.div_ceil(per_item);
            p.gate = gate.need(span(items, stride, mat.n), OP, "gate")?;
            p.gate_stride = stride as i32;
            p.rows_per_item = per_item as i32;
        }
        let splits = split_k(m, mat.n, mat.k, self.gemm_slots());
        let scratch = split_k_scratch(m, mat.n, mat.k, splits);
        if scratch > 0 {
            p.partial = self.split_scratch(scratch)?.need(scratch, OP, "partials")?;
        }
        for launch in gemm_split(out, p, splits)? {
            // SAFETY: every address comes from a `Ptr` of this device, checked above to hold
            // the rows the maps and strides reach (A, C, res), N x K (W), N (bias), the gate rows
            // and the split-K partials.
            unsafe { self.launch(&launch) }?;
        }
        Ok(())
    }

    /// `out [B, ho, wo, N] = conv(x [B, h, w, c]) (+ bias) (+ res)` with the geometry `conv`
    /// (`res` bf16 `[B, ho, wo, N]`, may be `out`); returns `(ho, wo)`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &self,
        mat: Mat,
        x: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
        conv: Conv,
        res: Option<Ptr<u16>>,
        out: Ptr<u16>,
    ) -> Result<(usize, usize)> {
        const OP: &str = "conv2d";
        let (ho, wo) = conv.out_hw(h, w);
        let m = batch * ho * wo;
        let p = GemmParams {
            a: x.need(batch * h * w * c, OP, "x")?,
            w: mat.w.need(mat.n * mat.k, OP, "W")?,
            bias: match mat.bias {
                Some(b) => b.need(mat.n, OP, "bias")?,
                None => 0,
            },
            c: out.need(m * mat.n, OP, "out")?,
            res: match res {
                Some(r) => r.need(m * mat.n, OP, "res")?,
                None => 0,
            },
            conv: ConvGeom::new((h, w, c), (ho, wo), conv.ksize, conv.stride, conv.pad),
            ..GemmParams::dense(0, 0, 0, m, mat.n, mat.k)
        };
        let launch = conv2d(p)?;
        // SAFETY: image, weight, bias, residual and output ranges checked above; the kernel
        // reads only pixels inside the image (padding taps are zero-filled).
        unsafe { self.launch(&launch)? };
        Ok((ho, wo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H100: 132 SMs x 2 resident GEMM blocks.
    const H100_SLOTS: usize = 264;

    #[test]
    fn split_k_fills_the_slots_only_where_tiles_are_few() {
        // Public 1B shapes at 512 px (M = 666 single-block rows, 512 image rows, 154 text).
        for ((m, n, k), splits, what) in [
            ((666, 1024, 5120), 5, "single proj_out: 48 tiles"),
            ((512, 1024, 4096), 6, "dual ff down: 32 tiles"),
            ((666, 7168, 1024), 1, "fused qkv + mlp: 336 tiles"),
            ((154, 1024, 1024), 4, "text out: 16 tiles"),
        ] {
            assert_eq!(split_k(m, n, k, H100_SLOTS), splits, "{what}");
        }
        // Shallow K never splits below 256 per slice.
        assert_eq!(split_k(64, 64, 384, H100_SLOTS), 1);
        assert_eq!(split_k(64, 64, 512, H100_SLOTS), 2);
        // Many tiles: one slice.
        assert_eq!(split_k(4096, 4096, 4096, H100_SLOTS), 1);
    }

    #[test]
    fn slices_cover_k_in_whole_steps() {
        assert_eq!(slices(200, 3), (3, 96));
        assert_eq!(slices(384, 5), (4, 96));
        assert_eq!(slices(64, 8), (2, 32));
        assert_eq!(slices(1024, 1), (1, 1024));
        assert_eq!(split_k_scratch(10, 20, 384, 5), 4 * 10 * 20);
        assert_eq!(split_k_scratch(10, 20, 64, 1), 0);
    }
}

#[cfg(all(test, feature = "emulate"))]
mod emulated_tests {
    use super::*;
    use crate::cpu::matmul::linear;
    use crate::cuda::device::to_bf16;

    /// Deterministic values in [-1, 1), rounded to bf16.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13) ^ seed;
                let x = (h % 2001) as f32 / 1000.0 - 1.0;
                half::bf16::from_f32(x).to_f32()
            })
            .collect()
    }

    /// Deep, narrow products take the split-K path (two launches and the device's scratch,
    /// which grows from the first to the second); the result is the CPU product.
    #[test]
    fn deep_narrow_products_split_k_and_match_the_cpu() {
        let dev = Device::emulated();
        for (m, n, k) in [(40, 72, 1024), (64, 130, 2048)] {
            let splits = split_k(m, n, k, dev.gemm_slots());
            assert!(splits > 1, "{m} x {n} x {k} takes one slice");
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let xb = dev.upload(&to_bf16(&x)).expect("x");
            let wb = dev.upload(&to_bf16(&w)).expect("w");
            let c = dev.zeros::<f32>(m * n).expect("c");
            let mat = Mat {
                w: wb.ptr(),
                bias: None,
                n,
                k,
            };
            dev.gemm(GemmOut::F32, mat, xb.ptr(), m, c.ptr(), GemmOpts::default())
                .expect("gemm");
            let got = dev.read(&c, 0, m * n).expect("read");
            let mut want = vec![0.0; m * n];
            linear(&x, &w, None, m, k, n, &mut want);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{m} x {n} x {k} in {splits} slices: error {worst}"
            );
        }
    }
}
