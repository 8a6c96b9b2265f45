//! Matrix products against weights packed once at load time.
//!
//! A [`PackedMatrix`] holds an `nn.Linear` weight `[N, K]` in the layout the x86 micro-kernels
//! (`avx512.rs`, `avx2.rs`, `amx.rs`) stream: panels of [`NR`] output columns, each `[K][NR]` for
//! f32 or `[K/2][NR][2]` (pairs of `k`) for bf16, 64-byte aligned (for AMX products `K` is padded
//! with zeros to a multiple of 32, one tile step). [`linear`] computes `x[M,K] · Wᵀ (+ bias)` with
//! optional GELU-tanh over all cores: the activations are copied once per call into row tiles
//! of [`MR`] rows (32 rows for AMX; rounded to bf16 for bf16 products), then blocks of `MC` rows x
//! `NC` columns are shared out to the threads; inside a block, for each `KC` slice of `k`, one
//! weight panel stays in L1 while the row tiles stream past it.
//!
//! Arithmetic: [`Compute::F32`] is f32 multiply-add (bf16-stored weights are widened exactly, one
//! panel slice at a time); [`Compute::Bf16`] rounds the activations to bf16 (nearest even) and
//! multiplies bf16 values with f32 accumulation, by the instruction [`Isa::bf16_path`] picks for
//! this CPU: AMX `tdpbf16ps` on tiles (`amx.rs`), `vdpbf16ps` on bf16 pairs, or the f32 kernels
//! on the rounded activations and the widened weights (exact products, so the same arithmetic up
//! to the order of the sums). The other micro-kernels are AVX-512 or AVX2 + FMA by
//! [`Isa::detect`] (`isa.rs`, `MUDDIT_ISA` caps it); at the portable level the weights stay
//! `[N, K]` f32 and the `gemm` crate does the product (for bf16, on the same bf16-rounded
//! values). Other architectures than x86_64 always take that portable path (so the blocking
//! constants and panel helpers below go unused there).
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::bf16;
pub use super::isa::Bf16Path;
pub use super::isa::Isa;
pub use super::tile::{MR, NR};
#[cfg(target_arch = "x86_64")]
use super::{
    amx, avx2, avx512,
    tile::{Init, Tile},
};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::cell::Cell;

/// `k` per slice for f32 products: a `KC x NR` f32 panel is 64 KiB, in L2 (on an AMD Zen 3,
/// 256 gave 2-5% less than 512 with AVX2: more partial sums stored and reloaded).
const KC_F32: usize = 512;
/// `k` per slice for bf16 products (same bytes).
const KC_BF16: usize = 1024;
/// `k` per slice for AMX products: a `KC x NR` bf16 panel is 32 KiB, under L1, so the B tiles
/// reload from L1 (a multiple of the tile step, 32).
const KC_AMX: usize = 512;
/// Rows per block (a multiple of `MR` and of the AMX row tile, 32).
const MC: usize = MR * 24;
const _: () =
    assert!(MC.is_multiple_of(super::amx::MR) && KC_AMX.is_multiple_of(super::amx::KSTEP));
/// Padding after each packed row of activations, in elements (64 bytes): rows `kc` apart would
/// fall into the same L1 sets (a 4 KiB period) when `kc` is a multiple of 1024 bytes.
const PAD_F32: usize = 16;
const PAD_BF16: usize = 32;

/// Columns per block (a multiple of `NR`).
const NC: usize = NR * 8;

/// The arithmetic of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    F32,
    Bf16,
}

/// How the weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    Bf16,
}

/// One cache line, the unit of the aligned buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

// SAFETY: 64 plain bytes without padding (sixteen u32 at an alignment of 64); all zeros and any
// other bit pattern are valid.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above; `Line` is `Copy` and `repr(C)`.
unsafe impl bytemuck::Pod for Line {}

/// A 64-byte aligned buffer of `f32` or `u16`.
#[derive(Default)]
struct Aligned(Vec<Line>);

impl Aligned {
    fn zeroed(bytes: usize) -> Self {
        Aligned(vec![Line([0; 16]); bytes.div_ceil(64)])
    }

    /// `count` panels of `panel_bytes` (a multiple of 64) each, every panel zeroed and then
    /// `fill(p, panel)`ed on the rayon pool: each page is first written by the thread that fills
    /// it, once (a zeroed allocation would touch the whole buffer on one thread first).
    fn panels(panel_bytes: usize, count: usize, fill: impl Fn(usize, &mut [Line]) + Sync) -> Self {
        assert!(
            panel_bytes.is_multiple_of(64),
            "Aligned::panels: {panel_bytes} bytes per panel"
        );
        let lines = panel_bytes / 64;
        let mut buf: Vec<Line> = Vec::with_capacity(lines * count);
        if lines > 0 {
            buf.spare_capacity_mut()[..lines * count]
                .par_chunks_mut(lines)
                .enumerate()
                .for_each(|(p, panel)| {
                    for line in panel.iter_mut() {
                        line.write(Line([0; 16]));
                    }
                    // SAFETY: every element of `panel` was written just above.
                    let panel = unsafe { &mut *(panel as *mut [_] as *mut [Line]) };
                    fill(p, panel);
                });
        }
        // SAFETY: the loop above initialised all `lines * count` elements, within the capacity.
        unsafe { buf.set_len(lines * count) };
        Aligned(buf)
    }

    fn bytes(&self) -> usize {
        self.0.len() * 64
    }
    fn f32s(&self) -> &[f32] {
        bytemuck::cast_slice(&self.0)
    }
    fn f32s_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
    fn u16s(&self) -> &[u16] {
        bytemuck::cast_slice(&self.0)
    }
    fn u16s_mut(&mut self) -> &mut [u16] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
    fn ensure(&mut self, bytes: usize) {
        if self.bytes() < bytes {
            *self = Aligned::zeroed(bytes);
        }
    }
}

enum Layout {
    /// `[N, K]` row-major f32, for the portable path.
    Rows(Vec<f32>),
    /// Panels `[N/NR][K][NR]` f32.
    PanelsF32(Aligned),
    /// Panels `[N/NR][kp/2][NR][2]` bf16 bits, `K` zero-padded to `kp` (even; a multiple of 32
    /// for AMX products).
    PanelsBf16 { buf: Aligned, kp: usize },
}

/// The values a [`PackedMatrix`] is packed from, `[N, K]`.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Row-major.
    F32(&'a [f32]),
    /// bf16 bit patterns, row-major.
    Bf16(&'a [u16]),
    /// Read in place from a larger buffer: element `(j, kk)` at `x[j * ld + kk]`, or at
    /// `x[kk * ld + j]` where `transposed` (a `[K, N]` matrix, rows `ld` apart, taken as its
    /// transpose). Attention's keys and values, heads of `[S, H, Dh]` buffers.
    Strided {
        x: &'a [f32],
        ld: usize,
        transposed: bool,
    },
}

impl Source<'_> {
    /// Whether `[n, k]` lies inside the values.
    fn holds(&self, n: usize, k: usize) -> bool {
        match *self {
            Source::F32(w) => w.len() == n * k,
            Source::Bf16(w) => w.len() == n * k,
            Source::Strided { x, ld, transposed } => {
                let (rows, cols) = if transposed { (k, n) } else { (n, k) };
                rows == 0 || cols == 0 || (cols <= ld && (rows - 1) * ld + cols <= x.len())
            }
        }
    }

    /// Element `(j, kk)` of `[N, k]` as bf16 bits (rounded to nearest even from f32).
    #[inline(always)]
    fn bf16(&self, (j, kk): (usize, usize), k: usize) -> u16 {
        match self {
            Source::Bf16(w) => w[j * k + kk],
            _ => bf16::bits(self.f32((j, kk), k)),
        }
    }

    /// Element `(j, kk)` of `[N, k]` of an f32 source.
    #[inline(always)]
    fn f32(&self, (j, kk): (usize, usize), k: usize) -> f32 {
        match *self {
            Source::F32(w) => w[j * k + kk],
            Source::Bf16(w) => bf16::value(w[j * k + kk]),
            Source::Strided { x, ld, transposed } => {
                x[if transposed { kk * ld + j } else { j * ld + kk }]
            }
        }
    }

    /// Element `(j, kk)` of `[N, k]` as the f32 that `storage` keeps.
    #[inline(always)]
    fn value(&self, at: (usize, usize), k: usize, storage: Storage) -> f32 {
        match storage {
            Storage::F32 => self.f32(at, k),
            Storage::Bf16 => bf16::value(self.bf16(at, k)),
        }
    }
}

/// An `nn.Linear` weight `[N, K]` packed for [`linear`].
pub struct PackedMatrix {
    n: usize,
    k: usize,
    compute: Compute,
    /// The level the products run at (this CPU's, or lower for tests).
    isa: Isa,
    /// AMX products run on the software tile model (`amx::TileModel`; tests on any x86 CPU).
    tile_model: bool,
    /// How bf16 products multiply: the level's choice (`Isa::bf16_path`) unless forced.
    bf16_path: Bf16Path,
    layout: Layout,
}

/// Writes rows `first..first + NR` (those below `n`) of the bf16 bits `w [n, k]` into `panel`
/// as pairs of k: element `(kk, j)` at `((kk / 2) * NR + j) * 2 + kk % 2`. The pairs are written
/// in order, reading the panel's rows side by side; what lies past `k` or `n` is left as is
/// (zero).
fn pack_bf16_panel(w: &[u16], (first, n): (usize, usize), k: usize, panel: &mut [u16]) {
    let rows = NR.min(n - first);
    let w = &w[first * k..(first + rows) * k];
    for (kk2, pairs) in panel.chunks_exact_mut(NR * 2).take(k / 2).enumerate() {
        for (j, pair) in pairs.chunks_exact_mut(2).take(rows).enumerate() {
            pair.copy_from_slice(&w[j * k + 2 * kk2..j * k + 2 * kk2 + 2]);
        }
    }
    if k % 2 == 1 {
        for j in 0..rows {
            panel[((k / 2) * NR + j) * 2] = w[j * k + k - 1];
        }
    }
}

/// [`pack_bf16_panel`] of the strided view `x` (rows `ld` apart; `transposed`: `x` is `[k, n]`)
/// into `panel` seen as pairs of k (`[k / 2][NR]` words, the even k in the low half), each run
/// of values that lies side by side in `x` rounded in one vector pass.
fn pack_bf16_strided(
    (x, ld, transposed): (&[f32], usize, bool),
    (first, n): (usize, usize),
    k: usize,
    panel: &mut [u32],
) {
    let rows = NR.min(n - first);
    if transposed {
        // Rows 2 kk2 and 2 kk2 + 1 of x hold pair row kk2 of the panel, each side by side.
        for (kk2, dst) in panel.chunks_exact_mut(NR).take(k.div_ceil(2)).enumerate() {
            let row = |kk: usize| &x[kk * ld + first..][..rows];
            let odd = (2 * kk2 + 1 < k).then(|| row(2 * kk2 + 1));
            bf16::pairs_into(row(2 * kk2), odd, &mut dst[..rows]);
        }
    } else {
        // Row j of x is column j of the panel: its pairs go NR words apart.
        let mut pairs = vec![0u32; k.div_ceil(2)];
        for j in 0..rows {
            let bits: &mut [u16] = bytemuck::cast_slice_mut(&mut pairs);
            bf16::round_into(&x[(first + j) * ld..][..k], &mut bits[..k]);
            for (kk2, &p) in pairs.iter().enumerate() {
                panel[kk2 * NR + j] = p;
            }
        }
    }
}

fn k_even(k: usize) -> usize {
    k + (k & 1)
}

impl PackedMatrix {
    /// Packs `w [N, K]` (f32 values, bf16 when `storage` says so: rounded to nearest even).
    /// `compute` picks the arithmetic of every product with this weight; `Compute::Bf16`
    /// needs `Storage::Bf16`.
    pub fn new(w: &[f32], n: usize, k: usize, storage: Storage, compute: Compute) -> Self {
        Self::with_isa(Source::F32(w), n, k, storage, compute, Isa::detect())
    }

    /// [`PackedMatrix::new`] of any [`Source`] (strided views: attention's heads).
    pub fn of(w: Source, n: usize, k: usize, storage: Storage, compute: Compute) -> Self {
        Self::with_isa(w, n, k, storage, compute, Isa::detect())
    }

    /// Packs `w [N, K]` given as bf16 bit patterns (a bf16 checkpoint, no rounding), kept as bf16.
    pub fn from_bf16_bits(w: &[u16], n: usize, k: usize, compute: Compute) -> Self {
        Self::with_isa(Source::Bf16(w), n, k, Storage::Bf16, compute, Isa::detect())
    }

    /// As [`PackedMatrix::new`] for an instruction set no better than this CPU's (tests,
    /// benchmarks).
    pub fn with_isa(
        w: Source,
        n: usize,
        k: usize,
        storage: Storage,
        compute: Compute,
        isa: Isa,
    ) -> Self {
        Self::pack(w, n, k, storage, compute, isa.min(Isa::detect()), false)
    }

    /// A bf16 weight whose products take the AMX path (`Isa::Amx`) with every tile instruction
    /// run by the software model, whatever this CPU has: tests of the AMX blocking and packing.
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(crate) fn on_tile_model(w: Source, n: usize, k: usize) -> Self {
        Self::pack(w, n, k, Storage::Bf16, Compute::Bf16, Isa::Amx, true)
    }

    fn pack(
        w: Source,
        n: usize,
        k: usize,
        storage: Storage,
        compute: Compute,
        isa: Isa,
        tile_model: bool,
    ) -> Self {
        assert!(w.holds(n, k), "PackedMatrix: weight is not [N,K]");
        assert!(
            !(compute == Compute::Bf16 && storage == Storage::F32),
            "PackedMatrix: bf16 products need bf16 storage"
        );
        let layout = if isa == Isa::Portable {
            Layout::Rows(
                (0..n * k)
                    .into_par_iter()
                    .map(|i| w.value((i / k, i % k), k, storage))
                    .collect(),
            )
        } else {
            let panels = n.div_ceil(NR);
            match storage {
                Storage::F32 => {
                    Layout::PanelsF32(Aligned::panels(k * NR * 4, panels, |p, panel| {
                        let panel: &mut [f32] = bytemuck::cast_slice_mut(panel);
                        let rows = NR.min(n - p * NR);
                        // Down the panel, so the writes stream and the reads walk `rows` rows side
                        // by side.
                        for kk in 0..k {
                            for j in 0..rows {
                                panel[kk * NR + j] = w.value((p * NR + j, kk), k, storage);
                            }
                        }
                    }))
                }
                Storage::Bf16 => {
                    let kp = if compute == Compute::Bf16 && isa.bf16_path() == Bf16Path::Tiles {
                        k.div_ceil(super::amx::KSTEP) * super::amx::KSTEP
                    } else {
                        k_even(k)
                    };
                    // f32 values kept as bf16 are rounded in one vector pass first (the
                    // panels then move bits only).
                    let rounded;
                    let bits = match w {
                        Source::Bf16(bits) => bits,
                        Source::F32(values) => {
                            rounded = bf16_bits_of(values);
                            &rounded
                        }
                        Source::Strided { .. } => &[],
                    };
                    let buf = Aligned::panels(kp * NR * 2, panels, |p, panel| {
                        let first = p * NR;
                        match w {
                            Source::Strided { x, ld, transposed } => {
                                let panel = bytemuck::cast_slice_mut(panel);
                                pack_bf16_strided((x, ld, transposed), (first, n), k, panel)
                            }
                            _ => {
                                let panel = bytemuck::cast_slice_mut(panel);
                                pack_bf16_panel(bits, (first, n), k, panel)
                            }
                        }
                    });
                    Layout::PanelsBf16 { buf, kp }
                }
            }
        };
        PackedMatrix {
            n,
            k,
            compute,
            isa,
            tile_model,
            bf16_path: isa.bf16_path(),
            layout,
        }
    }

    /// The same weight with its bf16 products on `path` instead of the level's choice, for the
    /// benchmark that checks the per-family table (`benches/benches/matmul.rs`): `Dot` needs
    /// AVX512-BF16 on this CPU, `Widened` AVX2; the AMX and portable layouts keep theirs.
    pub fn with_bf16_path(mut self, path: Bf16Path) -> Self {
        let panels = matches!(self.layout, Layout::PanelsBf16 { .. });
        let keeps = matches!(self.bf16_path, Bf16Path::Tiles | Bf16Path::Portable);
        let allowed = match path {
            Bf16Path::Dot => Isa::detect() >= Isa::Avx512Bf16,
            Bf16Path::Widened => Isa::detect() >= Isa::Avx2,
            Bf16Path::Tiles | Bf16Path::Portable => false,
        };
        if panels && !keeps && allowed {
            self.bf16_path = path;
        }
        self
    }

    /// Output features `N`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// How the products with this weight multiply, e.g. `avx512bf16 (vdpbf16ps)`.
    pub fn kernel(&self) -> String {
        match self.compute {
            Compute::Bf16 if self.tile_model => format!("{} (tile model)", self.isa.name()),
            Compute::Bf16 => format!("{} ({})", self.isa.name(), self.bf16_path.name()),
            Compute::F32 => format!("{} (f32 FMA)", self.isa.min(Isa::Avx512).name()),
        }
    }

    /// The weight back as `[N, K]` f32 (exactly the values the products use).
    pub fn to_rows(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0.0; n * k];
        match &self.layout {
            Layout::Rows(w) => out.copy_from_slice(w),
            Layout::PanelsF32(buf) => {
                let src = buf.f32s();
                for (col, row) in out.chunks_exact_mut(k).enumerate() {
                    let (p, j) = (col / NR, col % NR);
                    for (kk, v) in row.iter_mut().enumerate() {
                        *v = src[(p * k + kk) * NR + j];
                    }
                }
            }
            Layout::PanelsBf16 { buf, kp } => {
                let src = buf.u16s();
                let k2 = kp / 2;
                for (col, row) in out.chunks_exact_mut(k).enumerate() {
                    let (p, j) = (col / NR, col % NR);
                    for (kk, v) in row.iter_mut().enumerate() {
                        *v = bf16::value(src[((p * k2 + kk / 2) * NR + j) * 2 + kk % 2]);
                    }
                }
            }
        }
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.layout {
            Layout::Rows(w) => w.len() * 4,
            Layout::PanelsF32(b) | Layout::PanelsBf16 { buf: b, .. } => b.bytes(),
        }
    }
}

/// `x` rounded to bf16 bits, in parallel.
fn bf16_bits_of(x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; x.len()];
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(dst, src)| bf16::round_into(src, dst));
    out
}

/// What happens to the finished values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    GeluTanh,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Scratch reused across calls: the packed activations (caller thread) and a widened weight
    /// slice (worker threads). Taken out while in use, so a nested call just makes its own.
    static ROWS: Cell<Aligned> = Cell::new(Aligned::default());
    static PANEL: Cell<Aligned> = Cell::new(Aligned::default());
}

/// A raw output pointer shared by the tasks, which write disjoint blocks.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own block of rows x columns.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for OutPtr {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for OutPtr {}

/// The left operand of a product, row by row: a matrix, or the receptive fields of a
/// convolution gathered as they are packed (no im2col buffer).
pub trait RowSource: Sync {
    /// Rows `M`.
    fn rows(&self) -> usize;
    /// Writes values `k0..k0 + dst.len()` of row `row` into `dst`.
    fn fill(&self, row: usize, k0: usize, dst: &mut [f32]);
    /// Values `k0..k0 + len` of row `row` where they already lie in memory, so packing can
    /// convert them without a copy first.
    fn slice(&self, _row: usize, _k0: usize, _len: usize) -> Option<&[f32]> {
        None
    }
}

/// A row-major `[M, K]` matrix.
struct Matrix<'a> {
    x: &'a [f32],
    k: usize,
}

impl RowSource for Matrix<'_> {
    fn rows(&self) -> usize {
        self.x.len() / self.k
    }
    fn fill(&self, row: usize, k0: usize, dst: &mut [f32]) {
        dst.copy_from_slice(&self.x[row * self.k + k0..][..dst.len()]);
    }
    fn slice(&self, row: usize, k0: usize, len: usize) -> Option<&[f32]> {
        Some(&self.x[row * self.k + k0..][..len])
    }
}

/// `rows` rows of `k` values, `ld` apart in `x` (one head of a `[S, H, Dh]` buffer).
pub struct StridedRows<'a> {
    pub x: &'a [f32],
    pub ld: usize,
    pub k: usize,
    pub rows: usize,
}

impl RowSource for StridedRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn fill(&self, row: usize, k0: usize, dst: &mut [f32]) {
        dst.copy_from_slice(&self.x[row * self.ld + k0..][..dst.len()]);
    }
    fn slice(&self, row: usize, k0: usize, len: usize) -> Option<&[f32]> {
        Some(&self.x[row * self.ld + k0..][..len])
    }
}

/// The rows of two row-major matrices side by side, `[M, Ka + Kb]` from `a [M, Ka]` and
/// `b [M, Kb]`, never written out (a concatenation along features, read as it is packed).
pub struct Concat<'a> {
    pub a: &'a [f32],
    pub ka: usize,
    pub b: &'a [f32],
    pub kb: usize,
}

impl RowSource for Concat<'_> {
    fn rows(&self) -> usize {
        self.a.len() / self.ka.max(1)
    }
    fn fill(&self, row: usize, k0: usize, dst: &mut [f32]) {
        // Values k0.. of the row: first from a (while k < ka), the rest from b.
        let in_a = self.ka.saturating_sub(k0).min(dst.len());
        let (da, db) = dst.split_at_mut(in_a);
        if in_a > 0 {
            da.copy_from_slice(&self.a[row * self.ka + k0..][..in_a]);
        }
        if !db.is_empty() {
            let kb0 = k0 + in_a - self.ka;
            db.copy_from_slice(&self.b[row * self.kb + kb0..][..db.len()]);
        }
    }
    fn slice(&self, row: usize, k0: usize, len: usize) -> Option<&[f32]> {
        if k0 + len <= self.ka {
            Some(&self.a[row * self.ka + k0..][..len])
        } else if k0 >= self.ka {
            Some(&self.b[row * self.kb + k0 - self.ka..][..len])
        } else {
            None
        }
    }
}

/// `out[M,N] = x[M,K] · wᵀ (+ bias[N])`, then `epilogue`.
pub fn linear(
    x: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let k = w.k;
    assert_eq!(x.len() % k.max(1), 0, "linear: x is not [M,K]");
    if k == 0 {
        let m = out.len() / w.n.max(1);
        return linear_rows(&Empty(m), w, bias, epilogue, out);
    }
    linear_rows(&Matrix { x, k }, w, bias, epilogue, out)
}

/// One product of [`linear_many`]: `out [M, w.n] = x · wᵀ (+ bias)`, then `epilogue`.
pub struct Part<'a> {
    pub w: &'a PackedMatrix,
    pub bias: Option<&'a [f32]>,
    pub epilogue: Epilogue,
    pub out: &'a mut [f32],
}

/// [`linear`] of the same rows `x [M, K]` with each of `parts`, to the same bits: where the
/// weights pack their rows alike (the same `K`, arithmetic and kernel), the rows are packed
/// once and the blocks of every product run as one pool of tasks; else one after another.
pub fn linear_many(x: &[f32], parts: &mut [Part<'_>]) {
    #[cfg(target_arch = "x86_64")]
    {
        let k = parts.first().map_or(0, |p| p.w.k);
        if let Some(jobs) = shared(x, parts) {
            return blocked(&Matrix { x, k }, &jobs, x.len() / k, k);
        }
    }
    for p in parts.iter_mut() {
        linear(x, p.w, p.bias, p.epilogue, p.out);
    }
}

/// The jobs of `parts` over rows packed once, or `None` where their plans differ in how they
/// pack the rows (or a product takes another path: portable, empty).
#[cfg(target_arch = "x86_64")]
fn shared<'a>(x: &[f32], parts: &'a mut [Part<'_>]) -> Option<Vec<Job<'a>>> {
    let k = parts.first()?.w.k;
    let m = x.len() / k.max(1);
    if k == 0 || m == 0 || x.len() != m * k {
        return None;
    }
    let mut jobs: Vec<Job<'a>> = Vec::with_capacity(parts.len());
    for p in parts.iter_mut() {
        let (w, n) = (p.w, p.w.n);
        assert_eq!(p.out.len(), m * n, "linear_many: out is not [M,N]");
        assert!(
            p.bias.is_none_or(|b| b.len() == n),
            "linear_many: bias is not [N]"
        );
        let plan = w.plan()?;
        let alike = |j: &Job<'_>| {
            let first = j.plan;
            let amx = |p: &Product<'_>| matches!(p.panels, Panels::Tiles { .. });
            (first.rows, first.kp, first.avx512, amx(&first))
                == (plan.rows, plan.kp, plan.avx512, amx(&plan))
        };
        if w.k != k || n == 0 || !jobs.first().is_none_or(alike) {
            return None;
        }
        jobs.push(Job {
            plan,
            bias: p.bias,
            epilogue: p.epilogue,
            n,
            out: OutPtr(p.out.as_mut_ptr()),
        });
    }
    Some(jobs)
}

/// `m` rows of nothing (`K = 0`).
struct Empty(usize);

impl RowSource for Empty {
    fn rows(&self) -> usize {
        self.0
    }
    fn fill(&self, _: usize, _: usize, _: &mut [f32]) {}
}

/// [`linear`] with the rows `x[M,K]` taken from `x`.
pub fn linear_rows(
    x: &dyn RowSource,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let (n, k) = (w.n, w.k);
    let m = x.rows();
    assert_eq!(out.len(), m * n, "linear: out is not [M,N]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias is not [N]");
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        match bias {
            Some(b) => out
                .chunks_exact_mut(n)
                .for_each(|row| row.copy_from_slice(b)),
            None => out.fill(0.0),
        }
        if epilogue == Epilogue::GeluTanh {
            super::act::gelu_tanh_(out);
        }
        return;
    }
    match &w.layout {
        Layout::Rows(wr) => portable(x, wr, w.compute, bias, epilogue, m, k, n, out),
        #[cfg(target_arch = "x86_64")]
        _ => {
            let plan = w.plan().expect("panels have a plan");
            let job = Job {
                plan,
                bias,
                epilogue,
                n,
                out: OutPtr(out.as_mut_ptr()),
            };
            blocked(x, &[job], m, k)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Layout::PanelsF32(_) | Layout::PanelsBf16 { .. } => {
            unreachable!("weights are packed into panels only on x86_64 (Isa::detect)")
        }
    }
}

impl PackedMatrix {
    /// Rows of activations one micro-kernel call takes (1 on the portable level): products
    /// of a multiple of it leave no register rows idle.
    pub fn row_tile(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if let Some(plan) = self.plan() {
            return match plan.panels {
                Panels::Tiles { .. } => amx::MR,
                _ => MR,
            };
        }
        1
    }
}

#[cfg(target_arch = "x86_64")]
impl PackedMatrix {
    /// How products with this weight run: panels, activation packing, kernel width (`None` for
    /// the portable layout).
    fn plan(&self) -> Option<Product<'_>> {
        let product = |panels, rows, kp| Product {
            panels,
            rows,
            kp,
            avx512: self.isa >= Isa::Avx512,
        };
        Some(match &self.layout {
            Layout::Rows(_) => return None,
            Layout::PanelsF32(buf) => product(Panels::F32(buf.f32s()), Elements::F32, self.k),
            Layout::PanelsBf16 { buf, kp } => {
                let (p, kp) = (buf.u16s(), *kp);
                match (self.compute, self.bf16_path) {
                    (Compute::F32, _) => product(Panels::Bf16Widened(p), Elements::F32, kp),
                    (Compute::Bf16, Bf16Path::Tiles) => {
                        let model = self.tile_model;
                        product(Panels::Tiles { w: p, model }, Elements::Bf16, kp)
                    }
                    (Compute::Bf16, Bf16Path::Dot) => product(Panels::Bf16(p), Elements::Bf16, kp),
                    (Compute::Bf16, _) => product(Panels::Bf16Widened(p), Elements::F32Rounded, kp),
                }
            }
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn portable(
    x: &dyn RowSource,
    w: &[f32],
    compute: Compute,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let mut xr = vec![0.0; m * k];
    xr.par_chunks_mut(k).enumerate().for_each(|(row, dst)| {
        x.fill(row, 0, dst);
        if compute == Compute::Bf16 {
            dst.iter_mut().for_each(|v| *v = bf16::round(*v));
        }
    });
    super::matmul::linear(&xr, w, bias, m, k, n, out);
    if epilogue == Epilogue::GeluTanh {
        super::act::gelu_tanh_(out);
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Panels<'a> {
    F32(&'a [f32]),
    /// bf16 weights widened to f32 one slice at a time.
    Bf16Widened(&'a [u16]),
    /// bf16 pairs for `vdpbf16ps`.
    Bf16(&'a [u16]),
    /// bf16 pairs as AMX B tiles (`k` padded to 32), on the hardware or the tile model.
    Tiles {
        w: &'a [u16],
        model: bool,
    },
}

/// One product's plan: weight panels, activation packing, micro-kernel width.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Product<'a> {
    panels: Panels<'a>,
    rows: Elements,
    /// `k` as stored in the panels (`K` padded).
    kp: usize,
    /// AVX-512 kernels, else AVX2 + FMA.
    avx512: bool,
}

/// One product of a [`blocked`] call: its plan, bias and epilogue, and `out [M, n]`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Job<'a> {
    plan: Product<'a>,
    bias: Option<&'a [f32]>,
    epilogue: Epilogue,
    n: usize,
    out: OutPtr,
}

/// Blocks of about equal size of one product: the tasks then share out evenly over the threads.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Blocks {
    m_blocks: usize,
    mc: usize,
    n_blocks: usize,
    nc: usize,
}

#[cfg(target_arch = "x86_64")]
impl Blocks {
    fn new(m: usize, n: usize, mr: usize) -> Self {
        let m_blocks = m.div_ceil(MC);
        let n_blocks = n.div_ceil(NC);
        Blocks {
            m_blocks,
            mc: m.div_ceil(m_blocks).div_ceil(mr) * mr,
            n_blocks,
            nc: n.div_ceil(n_blocks).div_ceil(NR) * NR,
        }
    }

    fn tasks(&self) -> usize {
        self.m_blocks * self.n_blocks
    }
}

/// The products `jobs` of the rows of `x [M, K]`, packed once (every job's plan packs rows
/// alike: the same kind, `kp` and tile rows), their blocks one pool of tasks.
#[cfg(target_arch = "x86_64")]
fn blocked(x: &dyn RowSource, jobs: &[Job<'_>], m: usize, k: usize) {
    let Product {
        panels,
        rows: row_kind,
        kp,
        ..
    } = jobs[0].plan;
    let bf16 = row_kind == Elements::Bf16;
    let amx = matches!(panels, Panels::Tiles { .. });
    let tiles = RowTiles {
        rows: if amx { amx::MR } else { MR },
        kp,
        kc_max: match (amx, bf16) {
            (true, _) => KC_AMX,
            (false, true) => KC_BF16,
            (false, false) => KC_F32,
        },
        pad: if bf16 { PAD_BF16 } else { PAD_F32 },
    };
    let (mr, kc_max) = (tiles.rows, tiles.kc_max);
    let elem = if bf16 { 2 } else { 4 };
    let mut rows = ROWS.take();
    rows.ensure(m.div_ceil(mr) * tiles.len() * elem);
    pack_rows(x, m, k, tiles, row_kind, &mut rows);

    let blocks: Vec<Blocks> = jobs.iter().map(|j| Blocks::new(m, j.n, mr)).collect();
    let flops: usize = jobs.iter().map(|j| 2 * m * j.n * k).sum();
    let rows_ref = &rows;
    let task = |t: usize| {
        let (mut j, mut t) = (0, t);
        while t >= blocks[j].tasks() {
            t -= blocks[j].tasks();
            j += 1;
        }
        let (
            Job {
                plan,
                bias,
                epilogue,
                n,
                out: o,
            },
            b,
        ) = (jobs[j], blocks[j]);
        let (panels, avx512) = (plan.panels, plan.avx512);
        let (mb, nb) = (t / b.n_blocks, t % b.n_blocks);
        let (m0, n0) = (mb * b.mc, nb * b.nc);
        let (m1, n1) = ((m0 + b.mc).min(m), (n0 + b.nc).min(n));
        let mut panel = PANEL.take();
        // Configured here and released at the end of the task, on this thread.
        let mut tile_kernel = match panels {
            Panels::Tiles { model: true, .. } => Some(amx::Kernel::model()),
            Panels::Tiles { model: false, .. } => Some(
                amx::Kernel::hardware().expect("AMX products are planned only when AMX is usable"),
            ),
            _ => None,
        };
        let mut pc = 0;
        while pc < kp {
            let kc = kc_max.min(kp - pc);
            let last = pc + kc == kp;
            for p in n0 / NR..n1.div_ceil(NR) {
                let c0 = p * NR;
                let cols = (n1 - c0).min(NR);
                let gelu = last && epilogue == Epilogue::GeluTanh;
                let wp = panels.slice((p * kp + pc) * NR, kc, avx512, &mut panel);
                for tile in m0 / mr..m1.div_ceil(mr) {
                    let r0 = tile * mr;
                    let nrows = (m1 - r0).min(mr);
                    let a_off = tile * tiles.len() + tiles.slice(pc);
                    // SAFETY: the packed rows hold mr rows of kc values at a_off (kc a multiple
                    // of 32 for AMX, zero padded), the weight slice kc * NR; rows r0..r0+nrows
                    // and columns c0..c0+cols of out are inside [m, n] and belong to this
                    // task's block alone.
                    unsafe {
                        let tile = Tile {
                            c: o.0.add(r0 * n + c0),
                            ldc: n,
                            rows: nrows,
                            cols,
                            init: tile_init(pc == 0, bias, c0),
                            gelu,
                        };
                        let lda = tiles.stride(kc);
                        match wp {
                            WeightSlice::F32(b) => {
                                let a = rows_ref.f32s()[a_off..].as_ptr();
                                f32_kernel(avx512)(kc, a, lda, b, tile)
                            }
                            WeightSlice::Bf16(b) => {
                                let a = rows_ref.u16s()[a_off..].as_ptr();
                                avx512::kernel_bf16(kc, a, lda, b, tile)
                            }
                            WeightSlice::Tiles(b) => {
                                let a = rows_ref.u16s()[a_off..].as_ptr();
                                let ops = amx::Operands { kc, a, lda, b };
                                let kernel = tile_kernel.as_mut().expect("made for tile products");
                                kernel.block(ops, &tile)
                            }
                        }
                    }
                }
            }
            pc += kc;
        }
        drop(tile_kernel);
        PANEL.set(panel);
    };
    let tasks: usize = blocks.iter().map(Blocks::tasks).sum();
    if flops < 1 << 21 || tasks == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    ROWS.set(rows);
}

#[cfg(target_arch = "x86_64")]
impl Panels<'_> {
    /// The weight slice of one panel starting at element `at` (`(panel * kp + k0) * NR`), `kc`
    /// values of `k` long, as the micro-kernels read it: in place, or widened to f32 into `buf`.
    fn slice(&self, at: usize, kc: usize, avx512: bool, buf: &mut Aligned) -> WeightSlice {
        match *self {
            Panels::F32(w) => WeightSlice::F32(w[at..].as_ptr()),
            Panels::Bf16(w) => WeightSlice::Bf16(w[at..].as_ptr()),
            Panels::Tiles { w, .. } => WeightSlice::Tiles(w[at..].as_ptr()),
            Panels::Bf16Widened(w) => {
                buf.ensure(kc * NR * 4);
                let (src, dst) = (w[at..].as_ptr(), buf.f32s_mut().as_mut_ptr());
                // SAFETY: the level's instructions are present (panels are only built at avx2
                // and above, avx512 only when the CPU has it); the source slice holds kc * NR
                // values, the buffer room for as many.
                unsafe {
                    if avx512 {
                        avx512::widen_panel(kc, src, dst)
                    } else {
                        avx2::widen_panel(kc, src, dst)
                    }
                };
                WeightSlice::F32(buf.f32s().as_ptr())
            }
        }
    }
}

/// How a register tile at column `c0` starts: from the bias (or zero) on the first slice of
/// `k`, from the partial sums in the output after that.
#[cfg(target_arch = "x86_64")]
fn tile_init(first: bool, bias: Option<&[f32]>, c0: usize) -> Init {
    match (first, bias) {
        (false, _) => Init::Load,
        (true, Some(b)) => Init::Bias(b[c0..].as_ptr()),
        (true, None) => Init::Zero,
    }
}

/// The f32 micro-kernel of the level.
#[cfg(target_arch = "x86_64")]
type F32Kernel = unsafe fn(usize, *const f32, usize, *const f32, Tile);

#[cfg(target_arch = "x86_64")]
fn f32_kernel(avx512: bool) -> F32Kernel {
    if avx512 {
        avx512::kernel_f32
    } else {
        avx2::kernel_f32
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum WeightSlice {
    F32(*const f32),
    Bf16(*const u16),
    Tiles(*const u16),
}

/// The element type of a product's left operand, packed ([`linear_rows`]) or read in place
/// ([`linear_windows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elements {
    F32,
    /// f32 holding bf16-rounded values (bf16 arithmetic on the f32 kernels).
    F32Rounded,
    /// bf16 bits, for `vdpbf16ps` and AMX.
    Bf16,
}

/// The values of a [`Windows`] operand.
#[derive(Clone, Copy)]
pub enum WindowData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// The left operand of [`linear_windows`], read in place from an image instead of packed: the
/// rows are the `height x width` output pixels in row-major order, and row `(y, x)` is the
/// concatenation of `segments` runs of `K / segments` values, run `g` starting at element
/// `((y + g) * pitch + x) * step` of `data`. A same-padded `k x k` stride-1 convolution of an
/// image with a zero border of `k / 2` pixels (`pitch` pixels per bordered row, `step = C`
/// channels per pixel) is this with `segments = k`: run `g` is kernel row `g`, `k` neighbouring
/// pixels of `C` channels, which lie next to each other in memory. Windows of neighbouring
/// pixels overlap; nothing is copied.
#[derive(Clone, Copy)]
pub struct Windows<'a> {
    pub data: WindowData<'a>,
    pub height: usize,
    pub width: usize,
    pub pitch: usize,
    pub step: usize,
    pub segments: usize,
}

impl Windows<'_> {
    /// Elements `data` must hold: the last row's last run, plus the rows a register tile reads
    /// past the end of an image row.
    pub fn needed(&self, k: usize) -> usize {
        ((self.height + self.segments - 1) * self.pitch + MR) * self.step + k / self.segments
    }
}

/// The element type [`linear_windows`] needs for products with `w` on runs of `run` values, or
/// `None` when they need packed rows and [`linear_rows`] must be used: the portable level, AMX
/// tiles, and odd runs over bf16 weights (stored in pairs of `k`, a run must start on a pair).
pub fn window_elements(w: &PackedMatrix, run: usize) -> Option<Elements> {
    #[cfg(target_arch = "x86_64")]
    if let Some(plan) = w.plan() {
        let pairs = !matches!(plan.panels, Panels::F32(_));
        if pairs && run % 2 == 1 {
            return None;
        }
        return match plan.panels {
            Panels::Tiles { .. } => None,
            _ => Some(plan.rows),
        };
    }
    let _ = (w, run);
    None
}

/// `out[M, N] = a · wᵀ (+ bias)` with `a` read in place ([`Windows`], `M = height x width`),
/// over all cores by output rows of the image. `a.data` must be of [`window_elements`]'s type
/// for `w` and its run length, and hold [`Windows::needed`] elements.
pub fn linear_windows(a: &Windows, w: &PackedMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    let m = a.height * a.width;
    assert_eq!(out.len(), m * n, "linear_windows: out is not [M,N]");
    assert!(
        a.segments > 0 && k % a.segments == 0,
        "linear_windows: K is not a whole number of runs"
    );
    let len = match a.data {
        WindowData::F32(d) => d.len(),
        WindowData::Bf16(d) => d.len(),
    };
    assert!(len >= a.needed(k), "linear_windows: data is too short");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear_windows: bias is not [N]");
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(plan) = w.plan() {
        return windows(a, plan, bias, k, n, out);
    }
    unreachable!("linear_windows: no window plan for this weight (see window_elements)");
}

#[cfg(target_arch = "x86_64")]
fn windows(a: &Windows, plan: Product, bias: Option<&[f32]>, k: usize, n: usize, out: &mut [f32]) {
    let Product {
        panels,
        rows,
        kp,
        avx512,
    } = plan;
    let seg = k / a.segments;
    assert!(
        matches!(panels, Panels::F32(_)) || seg % 2 == 0,
        "linear_windows: runs over bf16 weights must have even length"
    );
    let (kc_max, elements) = match (a.data, rows) {
        (WindowData::Bf16(d), Elements::Bf16) => (KC_BF16, WindowData::Bf16(d)),
        (WindowData::F32(d), Elements::F32 | Elements::F32Rounded) => (KC_F32, WindowData::F32(d)),
        _ => panic!("linear_windows: data of the wrong element type for this weight"),
    };
    let n_blocks = n.div_ceil(NC);
    let nc = n.div_ceil(n_blocks).div_ceil(NR) * NR;
    // Image rows in chunks of about MC pixels, so a chunk's input rows and outputs stay in L2
    // while every panel passes over them.
    let x_chunks = a.width.div_ceil(MC);
    let xc = a.width.div_ceil(x_chunks).div_ceil(MR) * MR;
    let o = OutPtr(out.as_mut_ptr());
    // One task: a chunk of output row `y` of the image, columns of block `nb`. For each kernel
    // row `g`, panel and slice of the run, the weight slice stays in L1 while the chunk's
    // pixels stream past it in register tiles of MR pixels.
    let task = |t: usize| {
        let (y, xi, nb) = (
            t / (x_chunks * n_blocks),
            (t / n_blocks) % x_chunks,
            t % n_blocks,
        );
        let (x_start, x_end) = (xi * xc, ((xi + 1) * xc).min(a.width));
        let (n0, n1) = (nb * nc, ((nb + 1) * nc).min(n));
        let mut panel = PANEL.take();
        let o = o;
        for g in 0..a.segments {
            for p in n0 / NR..n1.div_ceil(NR) {
                let c0 = p * NR;
                let cols = (n1 - c0).min(NR);
                let mut pc = 0;
                while pc < seg {
                    let kc = kc_max.min(seg - pc);
                    let init = tile_init(g == 0 && pc == 0, bias, c0);
                    let wp = panels.slice((p * kp + g * seg + pc) * NR, kc, avx512, &mut panel);
                    for x0 in (x_start..x_end).step_by(MR) {
                        let at = ((y + g) * a.pitch + x0) * a.step + pc;
                        // SAFETY: `needed` elements exist (asserted), so the MR rows of kc
                        // values at `at`, `step` apart, are inside data; the weight slice holds
                        // kc * NR values; rows y * width + x0.. (at most MR, inside the image
                        // row) and columns c0..c0 + cols of out belong to this task alone.
                        unsafe {
                            let tile = Tile {
                                c: o.0.add((y * a.width + x0) * n + c0),
                                ldc: n,
                                rows: (x_end - x0).min(MR),
                                cols,
                                init,
                                gelu: false,
                            };
                            match (wp, elements) {
                                (WeightSlice::F32(b), WindowData::F32(d)) => {
                                    f32_kernel(avx512)(kc, d[at..].as_ptr(), a.step, b, tile)
                                }
                                (WeightSlice::Bf16(b), WindowData::Bf16(d)) => {
                                    avx512::kernel_bf16(kc, d[at..].as_ptr(), a.step, b, tile)
                                }
                                _ => unreachable!("the element type follows the plan"),
                            }
                        }
                    }
                    pc += kc;
                }
            }
        }
        PANEL.set(panel);
    };
    let tasks = a.height * x_chunks * n_blocks;
    if 2 * a.height * a.width * n * k < 1 << 21 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// The layout of the packed activations: per tile of `rows` rows ([`MR`], or 32 for AMX), per
/// slice of `kc <= kc_max` values of `k` (from `0` to `kp`), `rows` rows of `kc` values
/// `kc + pad` apart.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct RowTiles {
    rows: usize,
    kp: usize,
    kc_max: usize,
    pad: usize,
}

#[cfg(target_arch = "x86_64")]
impl RowTiles {
    /// Elements per tile.
    fn len(&self) -> usize {
        self.rows * (self.kp + self.kp.div_ceil(self.kc_max) * self.pad)
    }

    /// Where, in a tile, the slice starting at `pc` begins.
    fn slice(&self, pc: usize) -> usize {
        self.rows * (pc + (pc / self.kc_max) * self.pad)
    }

    /// Distance between the rows of a slice of `kc` values.
    fn stride(&self, kc: usize) -> usize {
        kc + self.pad
    }
}

/// Copies the rows of `x` into row tiles laid out as `layout` says; rows past M and k past K are
/// zero.
#[cfg(target_arch = "x86_64")]
fn pack_rows(
    x: &dyn RowSource,
    m: usize,
    k: usize,
    layout: RowTiles,
    kind: Elements,
    rows: &mut Aligned,
) {
    let RowTiles {
        rows: mr,
        kp,
        kc_max,
        ..
    } = layout;
    let tile_len = layout.len();
    let tiles = m.div_ceil(mr);
    // How many of the `kc` values of row `row`'s slice at `pc` are inside x.
    let valid = |row: usize, pc: usize, kc: usize| {
        if row < m {
            k.saturating_sub(pc).min(kc)
        } else {
            0
        }
    };
    // The valid part of row `row`'s slice at `pc`, filled into `d` (`kc` values).
    let fill_f32 = |row: usize, pc: usize, kc: usize, d: &mut [f32]| {
        let len = valid(row, pc, kc);
        if len > 0 {
            x.fill(row, pc, &mut d[..len]);
        }
        d[len..kc].fill(0.0);
    };
    if kind == Elements::Bf16 {
        // bf16 rows are packed for vdpbf16ps (AVX512-BF16 present) or AMX (present too, except
        // on the tile model in tests).
        let buf = &mut rows.u16s_mut()[..tiles * tile_len];
        buf.par_chunks_mut(tile_len).enumerate().for_each(|(t, d)| {
            // f32 values for the rows not in `x` whole (filled before each use).
            let mut tmp = Vec::new();
            let mut pc = 0;
            while pc < kp {
                let kc = kc_max.min(kp - pc);
                for r in 0..mr {
                    let row = t * mr + r;
                    let base = layout.slice(pc) + r * layout.stride(kc);
                    let dst = &mut d[base..base + kc];
                    let len = valid(row, pc, kc);
                    let whole = if len == kc {
                        x.slice(row, pc, len)
                    } else {
                        None
                    };
                    let src = match whole {
                        Some(src) => src,
                        None => {
                            tmp.resize(kc, 0.0);
                            fill_f32(row, pc, kc, &mut tmp);
                            &tmp[..kc]
                        }
                    };
                    bf16::round_into(src, dst);
                }
                pc += kc;
            }
        });
    } else {
        let buf = &mut rows.f32s_mut()[..tiles * tile_len];
        buf.par_chunks_mut(tile_len).enumerate().for_each(|(t, d)| {
            let mut pc = 0;
            while pc < kp {
                let kc = kc_max.min(kp - pc);
                for r in 0..mr {
                    let base = layout.slice(pc) + r * layout.stride(kc);
                    let row = &mut d[base..base + kc];
                    fill_f32(t * mr + r, pc, kc, row);
                    if kind == Elements::F32Rounded {
                        bf16::round_(row);
                    }
                }
                pc += kc;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference::{naive_linear, AWKWARD_PRODUCTS};

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503))
                    >> 8)
                    % 2001) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| bf16::round(x)).collect()
    }

    fn gelu(v: f32) -> f32 {
        let mut x = [v];
        crate::cpu::act::gelu_tanh_(&mut x);
        x[0]
    }

    /// `linear` with `pw` against `naive_linear` on the values the product uses (`wv`, the
    /// weight as stored), without and with bias, with GELU; returns the worst error as a
    /// fraction of the tolerance.
    fn check_linear(label: &str, pw: &PackedMatrix, x: &[f32], wv: &[f32], b: &[f32]) -> f32 {
        let (n, k) = (pw.n(), pw.k());
        let m = x.len() / k;
        assert_eq!(pw.to_rows(), wv, "{label}: unpack");
        let xv = if pw.compute == Compute::Bf16 {
            round(x)
        } else {
            x.to_vec()
        };
        let mut worst = 0.0f32;
        for (bias, epi) in [
            (None, Epilogue::None),
            (Some(b), Epilogue::None),
            (Some(b), Epilogue::GeluTanh),
        ] {
            let mut out = vec![f32::NAN; m * n];
            linear(x, pw, bias, epi, &mut out);
            let mut want = naive_linear(&xv, wv, bias, m, k, n);
            if epi == Epilogue::GeluTanh {
                want.iter_mut().for_each(|v| *v = gelu(*v));
            }
            let scale = (k as f32).sqrt();
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                let err = (g - r).abs() / (2e-6 * scale * (1.0 + r.abs()));
                worst = worst.max(err);
                assert!(
                    err <= 1.0,
                    "{label} ({m},{k},{n}) {epi:?} bias {} element {i}: {g} vs {r}",
                    bias.is_some()
                );
            }
        }
        worst
    }

    /// `vdpbf16ps` and widened bf16 (the two AVX-512 bf16 paths) both exact up to the order of
    /// the sums, whichever one the CPU family table picks.
    #[test]
    fn both_bf16_paths_match_naive_whatever_the_table_says() {
        if Isa::detect() < Isa::Avx512Bf16 {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for path in [Bf16Path::Dot, Bf16Path::Widened] {
            for &(m, k, n) in &[(1, 1, 1), (13, 7, 33), (37, 1030, 545)] {
                let (x, w, b) = (pseudo(m * k, 1), pseudo(n * k, 2), pseudo(n, 3));
                let pw = PackedMatrix::with_isa(
                    Source::F32(&w),
                    n,
                    k,
                    Storage::Bf16,
                    Compute::Bf16,
                    Isa::Avx512Bf16,
                )
                .with_bf16_path(path);
                assert!(pw.kernel().contains(path.name()), "{}", pw.kernel());
                check_linear(&format!("{path:?}"), &pw, &x, &round(&w), &b);
            }
        }
    }

    /// Every instruction set this CPU has, every storage/arithmetic pair, shapes that cut the
    /// register tile, the k slices and the blocks at odd places.
    #[test]
    fn packed_linear_matches_naive() {
        let isas = [
            Isa::Portable,
            Isa::Avx2,
            Isa::Avx512,
            Isa::Avx512Bf16,
            Isa::Amx,
        ];
        let untested: Vec<_> = isas.iter().filter(|&&i| i > Isa::detect()).collect();
        if !untested.is_empty() {
            println!("skipped (not on this CPU): {untested:?}");
        }
        let modes = [
            (Storage::F32, Compute::F32),
            (Storage::Bf16, Compute::F32),
            (Storage::Bf16, Compute::Bf16),
        ];
        for isa in isas.into_iter().filter(|&i| i <= Isa::detect()) {
            let mut worst = 0.0f32;
            for (storage, compute) in modes {
                for &(m, k, n) in &AWKWARD_PRODUCTS {
                    let (x, w, b) = (pseudo(m * k, 1), pseudo(n * k, 2), pseudo(n, 3));
                    let pw = PackedMatrix::with_isa(Source::F32(&w), n, k, storage, compute, isa);
                    let wv = match storage {
                        Storage::F32 => w,
                        Storage::Bf16 => round(&w),
                    };
                    let label = format!("{isa:?} {storage:?}/{compute:?}");
                    worst = worst.max(check_linear(&label, &pw, &x, &wv, &b));
                }
            }
            println!("{isa:?}: worst error {worst:.3} of tolerance");
        }
    }

    /// The whole AMX path (activations packed into 32-row bf16 tiles, weight panels padded to
    /// 32 values of k, blocks over threads, k slices, the 16- and 32-row kernels) with every tile
    /// instruction run by the software model, on every shape of `AWKWARD_PRODUCTS`: rows 1 to
    /// 700 (m blocks), columns not a multiple of 32, k not a multiple of 32 and over one or two
    /// slice bounds.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_path_on_the_tile_model_matches_naive() {
        let mut worst = 0.0f32;
        for &(m, k, n) in &AWKWARD_PRODUCTS {
            let (x, w, b) = (pseudo(m * k, 1), pseudo(n * k, 2), pseudo(n, 3));
            let pw = PackedMatrix::on_tile_model(Source::F32(&w), n, k);
            assert_eq!(pw.kernel(), "amx (tile model)");
            worst = worst.max(check_linear("AMX tile model", &pw, &x, &round(&w), &b));
        }
        println!("AMX on the tile model: worst error {worst:.3} of tolerance");
    }

    /// `f` on a pool of one thread. The bits of a product do not depend on the threads; CI's
    /// ThreadSanitizer stage runs these tests, and there every copy into the reused packed rows
    /// from another worker is a (suppressed, uninstrumented Rust) report: minutes on big shapes.
    fn on_one_worker(f: impl FnOnce() + Send) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        pool.expect("a one-thread pool").install(f);
    }

    /// Products of the same rows run together give the bits of each run alone: weights that
    /// pack the rows alike (one pool of tasks), on every level this CPU has and on the AMX tile
    /// model, and an f32 weight beside a bf16 one (one product after the other).
    #[test]
    fn products_sharing_rows_equal_each_alone() {
        on_one_worker(|| {
            let levels = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];
            let modes = [(Storage::F32, Compute::F32), (Storage::Bf16, Compute::Bf16)];
            for (m, k) in [(1, 5), (29, 64), (37, 1030), (700, 96)] {
                let x = pseudo(m * k, 1);
                let weight = |i: usize, n: usize, (storage, compute), isa| {
                    let w = pseudo(n * k, 2 + i as u32);
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        None => PackedMatrix::on_tile_model(Source::F32(&w), n, k),
                        #[cfg(not(target_arch = "x86_64"))]
                        None => unreachable!("the tile model is x86_64 only"),
                        Some(isa) => {
                            PackedMatrix::with_isa(Source::F32(&w), n, k, storage, compute, isa)
                        }
                    }
                };
                let mut sets: Vec<(String, Vec<PackedMatrix>)> = Vec::new();
                for isa in levels.into_iter().filter(|&i| i <= Isa::detect()) {
                    for mode in modes {
                        let ws = [40, 7, 96].iter().enumerate();
                        let ws = ws.map(|(i, &n)| weight(i, n, mode, Some(isa))).collect();
                        sets.push((format!("{isa:?} {mode:?}"), ws));
                    }
                    let mixed = vec![
                        weight(0, 40, modes[0], Some(isa)),
                        weight(1, 7, modes[1], Some(isa)),
                    ];
                    sets.push((format!("{isa:?} f32 beside bf16"), mixed));
                }
                if cfg!(target_arch = "x86_64") {
                    let ws = [40, 7, 96].iter().enumerate();
                    let ws = ws.map(|(i, &n)| weight(i, n, modes[1], None)).collect();
                    sets.push(("AMX tile model".into(), ws));
                }
                for (label, ws) in &sets {
                    let biases: Vec<Vec<f32>> = ws.iter().map(|w| pseudo(w.n(), 9)).collect();
                    let epilogues = [Epilogue::GeluTanh, Epilogue::None, Epilogue::None];
                    let bias = |i: usize| (i != 1).then_some(biases[i].as_slice());
                    let mut outs: Vec<Vec<f32>> =
                        ws.iter().map(|w| vec![f32::NAN; m * w.n()]).collect();
                    let mut parts: Vec<Part<'_>> = ws
                        .iter()
                        .zip(outs.iter_mut())
                        .enumerate()
                        .map(|(i, (w, out))| Part {
                            w,
                            bias: bias(i),
                            epilogue: epilogues[i],
                            out,
                        })
                        .collect();
                    linear_many(&x, &mut parts);
                    for (i, (w, out)) in ws.iter().zip(&outs).enumerate() {
                        let mut alone = vec![f32::NAN; m * w.n()];
                        linear(&x, w, bias(i), epilogues[i], &mut alone);
                        let same = alone
                            .iter()
                            .zip(out)
                            .all(|(a, o)| a.to_bits() == o.to_bits());
                        assert!(
                            same,
                            "{label} ({m},{k}) product {i} differs from the product alone"
                        );
                    }
                }
            }
        });
    }

    /// Weights packed from strided views (rows `ld` apart, or a transposed `[K, N]`) hold what
    /// packing the gathered matrix holds, and strided activation rows give the product of the
    /// gathered rows: every level this CPU has, both storages, the AMX tile model; odd `k`.
    #[test]
    fn strided_views_pack_as_their_gathered_copies() {
        on_one_worker(|| {
            let levels = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];
            let modes = [(Storage::F32, Compute::F32), (Storage::Bf16, Compute::Bf16)];
            for (n, k, ld) in [(1, 1, 3), (45, 37, 50), (333, 64, 400), (64, 333, 340)] {
                let big = pseudo(ld * n.max(k), 5);
                // The [N, K] each view reads.
                let rows: Vec<f32> = (0..n * k).map(|i| big[(i / k) * ld + i % k]).collect();
                let cols: Vec<f32> = (0..n * k).map(|i| big[(i % k) * ld + i / k]).collect();
                let x = pseudo(7 * ld, 6);
                let xs: Vec<f32> = (0..7 * k).map(|i| x[(i / k) * ld + i % k]).collect();
                let strided_x = StridedRows {
                    x: &x,
                    ld,
                    k,
                    rows: 7,
                };
                for transposed in [false, true] {
                    let want = if transposed { &cols } else { &rows };
                    let view = Source::Strided {
                        x: &big,
                        ld,
                        transposed,
                    };
                    let mut packs: Vec<(String, PackedMatrix, PackedMatrix)> = Vec::new();
                    for isa in levels.into_iter().filter(|&i| i <= Isa::detect()) {
                        for (storage, compute) in modes {
                            let a = PackedMatrix::with_isa(view, n, k, storage, compute, isa);
                            let b = PackedMatrix::with_isa(
                                Source::F32(want),
                                n,
                                k,
                                storage,
                                compute,
                                isa,
                            );
                            packs.push((format!("{isa:?} {storage:?}"), a, b));
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    packs.push((
                        "AMX tile model".into(),
                        PackedMatrix::on_tile_model(view, n, k),
                        PackedMatrix::on_tile_model(Source::F32(want), n, k),
                    ));
                    for (label, a, b) in &packs {
                        let at = format!("{label} ({n},{k}) ld {ld} transposed {transposed}");
                        assert_eq!(a.to_rows(), b.to_rows(), "{at}: unpacked");
                        let (mut got, mut alone) = (vec![f32::NAN; 7 * n], vec![f32::NAN; 7 * n]);
                        linear_rows(&strided_x, a, None, Epilogue::None, &mut got);
                        linear(&xs, b, None, Epilogue::None, &mut alone);
                        let same = got
                            .iter()
                            .zip(&alone)
                            .all(|(g, w)| g.to_bits() == w.to_bits());
                        assert!(same, "{at}: product");
                    }
                }
            }
        });
    }

    /// A product on two matrices side by side equals the product on their concatenation, to
    /// the bit, for each arithmetic, with the seam inside and on a k slice bound.
    #[test]
    fn concat_rows_equal_the_concatenation() {
        for (m, ka, kb, n) in [(3, 5, 7, 9), (29, 1024, 1100, 40), (13, 1000, 24, 33)] {
            let (a, b, w) = (
                pseudo(m * ka, 1),
                pseudo(m * kb, 2),
                pseudo(n * (ka + kb), 3),
            );
            let cat: Vec<f32> = a
                .chunks_exact(ka)
                .zip(b.chunks_exact(kb))
                .flat_map(|(ra, rb)| ra.iter().chain(rb).copied())
                .collect();
            for (storage, compute) in [(Storage::F32, Compute::F32), (Storage::Bf16, Compute::Bf16)]
            {
                let pw = PackedMatrix::new(&w, n, ka + kb, storage, compute);
                let (mut want, mut got) = (vec![0.0; m * n], vec![f32::NAN; m * n]);
                linear(&cat, &pw, None, Epilogue::None, &mut want);
                let x = Concat {
                    a: &a,
                    ka,
                    b: &b,
                    kb,
                };
                linear_rows(&x, &pw, None, Epilogue::None, &mut got);
                assert_eq!(got, want, "({m}, {ka}, {kb}, {n}) {compute:?}");
            }
        }
    }

    #[test]
    fn packing_bf16_bits_equals_packing_their_values() {
        let (n, k) = (45, 37);
        let w = round(&pseudo(n * k, 4));
        let bits: Vec<u16> = w.iter().map(|&v| bf16::bits(v)).collect();
        for compute in [Compute::F32, Compute::Bf16] {
            let a = PackedMatrix::from_bf16_bits(&bits, n, k, compute);
            let b = PackedMatrix::new(&w, n, k, Storage::Bf16, compute);
            assert_eq!(a.to_rows(), w);
            let x = pseudo(3 * k, 5);
            let (mut oa, mut ob) = (vec![0.0; 3 * n], vec![0.0; 3 * n]);
            linear(&x, &a, None, Epilogue::None, &mut oa);
            linear(&x, &b, None, Epilogue::None, &mut ob);
            assert_eq!(oa, ob);
        }
    }

    #[test]
    fn vector_bf16_rounding_equals_scalar() {
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() >= Isa::Avx512Bf16 {
            let x = pseudo(100, 9).iter().map(|v| v * 3.7).collect::<Vec<_>>();
            let mut h = vec![0u16; 100];
            // SAFETY: checked above.
            unsafe { avx512::to_bf16(&x, &mut h) };
            let want: Vec<u16> = x.iter().map(|&v| bf16::bits(v)).collect();
            assert_eq!(h, want);
            return;
        }
        println!("skipped: this CPU has no AVX512-BF16");
    }
}
