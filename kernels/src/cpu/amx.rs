//! AMX-BF16 micro-kernel for the packed bf16 products (`packed.rs`), written once over a small
//! [`TileUnit`] interface that two units implement: the hardware (`Amx`, inline `asm!`, x86_64)
//! and a software model ([`TileModel`], any CPU, any architecture) that the tests run the same
//! kernel on.
//!
//! Data mapping. One call of [`block`] computes a `32 x 32` f32 block (`16 x 32` when the row
//! tile holds at most 16 valid rows) of `x · Wᵀ` for one `kc` slice of `k`:
//! - activations: a row tile of [`MR`] = 32 rows of `kc` bf16 values, `lda` elements apart
//!   (`kc` a multiple of [`KSTEP`] = 32, zero padded); an A tile is 16 of those rows x 32 bf16
//!   (64 bytes), loaded with a row stride of `2 lda` bytes;
//! - weights: the packed bf16 panel slice `[kc/2][NR][2]` (`NR` = 32 columns, pairs of `k`
//!   interleaved per column), which is exactly the B tile layout: one B tile is 16 k-pairs x
//!   16 columns x 2 bf16 = 16 rows of 64 bytes, 128 bytes apart; columns 16..32 start 64 bytes
//!   further;
//! - accumulators: four C tiles of 16 x 16 f32, `C[i][j] = A_i · B_j` (tmm0..3 = C00, C01, C10,
//!   C11; tmm4..5 = A0, A1; tmm6..7 = B0, B1). One tile configuration (every tile 16 rows x
//!   64 bytes) serves both block heights.
//!
//! Per step of 32 values of `k`: two A loads, two B loads, four `TDPBF16PS`, each `16 x 16 x 32`
//! multiply-adds of bf16 pairs with f32 accumulation. At the end of the slice the C tiles are
//! stored to a 4 KiB scratch block ([`Acc`]) and the epilogue ([`finish`], AVX-512 where the CPU
//! has it) combines them with the output (bias, or the partial sums of earlier slices), applies
//! GELU-tanh on the last slice and writes the `rows x cols` that exist.
//!
//! Limits (Intel's published figures for Sapphire Rapids, not measured here: this machine has no
//! AMX): a full-size `TDPBF16PS` issues every 16 cycles, 1024 bf16 flop/cycle/core, at least
//! eight times the AVX-512 rate. The four per step take 64 cycles and load 4 KiB of tiles: the
//! B panel slice stays in L1 (`kc = 512` gives 32 KiB, `packed.rs`) while the row tiles stream
//! from L2 at 32 B/cycle. By estimate the epilogue costs about a tenth of a 32 x 32 x 512 block,
//! more for short `k`. Small `m` wastes work: a block is at least 16 rows.
//!
//! Using AMX on Linux needs the tile data state granted to the process: `isa.rs` asks once
//! ([`super::isa::amx_status`]); the hardware unit `Amx` exists only after a yes.

use super::tile::{Init, Tile, NR};

/// Rows of a packed activation tile (two A tiles).
pub const MR: usize = 32;
/// Values of `k` per tile step (16 bf16 pairs, 64 bytes of an A row).
pub const KSTEP: usize = 32;
/// Rows of one tile.
const TILE_ROWS: usize = 16;
/// Bytes of one tile row.
const TILE_BYTES: usize = 64;

const _: () = assert!(
    NR == 2 * 16,
    "the block is two B tiles of 16 f32 columns wide"
);

/// A tile register, `tmm0..tmm7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tmm(pub u8);

/// The micro-kernel's register plan.
const C: [[Tmm; 2]; 2] = [[Tmm(0), Tmm(1)], [Tmm(2), Tmm(3)]];
const A: [Tmm; 2] = [Tmm(4), Tmm(5)];
const B: [Tmm; 2] = [Tmm(6), Tmm(7)];

/// The 64-byte operand of `LDTILECFG`: byte 0 the palette, byte 1 the start row, bytes 16..32
/// the bytes per row of tmm0..7 (`u16` each), bytes 48..56 their rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TileConfig([u8; 64]);

impl TileConfig {
    /// Palette 1 with tile `t` shaped `shapes[t] = (rows, bytes per row)`.
    pub fn new(shapes: [(u8, u16); 8]) -> Self {
        let mut b = [0u8; 64];
        b[0] = 1;
        for (t, (rows, colsb)) in shapes.into_iter().enumerate() {
            b[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            b[48 + t] = rows;
        }
        TileConfig(b)
    }

    /// Every tile full size (16 rows of 64 bytes): the micro-kernel's configuration.
    pub fn full() -> Self {
        Self::new([(TILE_ROWS as u8, TILE_BYTES as u16); 8])
    }

    pub fn palette(&self) -> u8 {
        self.0[0]
    }

    pub fn rows(&self, t: Tmm) -> usize {
        self.0[48 + t.0 as usize] as usize
    }

    pub fn colsb(&self, t: Tmm) -> usize {
        let i = 16 + 2 * t.0 as usize;
        u16::from_le_bytes([self.0[i], self.0[i + 1]]) as usize
    }
}

/// The tile instructions the micro-kernel uses. Tile state belongs to the thread: configure,
/// use and release on one thread.
pub trait TileUnit {
    /// `LDTILECFG`: shapes the tiles and zeroes them.
    ///
    /// # Safety
    /// A valid palette-1 configuration (rows <= 16, bytes per row <= 64 and a multiple of 4).
    unsafe fn configure(&mut self, cfg: &TileConfig);

    /// `TILEZERO t`.
    ///
    /// # Safety
    /// The unit is configured.
    unsafe fn zero(&mut self, t: Tmm);

    /// `TILELOADD t, [base + stride]`: the tile's rows, `stride` bytes apart, each its
    /// configured bytes per row.
    ///
    /// # Safety
    /// The unit is configured; `base + r * stride .. + colsb` is readable for every row `r`.
    unsafe fn load(&mut self, t: Tmm, base: *const u8, stride: usize);

    /// `TILESTORED [base + stride], t`.
    ///
    /// # Safety
    /// As [`TileUnit::load`], writable.
    unsafe fn store(&mut self, t: Tmm, base: *mut u8, stride: usize);

    /// `TDPBF16PS c, a, b`: `c[m][n] += Σ_p a[m][2p] b[p][2n] + a[m][2p+1] b[p][2n+1]`, bf16
    /// pairs, f32 accumulators.
    ///
    /// # Safety
    /// The unit is configured; `c`, `a`, `b` distinct, with `c.rows == a.rows`,
    /// `a.colsb == 4 b.rows`, `c.colsb == b.colsb`.
    unsafe fn dpbf16(&mut self, c: Tmm, a: Tmm, b: Tmm);

    /// `TILERELEASE`: back to the unconfigured state.
    ///
    /// # Safety
    /// None beyond the unit's own (releasing twice is allowed).
    unsafe fn release(&mut self);
}

/// The f32 block of one micro-kernel call, `[MR][NR]` row-major.
#[repr(C, align(64))]
pub struct Acc(pub [f32; MR * NR]);

impl Default for Acc {
    fn default() -> Self {
        Acc([0.0; MR * NR])
    }
}

/// The operands of one block for one `kc` slice of `k`: the row tile `a` (bf16 bits, rows `lda`
/// elements apart) and the weight's pair panel slice `b` (`[kc/2][NR][2]`).
#[derive(Clone, Copy, Debug)]
pub struct Operands {
    /// Values of `k` in the slice, a multiple of [`KSTEP`].
    pub kc: usize,
    pub a: *const u16,
    pub lda: usize,
    pub b: *const u16,
}

/// `acc[16 H, NR] = a[16 H, kc] · b[kc, NR]` with `H` A tiles (1 or 2) of `ops`. The unit must
/// hold [`TileConfig::full`].
///
/// # Safety
/// `kc` a multiple of [`KSTEP`]; `a` holds `16 H` rows of `kc` values at stride `lda`; `b` holds
/// `kc * NR` values.
#[inline(always)]
pub unsafe fn product<U: TileUnit, const H: usize>(u: &mut U, ops: Operands, acc: &mut Acc) {
    let Operands { kc, a, lda, b } = ops;
    debug_assert!(kc.is_multiple_of(KSTEP) && (1..=2).contains(&H));
    for row in &C[..H] {
        for &c in row {
            u.zero(c);
        }
    }
    let a_stride = 2 * lda;
    // One pair row of the panel: NR columns x 2 bf16.
    let b_stride = NR * 2 * 2;
    for kk in (0..kc).step_by(KSTEP) {
        let bp = b.add(kk * NR) as *const u8;
        u.load(B[0], bp, b_stride);
        u.load(B[1], bp.add(TILE_BYTES), b_stride);
        for (i, &ai) in A[..H].iter().enumerate() {
            u.load(ai, a.add(i * TILE_ROWS * lda + kk) as *const u8, a_stride);
            u.dpbf16(C[i][0], ai, B[0]);
            u.dpbf16(C[i][1], ai, B[1]);
        }
    }
    for (i, row) in C[..H].iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            let dst = acc.0.as_mut_ptr().add(i * TILE_ROWS * NR + j * 16);
            u.store(c, dst as *mut u8, NR * 4);
        }
    }
}

/// Combines the block `acc` with the output as `t` says (`out = init + acc`), applies GELU-tanh
/// when asked, and writes `t.rows x t.cols` of `t.c`: with AVX-512 when the CPU has it (always
/// where AMX is), else element by element.
///
/// # Safety
/// `t.c` holds `t.rows` rows of `t.cols` values at stride `t.ldc`, written by nobody else during
/// the call; a bias holds `t.cols` values; `t.rows <= MR`, `t.cols <= NR`.
pub unsafe fn finish(acc: &Acc, t: &Tile) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::detect() >= super::isa::Isa::Avx512 {
        return finish_avx512(acc, t);
    }
    finish_scalar(acc, t)
}

/// [`finish`] element by element (GELU through `act::gelu_tanh_`).
///
/// # Safety
/// As [`finish`].
unsafe fn finish_scalar(acc: &Acc, t: &Tile) {
    for r in 0..t.rows {
        let src = &acc.0[r * NR..r * NR + t.cols];
        let dst = std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), t.cols);
        match t.init {
            Init::Zero => dst.copy_from_slice(src),
            Init::Load => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
            Init::Bias(b) => {
                let b = std::slice::from_raw_parts(b, t.cols);
                dst.iter_mut()
                    .zip(src.iter().zip(b))
                    .for_each(|(d, (s, b))| *d = s + b);
            }
        }
        if t.gelu {
            super::act::gelu_tanh_(dst);
        }
    }
}

/// [`finish`] on two zmm vectors per row, the columns past `t.cols` masked off.
///
/// # Safety
/// As [`finish`]; `avx512f` present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_avx512(acc: &Acc, t: &Tile) {
    use super::simd::gelu_tanh;
    use std::arch::x86_64::*;
    let mask = |cols: usize| ((1u32 << cols.min(16)) - 1) as __mmask16;
    let m = [mask(t.cols), mask(t.cols.saturating_sub(16))];
    let bias = match t.init {
        Init::Bias(b) => [
            _mm512_maskz_loadu_ps(m[0], b),
            _mm512_maskz_loadu_ps(m[1], b.add(16)),
        ],
        _ => [_mm512_setzero_ps(); 2],
    };
    for r in 0..t.rows {
        let row = t.c.add(r * t.ldc);
        for h in 0..2 {
            let mut v = _mm512_load_ps(acc.0.as_ptr().add(r * NR + 16 * h));
            match t.init {
                Init::Zero => {}
                Init::Load => {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m[h], row.add(16 * h)));
                }
                Init::Bias(_) => v = _mm512_add_ps(v, bias[h]),
            }
            if t.gelu {
                v = gelu_tanh(v);
            }
            _mm512_mask_storeu_ps(row.add(16 * h), m[h], v);
        }
    }
}

/// One block: `t (+)= a[t.rows, kc] · b[kc, NR]` of `ops`, the 16-row product when
/// `t.rows <= 16`.
///
/// # Safety
/// As [`product`] and [`finish`]; `a` holds 32 rows when `t.rows > 16`, else 16.
#[inline(always)]
pub unsafe fn block<U: TileUnit>(u: &mut U, ops: Operands, acc: &mut Acc, t: &Tile) {
    if t.rows > TILE_ROWS {
        product::<U, 2>(u, ops, acc);
    } else {
        product::<U, 1>(u, ops, acc);
    }
    finish(acc, t);
}

/// The micro-kernel on a configured tile unit, for one thread's share of a product: configured
/// with [`TileConfig::full`] when made, released when dropped. Tile state belongs to the thread,
/// so a `Kernel` stays on the thread that made it (not `Send`).
pub struct Kernel {
    unit: Unit,
    acc: Acc,
    _thread: std::marker::PhantomData<*const ()>,
}

enum Unit {
    #[cfg(target_arch = "x86_64")]
    Hardware(Amx),
    Model(TileModel),
}

impl Kernel {
    /// On this CPU's tiles; `None` when AMX is not usable.
    #[cfg(target_arch = "x86_64")]
    pub fn hardware() -> Option<Kernel> {
        Amx::new().map(|u| Kernel::configured(Unit::Hardware(u)))
    }

    /// On the software model (any CPU).
    pub fn model() -> Kernel {
        Kernel::configured(Unit::Model(TileModel::default()))
    }

    fn configured(mut unit: Unit) -> Kernel {
        let cfg = TileConfig::full();
        // SAFETY: the full configuration is valid for palette 1.
        unsafe {
            match &mut unit {
                #[cfg(target_arch = "x86_64")]
                Unit::Hardware(u) => u.configure(&cfg),
                Unit::Model(u) => u.configure(&cfg),
            }
        }
        Kernel {
            unit,
            acc: Acc::default(),
            _thread: std::marker::PhantomData,
        }
    }

    /// [`block`] on this kernel's unit.
    ///
    /// # Safety
    /// As [`block`].
    #[inline(always)]
    pub unsafe fn block(&mut self, ops: Operands, t: &Tile) {
        match &mut self.unit {
            #[cfg(target_arch = "x86_64")]
            Unit::Hardware(u) => block(u, ops, &mut self.acc, t),
            Unit::Model(u) => block(u, ops, &mut self.acc, t),
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // SAFETY: releasing needs nothing; the unit was configured on this thread.
        unsafe {
            match &mut self.unit {
                #[cfg(target_arch = "x86_64")]
                Unit::Hardware(u) => u.release(),
                Unit::Model(u) => u.release(),
            }
        }
    }
}

/// The hardware tile unit. A value exists only when AMX is usable ([`super::isa::amx_status`]).
#[cfg(target_arch = "x86_64")]
pub struct Amx(());

#[cfg(target_arch = "x86_64")]
impl Amx {
    pub fn new() -> Option<Amx> {
        super::isa::amx_status().ok().map(|_| Amx(()))
    }
}

/// Expands `$body` with `$t` a literal tile number matching `$tmm`; tile registers are names in
/// the instruction text, so each gets its own `asm!`.
#[cfg(target_arch = "x86_64")]
macro_rules! per_tile {
    ($tmm:expr, $t:ident => $body:expr) => {
        per_tile!(@ $tmm, $t => $body; 0 1 2 3 4 5 6 7)
    };
    (@ $tmm:expr, $t:ident => $body:expr; $($n:tt)*) => {
        match $tmm.0 {
            $(
                $n => {
                    macro_rules! $t { () => { stringify!($n) } }
                    $body
                }
            )*
            t => panic!("no tile register tmm{t}"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for Amx {
    #[inline(always)]
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }

    #[inline(always)]
    unsafe fn zero(&mut self, t: Tmm) {
        per_tile!(t, n => std::arch::asm!(
            concat!("tilezero tmm", n!()),
            options(nostack, nomem, preserves_flags)
        ))
    }

    #[inline(always)]
    unsafe fn load(&mut self, t: Tmm, base: *const u8, stride: usize) {
        per_tile!(t, n => std::arch::asm!(
            concat!("tileloadd tmm", n!(), ", [{b} + {s}*1]"),
            b = in(reg) base,
            s = in(reg) stride,
            options(nostack, readonly, preserves_flags)
        ))
    }

    #[inline(always)]
    unsafe fn store(&mut self, t: Tmm, base: *mut u8, stride: usize) {
        per_tile!(t, n => std::arch::asm!(
            concat!("tilestored [{b} + {s}*1], tmm", n!()),
            b = in(reg) base,
            s = in(reg) stride,
            options(nostack, preserves_flags)
        ))
    }

    /// Encodes the micro-kernel's register plan only: `c` in tmm0..3, `a` in tmm4..5, `b` in
    /// tmm6..7 (each instruction names its registers; 16 triples rather than all 336).
    #[inline(always)]
    unsafe fn dpbf16(&mut self, c: Tmm, a: Tmm, b: Tmm) {
        macro_rules! dp {
            ($($c:literal $a:literal $b:literal),*) => {
                match (c.0, a.0, b.0) {
                    $(
                        ($c, $a, $b) => std::arch::asm!(
                            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                            options(nostack, nomem, preserves_flags)
                        ),
                    )*
                    t => panic!("tdpbf16ps {t:?} is outside the micro-kernel's register plan"),
                }
            };
        }
        dp!(
            0 4 6, 0 4 7, 0 5 6, 0 5 7, 1 4 6, 1 4 7, 1 5 6, 1 5 7,
            2 4 6, 2 4 7, 2 5 6, 2 5 7, 3 4 6, 3 4 7, 3 5 6, 3 5 7
        )
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}

/// A software model of the tile unit: eight 1 KiB tiles and the configuration, with the
/// architectural rules checked (panics where the hardware would fault). `TDPBF16PS` is modelled
/// in f32: input denormals read as zero, each pair's exact products summed, the sum added to the
/// accumulator (round to nearest even), output denormals flushed to zero. The hardware's internal
/// summation order is not specified to the bit, so tests compare with tolerances.
pub struct TileModel {
    cfg: Option<TileConfig>,
    tiles: Box<[[u8; 1024]; 8]>,
}

impl Default for TileModel {
    fn default() -> Self {
        TileModel {
            cfg: None,
            tiles: Box::new([[0; 1024]; 8]),
        }
    }
}

impl TileModel {
    /// `(rows, bytes per row)` of tile `t`; panics when unconfigured (`#UD`).
    fn shape(&self, t: Tmm) -> (usize, usize) {
        assert!(t.0 < 8, "no tile register tmm{}", t.0);
        let cfg = self
            .cfg
            .as_ref()
            .expect("tile instruction before LDTILECFG");
        let shape = (cfg.rows(t), cfg.colsb(t));
        assert!(shape.0 > 0 && shape.1 > 0, "tmm{} is not configured", t.0);
        shape
    }

    fn f32_at(&self, t: Tmm, row: usize, col: usize) -> f32 {
        let o = row * TILE_BYTES + 4 * col;
        f32::from_le_bytes(self.tiles[t.0 as usize][o..o + 4].try_into().unwrap())
    }

    /// Element `i` of row `row` as a bf16 value, denormals read as zero.
    fn bf16_at(&self, t: Tmm, row: usize, i: usize) -> f32 {
        let o = row * TILE_BYTES + 2 * i;
        let h = u16::from_le_bytes([self.tiles[t.0 as usize][o], self.tiles[t.0 as usize][o + 1]]);
        let h = if h & 0x7f80 == 0 { h & 0x8000 } else { h };
        f32::from_bits((h as u32) << 16)
    }
}

fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

impl TileUnit for TileModel {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        assert_eq!(cfg.palette(), 1, "LDTILECFG: only palette 1 is modelled");
        for t in 0..8 {
            let (rows, colsb) = (cfg.rows(Tmm(t)), cfg.colsb(Tmm(t)));
            assert!(
                rows <= TILE_ROWS
                    && colsb <= TILE_BYTES
                    && colsb.is_multiple_of(4)
                    && (rows == 0) == (colsb == 0),
                "LDTILECFG: tmm{t} shaped {rows} x {colsb} bytes"
            );
        }
        self.cfg = Some(*cfg);
        self.tiles.iter_mut().for_each(|t| t.fill(0));
    }

    unsafe fn zero(&mut self, t: Tmm) {
        self.shape(t);
        self.tiles[t.0 as usize].fill(0);
    }

    unsafe fn load(&mut self, t: Tmm, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(t);
        let tile = &mut self.tiles[t.0 as usize];
        tile.fill(0);
        for r in 0..rows {
            let src = std::slice::from_raw_parts(base.add(r * stride), colsb);
            tile[r * TILE_BYTES..r * TILE_BYTES + colsb].copy_from_slice(src);
        }
    }

    unsafe fn store(&mut self, t: Tmm, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(t);
        let tile = &self.tiles[t.0 as usize];
        for r in 0..rows {
            let dst = std::slice::from_raw_parts_mut(base.add(r * stride), colsb);
            dst.copy_from_slice(&tile[r * TILE_BYTES..r * TILE_BYTES + colsb]);
        }
    }

    unsafe fn dpbf16(&mut self, c: Tmm, a: Tmm, b: Tmm) {
        let ((cr, cb), (ar, ab), (br, bb)) = (self.shape(c), self.shape(a), self.shape(b));
        assert!(
            c != a && c != b && a != b,
            "TDPBF16PS: registers must differ"
        );
        assert!(
            cr == ar && ab == 4 * br && cb == bb,
            "TDPBF16PS: shapes C {cr}x{cb}, A {ar}x{ab}, B {br}x{bb} bytes do not chain"
        );
        let mut out = [0u8; 1024];
        for m in 0..cr {
            for n in 0..cb / 4 {
                let mut acc = self.f32_at(c, m, n);
                for p in 0..br {
                    let lo = self.bf16_at(a, m, 2 * p) * self.bf16_at(b, p, 2 * n);
                    let hi = self.bf16_at(a, m, 2 * p + 1) * self.bf16_at(b, p, 2 * n + 1);
                    acc = flush(acc + (lo + hi));
                }
                out[m * TILE_BYTES + 4 * n..][..4].copy_from_slice(&acc.to_le_bytes());
            }
        }
        // Columns past `colsb` and rows past `rows` are zeroed, as the hardware does.
        self.tiles[c.0 as usize] = out;
    }

    unsafe fn release(&mut self) {
        self.cfg = None;
        self.tiles.iter_mut().for_each(|t| t.fill(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::bf16;
    use crate::cpu::reference::{naive_linear, AWKWARD_PRODUCTS};

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u16> {
        v.iter().map(|&x| bf16::bits(x)).collect()
    }

    /// `TDPBF16PS` on tiles of every shape class against an f64 dot product, through loads and
    /// stores with strides larger than a row.
    fn dpbf16_matches_f64<U: TileUnit>(u: &mut U) {
        let mut worst: f64 = 0.0;
        for (seed, &(m, kp, n)) in [(16, 16, 16), (1, 1, 1), (7, 3, 5), (16, 5, 9), (3, 16, 16)]
            .iter()
            .enumerate()
        {
            let seed = seed as u32;
            // A: m rows of 2kp bf16; B: kp rows of 2n bf16; C: m rows of n f32.
            let (sa, sb, sc) = (2 * kp + 6, 2 * n + 10, n + 3);
            let a = bits(&pseudo(m * sa, 3 * seed + 1));
            let b = bits(&pseudo(kp * sb, 3 * seed + 2));
            let c0 = pseudo(m * sc, 3 * seed + 3);
            let mut shapes = [(0u8, 0u16); 8];
            shapes[0] = (m as u8, 4 * n as u16);
            shapes[4] = (m as u8, 4 * kp as u16);
            shapes[6] = (kp as u8, 4 * n as u16);
            let mut c = c0.clone();
            // SAFETY: the configuration is valid and the buffers hold every row at its stride.
            unsafe {
                u.configure(&TileConfig::new(shapes));
                u.load(Tmm(0), c.as_ptr() as *const u8, 4 * sc);
                u.load(Tmm(4), a.as_ptr() as *const u8, 2 * sa);
                u.load(Tmm(6), b.as_ptr() as *const u8, 2 * sb);
                u.dpbf16(Tmm(0), Tmm(4), Tmm(6));
                u.store(Tmm(0), c.as_mut_ptr() as *mut u8, 4 * sc);
                u.release();
            }
            for i in 0..m {
                for j in 0..sc {
                    let got = c[i * sc + j];
                    if j >= n {
                        assert_eq!(got, c0[i * sc + j], "({m},{kp},{n}) store past colsb");
                        continue;
                    }
                    let mut want = c0[i * sc + j] as f64;
                    let mut mag = want.abs();
                    for p in 0..2 * kp {
                        let t = bf16::value(a[i * sa + p]) as f64
                            * bf16::value(b[(p / 2) * sb + 2 * j + p % 2]) as f64;
                        want += t;
                        mag += t.abs();
                    }
                    // Each of the 2 kp roundings (pair sums, accumulations) is within half an
                    // ulp of a partial sum no larger than Σ|terms|.
                    let tol = 2f64.powi(-24) * (2 * kp) as f64 * mag;
                    let err = (got as f64 - want).abs() / (1e-30 + tol);
                    worst = worst.max(err);
                    assert!(err <= 1.0, "({m},{kp},{n}) [{i},{j}]: {got} vs {want}");
                }
            }
        }
        println!("tdpbf16ps: worst error {worst:.3} of tolerance (kp ulp of Σ|terms|)");
    }

    #[test]
    fn model_dpbf16_matches_f64() {
        dpbf16_matches_f64(&mut TileModel::default());
    }

    #[test]
    #[should_panic(expected = "do not chain")]
    fn model_refuses_unchained_shapes() {
        let mut shapes = [(16u8, 64u16); 8];
        shapes[6] = (8, 64);
        let mut u = TileModel::default();
        // SAFETY: the model checks the shapes and panics instead of touching memory.
        unsafe {
            u.configure(&TileConfig::new(shapes));
            u.dpbf16(Tmm(0), Tmm(4), Tmm(6));
        }
    }

    #[test]
    #[should_panic(expected = "before LDTILECFG")]
    fn model_refuses_an_unconfigured_tile() {
        // SAFETY: as above.
        unsafe { TileModel::default().zero(Tmm(0)) };
    }

    #[test]
    fn tile_config_bytes() {
        let mut shapes = [(0u8, 0u16); 8];
        shapes[3] = (5, 0x0140);
        let cfg = TileConfig::new(shapes);
        assert_eq!(cfg.0[0], 1);
        assert_eq!(cfg.0[1], 0);
        assert_eq!((cfg.0[22], cfg.0[23]), (0x40, 0x01));
        assert_eq!(cfg.0[51], 5);
        assert_eq!((cfg.rows(Tmm(3)), cfg.colsb(Tmm(3))), (5, 0x140));
        assert_eq!(std::mem::size_of::<TileConfig>(), 64);
    }

    /// Packs `x [m, k]` into one row tile of `MR` rows `lda` apart and `w [n, k]` into the pair
    /// panel `[kp/2][NR][2]`, both bf16, zero padded to `kp` (a multiple of `KSTEP`).
    fn pack(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, kp: usize) -> (Vec<u16>, Vec<u16>) {
        let lda = kp + 32;
        let mut a = vec![0u16; MR * lda];
        for i in 0..m {
            for p in 0..k {
                a[i * lda + p] = bf16::bits(x[i * k + p]);
            }
        }
        let mut b = vec![0u16; kp * NR];
        for j in 0..n {
            for p in 0..k {
                b[((p / 2) * NR + j) * 2 + p % 2] = bf16::bits(w[j * k + p]);
            }
        }
        (a, b)
    }

    /// The micro-kernel and its epilogue against `naive_linear` on bf16-rounded inputs, on the
    /// shapes of `AWKWARD_PRODUCTS` that fit one block (at most `MR` rows and `NR` columns): one
    /// row, 13 rows, 16 and 17 rows (the block height switch), 32 rows, `k` not a multiple of
    /// 32, fewer than 32 columns, bias and GELU, and `k` cut in two slices (bias then partial
    /// sums).
    fn block_matches_naive<U: TileUnit>(u: &mut U) {
        let mut worst: f64 = 0.0;
        let shapes = AWKWARD_PRODUCTS
            .iter()
            .filter(|&&(m, _, n)| m <= MR && n <= NR);
        for (s, &(m, k, n)) in shapes.enumerate() {
            let kp = k.div_ceil(KSTEP) * KSTEP;
            let x = pseudo(m * k, 10 + s as u32);
            let w = pseudo(n * k, 20 + s as u32);
            let bias = pseudo(n, 30 + s as u32);
            let (a, b) = pack(&x, &w, m, k, n, kp);
            let lda = kp + 32;
            let round = |v: &[f32]| {
                v.iter()
                    .map(|&v| bf16::value(bf16::bits(v)))
                    .collect::<Vec<_>>()
            };
            for (with_bias, gelu, split) in [
                (false, false, false),
                (true, false, true),
                (true, true, true),
                (false, true, false),
            ] {
                let mut want = naive_linear(
                    &round(&x),
                    &round(&w),
                    with_bias.then_some(&bias[..]),
                    m,
                    k,
                    n,
                );
                if gelu {
                    crate::cpu::act::gelu_tanh_(&mut want);
                }
                // Slices of k: one, or the first KSTEP then the rest.
                let cuts: Vec<(usize, usize)> = if split && kp > KSTEP {
                    vec![(0, KSTEP), (KSTEP, kp)]
                } else {
                    vec![(0, kp)]
                };
                let mut out = vec![f32::NAN; m * n];
                let mut acc = Acc::default();
                // SAFETY: the row tile holds MR rows of kp values lda apart and the panel kp * NR
                // values; `out` is m x n.
                unsafe {
                    u.configure(&TileConfig::full());
                    for (ci, &(p0, p1)) in cuts.iter().enumerate() {
                        let init = match (ci, with_bias) {
                            (0, true) => Init::Bias(bias.as_ptr()),
                            (0, false) => Init::Zero,
                            _ => Init::Load,
                        };
                        let t = Tile {
                            c: out.as_mut_ptr(),
                            ldc: n,
                            rows: m,
                            cols: n,
                            init,
                            gelu: gelu && ci + 1 == cuts.len(),
                        };
                        let ops = Operands {
                            kc: p1 - p0,
                            a: a[p0..].as_ptr(),
                            lda,
                            b: b[p0 * NR..].as_ptr(),
                        };
                        block(u, ops, &mut acc, &t);
                    }
                    u.release();
                }
                let scale = (k as f64).sqrt();
                for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                    let tol = 2e-6 * scale * (1.0 + r.abs() as f64);
                    let err = (*g as f64 - *r as f64).abs() / tol;
                    worst = worst.max(err);
                    assert!(
                        err <= 1.0,
                        "({m},{k},{n}) bias {with_bias} gelu {gelu} split {split} element {i}: {g} vs {r}"
                    );
                }
            }
        }
        println!("block: worst error {worst:.3} of tolerance (2e-6 sqrt(k) (1 + |ref|))");
    }

    /// The AVX-512 epilogue writes bit for bit what the scalar one writes, and nothing outside
    /// `rows x cols`, for every start, with and without GELU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn epilogues_agree() {
        use crate::cpu::isa::Isa;
        if Isa::detect() < Isa::Avx512 {
            println!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut acc = Acc::default();
        acc.0.copy_from_slice(&pseudo(MR * NR, 40));
        let bias = pseudo(NR, 41);
        let ldc = NR + 5;
        let before = pseudo(MR * ldc, 42);
        for (rows, cols) in [(1, 1), (13, 19), (16, 16), (17, 31), (32, 32)] {
            for init in [Init::Zero, Init::Load, Init::Bias(bias.as_ptr())] {
                for gelu in [false, true] {
                    let (mut a, mut b) = (before.clone(), before.clone());
                    let tile = |c: &mut Vec<f32>| Tile {
                        c: c.as_mut_ptr(),
                        ldc,
                        rows,
                        cols,
                        init,
                        gelu,
                    };
                    // SAFETY: both outputs hold MR rows of ldc >= cols values; AVX-512 checked.
                    unsafe {
                        finish_scalar(&acc, &tile(&mut a));
                        finish_avx512(&acc, &tile(&mut b));
                    }
                    assert_eq!(a, b, "rows {rows} cols {cols} gelu {gelu}");
                    let untouched = (0..MR * ldc).filter(|&i| i / ldc >= rows || i % ldc >= cols);
                    assert!(untouched.into_iter().all(|i| b[i] == before[i]));
                }
            }
        }
    }

    #[test]
    fn model_block_matches_naive() {
        block_matches_naive(&mut TileModel::default());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_matches_the_model_tests() {
        let Some(mut u) = Amx::new() else {
            println!("skipped: {}", crate::cpu::isa::amx_status().unwrap_err());
            return;
        };
        dpbf16_matches_f64(&mut u);
        block_matches_naive(&mut u);
    }
}
