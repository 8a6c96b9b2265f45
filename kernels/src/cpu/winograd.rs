//! 3x3 same-padded stride-1 convolutions as Winograd F(2x2, 3x3) products.
//!
//! Design. Every 2x2 block of output pixels (a *tile*) is computed from the 4x4 input patch
//! around it: `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` per input and output channel. Summed over input
//! channels, the elementwise product becomes 16 independent matrix products, one per position
//! `j` of the 4x4 transformed patch: `M_j [T, O] = V_j [T, C] · U_j [O, C]ᵀ`, where `U_j` is the
//! transformed weight (`G g Gᵀ`, packed once at load time, [`Winograd3x3`]) and `V_j` the
//! transformed input (`Bᵀ d B`, [`transform_inputs`]). The output transform `Aᵀ M A`
//! ([`untransform`]) folds the 16 results back into the tile and adds the bias. That is 16
//! multiply-adds per tile and channel pair instead of 36: 2.25x fewer than the direct
//! convolution ([`super::conv`]).
//!
//! Bands of whole tile rows go one per task; within a band, chunks of tiles small enough that
//! their transformed inputs and 16 results stay in the core's cache between the three steps.
//!
//! Numerics. The transforms' coefficients are 0, ±1 and ±1/2; inputs and outputs are transformed
//! in f32. In bf16 products the transformed inputs and weights are rounded to bf16 (sums of up to
//! four values, then one rounding), so the error per product is the direct convolution's order.

use super::packed::{linear, Compute, Epilogue, PackedMatrix, Storage};
use rayon::prelude::*;

/// Bytes of a chunk's transformed inputs and results (f32), the budget that sets its tiles.
const CHUNK_BYTES: usize = 1 << 20;

/// `G` of F(2x2, 3x3): transformed weight row `a` from the kernel's three rows.
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// A 3x3 convolution weight `[O, C, 3, 3]` as the 16 transformed matrices `U_j [O, C]`.
pub struct Winograd3x3 {
    mats: Vec<PackedMatrix>,
    c_in: usize,
    c_out: usize,
}

impl Winograd3x3 {
    /// Transforms `w [O, C, 3, 3]` (PyTorch's layout) in f32 and packs the 16 matrices for
    /// `compute` products: bf16 products keep them as bf16, f32 products as f32 (the transform
    /// of a bf16 weight is not a bf16 value).
    pub fn new(w: &[f32], c_out: usize, c_in: usize, compute: Compute) -> Self {
        assert_eq!(w.len(), c_out * c_in * 9, "winograd: w is not [O, C, 3, 3]");
        // G g Gᵀ, one 4x4 matrix per (o, c); U_j [O, C] holds element j of each. Blocks of
        // (o, c) pairs run in parallel, each writing its part of the 16 matrices.
        const BLOCK: usize = 1024;
        let pairs = c_out * c_in;
        let mut u = vec![vec![0.0f32; pairs]; 16];
        let mut columns: Vec<_> = u.iter_mut().map(|uj| uj.chunks_mut(BLOCK)).collect();
        let blocks: Vec<Vec<&mut [f32]>> = (0..pairs.div_ceil(BLOCK))
            .map(|_| columns.iter_mut().flat_map(|c| c.next()).collect())
            .collect();
        blocks
            .into_par_iter()
            .zip(w.par_chunks(BLOCK * 9))
            .for_each(|(mut dst, w)| {
                for (i, g) in w.chunks_exact(9).enumerate() {
                    for (j, t) in transform_weight(g).into_iter().enumerate() {
                        dst[j][i] = t;
                    }
                }
            });
        let storage = match compute {
            Compute::Bf16 => Storage::Bf16,
            Compute::F32 => Storage::F32,
        };
        let mats = u
            .iter()
            .map(|uj| PackedMatrix::new(uj, c_out, c_in, storage, compute))
            .collect();
        Winograd3x3 { mats, c_in, c_out }
    }
}

/// `G g Gᵀ` of one 3x3 kernel `g` (row-major), row-major 4x4.
fn transform_weight(g: &[f32]) -> [f32; 16] {
    let mut gg = [[0.0f32; 3]; 4];
    for (a, row) in gg.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|y| G[a][y] * g[y * 3 + x]).sum();
        }
    }
    std::array::from_fn(|j| (0..3).map(|x| gg[j / 4][x] * G[j % 4][x]).sum())
}

/// A per-channel map `x * scale + shift`, then SiLU when `silu`, applied to the input as the
/// convolution reads it (a group norm and its activation folded in, so the normed map is never
/// written): `scale, shift [B, C]`. The zero padding stays zero.
#[derive(Clone, Copy)]
pub struct Prologue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub silu: bool,
}

impl Prologue<'_> {
    /// Channel `l` of a pixel (the definition the tests check against).
    #[cfg(test)]
    fn apply(&self, v: f32, l: usize) -> f32 {
        let y = v * self.scale[l] + self.shift[l];
        if self.silu {
            y / (1.0 + (-y).exp())
        } else {
            y
        }
    }
}

/// One image `[H/up, W/up, C]` read as its nearest `up`-times upsampling `[H, W, C]`: `x`
/// holds its stored rows from `row0` on (all of them, or a [`MappedRows`] window).
#[derive(Clone, Copy)]
struct Image<'a> {
    x: &'a [f32],
    row0: usize,
    height: usize,
    width: usize,
    c: usize,
    up: usize,
}

impl<'a> Image<'a> {
    /// The `c` values of pixel `(y, x)` of the upsampled image, `None` outside it.
    #[inline(always)]
    fn pixel(&self, y: isize, x: isize) -> Option<&'a [f32]> {
        if y < 0 || x < 0 || y >= self.height as isize || x >= self.width as isize {
            return None;
        }
        let (sy, sx) = (y as usize / self.up - self.row0, x as usize / self.up);
        let at = (sy * (self.width / self.up) + sx) * self.c;
        Some(&self.x[at..at + self.c])
    }

    /// Stored rows `[first, end)` that the tiles `t0..t0 + n` read.
    fn rows_read(&self, t0: usize, n: usize, tiles_x: usize) -> (usize, usize) {
        let (ty0, ty1) = (t0 / tiles_x, (t0 + n - 1) / tiles_x);
        let y0 = (2 * ty0).saturating_sub(1);
        let y1 = (2 * ty1 + 3).min(self.height);
        (y0 / self.up, (y1 - 1) / self.up + 1)
    }
}

/// A window of an image's stored rows through a prologue, sliding down a band: each row is
/// mapped once (scale, shift, SiLU), when the band's tiles first read it.
#[derive(Default)]
struct MappedRows {
    rows: Vec<f32>,
    first: usize,
    count: usize,
}

impl MappedRows {
    /// Holds the stored rows `[first, end)` of `x` (`row_len` values each) through `pro`.
    fn slide(&mut self, x: &[f32], row_len: usize, (first, end): (usize, usize), pro: &Prologue) {
        let held = self.first..self.first + self.count;
        let keep = match held.contains(&first) {
            true => held.end.min(end) - first,
            false => 0,
        };
        if keep > 0 {
            let from = (first - self.first) * row_len;
            self.rows.copy_within(from..from + keep * row_len, 0);
        }
        self.rows.resize((end - first) * row_len, 0.0);
        let new = &mut self.rows[keep * row_len..];
        if !new.is_empty() {
            new.copy_from_slice(&x[(first + keep) * row_len..end * row_len]);
            super::group_norm::apply_channel_affine_(new, 1, pro.scale, pro.shift, pro.silu);
        }
        (self.first, self.count) = (first, end - first);
    }
}

/// `out [B, H, W, O] = conv3x3(prologue(x))`, same padding, stride 1, with `bias [O]`: `x` is
/// `[B, H/up, W/up, C]`, read as its nearest `up`-times upsampling (`up` 1 or 2). With
/// `accumulate`, `out` holds values the convolution is added to (a residual), in the output
/// transform's pass.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    x: &[f32],
    up: usize,
    prologue: Option<Prologue>,
    w: &Winograd3x3,
    bias: Option<&[f32]>,
    (batch, height, width): (usize, usize, usize),
    out: &mut [f32],
    accumulate: bool,
) {
    let (c, o) = (w.c_in, w.c_out);
    assert!(up == 1 || up == 2, "winograd: upsampling is 1 or 2");
    assert!(
        height.is_multiple_of(up) && width.is_multiple_of(up),
        "winograd: the upsampled size is odd"
    );
    let image_len = height * width * c / (up * up);
    assert_eq!(
        x.len(),
        batch * image_len,
        "winograd: x is not [B, H, W, C]"
    );
    assert_eq!(
        out.len(),
        batch * height * width * o,
        "winograd: out is not [B, H, W, O]"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), o, "winograd: bias is not [O]");
    }
    if let Some(p) = prologue {
        assert!(
            p.scale.len() == batch * c && p.shift.len() == batch * c,
            "winograd: the prologue is not [B, C]"
        );
    }
    if !out.is_empty() {
        let output = Output {
            accumulate,
            chunk_bytes: CHUNK_BYTES,
        };
        convolve(x, up, prologue, w, bias, (height, width), out, output);
    }
}

/// How [`convolve`] writes: added to `out` or over it, in chunks of tiles within `chunk_bytes`.
#[derive(Clone, Copy)]
struct Output {
    accumulate: bool,
    chunk_bytes: usize,
}

/// [`conv3x3`] (arguments checked).
#[allow(clippy::too_many_arguments)]
fn convolve(
    x: &[f32],
    up: usize,
    prologue: Option<Prologue>,
    w: &Winograd3x3,
    bias: Option<&[f32]>,
    (height, width): (usize, usize),
    out: &mut [f32],
    Output {
        accumulate,
        chunk_bytes,
    }: Output,
) {
    let (c, o) = (w.c_in, w.c_out);
    let image_len = height * width * c / (up * up);
    let zero = vec![0.0; o];
    let bias = bias.unwrap_or(&zero);
    let (tiles_y, tiles_x) = (height.div_ceil(2), width.div_ceil(2));
    // Two bands per thread where the image allows; chunks of tiles within budget.
    let band_rows = tiles_y.div_ceil(2 * rayon::current_num_threads()).max(1);
    // Chunks of whole row tiles of the products (on an AMD Zen 4, 60 tiles instead of 64 at
    // 128 channels ran the convolution in 0.85x the time: 64 rows are 6 row tiles of 12).
    let row_tile = w.mats[0].row_tile();
    let mut chunk = (chunk_bytes / (16 * 4 * (c + o))).max(1);
    if chunk > row_tile {
        chunk -= chunk % row_tile;
    }
    for (b, (xb, ob)) in x
        .chunks_exact(image_len)
        .zip(out.chunks_exact_mut(height * width * o))
        .enumerate()
    {
        let image = Image {
            x: xb,
            row0: 0,
            height,
            width,
            c,
            up,
        };
        let prologue = prologue.map(|p| Prologue {
            scale: &p.scale[b * c..(b + 1) * c],
            shift: &p.shift[b * c..(b + 1) * c],
            silu: p.silu,
        });
        let bands: Vec<(usize, &mut [f32])> = ob
            .chunks_mut(2 * band_rows * width * o)
            .enumerate()
            .collect();
        bands.into_par_iter().for_each(|(band, dst)| {
            let first = band * band_rows * tiles_x;
            let tiles = (band_rows * tiles_x).min(tiles_y * tiles_x - first);
            let (mut u, mut m) = SCRATCH.take();
            let mut mapped = MappedRows::default();
            for t0 in (0..tiles).step_by(chunk) {
                let n = chunk.min(tiles - t0);
                u.resize(16 * n * c, 0.0);
                m.resize(16 * n * o, 0.0);
                let image = match &prologue {
                    None => image,
                    Some(pro) => {
                        let rows = image.rows_read(first + t0, n, tiles_x);
                        mapped.slide(xb, width / up * c, rows, pro);
                        Image {
                            x: &mapped.rows,
                            row0: mapped.first,
                            ..image
                        }
                    }
                };
                transform_inputs(&image, first + t0, tiles_x, &mut u);
                for ((uj, mj), wj) in u
                    .chunks_exact(n * c)
                    .zip(m.chunks_exact_mut(n * o))
                    .zip(&w.mats)
                {
                    linear(uj, wj, None, Epilogue::None, mj);
                }
                let y0 = 2 * (first / tiles_x);
                let place = (y0, (height, width), accumulate);
                untransform(&m, first + t0, tiles_x, bias, place, dst);
            }
            SCRATCH.set((u, m));
        });
    }
}

/// `u [16, n, C]`: the transformed inputs `Bᵀ d B` of the `n` tiles from tile `t0` (row-major
/// over the tile grid `tiles_x` wide), each from the 4x4 patch of input pixels one above and
/// left of its 2x2 output pixels (zeros outside the image).
fn transform_inputs(image: &Image, t0: usize, tiles_x: usize, u: &mut [f32]) {
    let c = image.c;
    let n = u.len() / (16 * c);
    #[cfg(target_arch = "x86_64")]
    let lanes = super::simd::width();
    for i in 0..n {
        let t = t0 + i;
        let (y0, x0) = (
            2 * (t / tiles_x) as isize - 1,
            2 * (t % tiles_x) as isize - 1,
        );
        let patch: [Option<&[f32]>; 16] =
            std::array::from_fn(|p| image.pixel(y0 + (p / 4) as isize, x0 + (p % 4) as isize));
        let base = i * c;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every pixel holds `c` values and every row of `u` `n * c`, so each whole
        // vector of channels is inside both.
        let c0 = unsafe { simd::input_vectors(lanes, (&patch, c), u, (base, n * c)) }.unwrap_or(0);
        #[cfg(not(target_arch = "x86_64"))]
        let c0 = 0;
        for l in c0..c {
            let mut v = patch.map(|p| p.map_or(0.0, |p| p[l]));
            for r in 0..4 {
                bt(&mut v, [4 * r, 4 * r + 1, 4 * r + 2, 4 * r + 3]);
            }
            for q in 0..4 {
                bt(&mut v, [q, 4 + q, 8 + q, 12 + q]);
            }
            for (j, vj) in v.into_iter().enumerate() {
                u[j * n * c + base + l] = vj;
            }
        }
    }
}

/// Whether a 3x3 convolution of `c_in -> c_out` channels is faster as Winograd than direct
/// on this CPU: the transforms run a vector of channels at a time (8 with AVX2, 16 with
/// AVX-512) and both sides fill at least one.
pub fn suits(c_in: usize, c_out: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(w) = super::simd::width() {
        return c_in >= w.lanes() && c_out >= w.lanes();
    }
    let _ = (c_in, c_out);
    false
}

/// `Bᵀ` of F(2x2, 3x3) on the four values `at` of `v`: `(d0 - d2, d1 + d2, d2 - d1, d1 - d3)`.
fn bt(v: &mut [f32; 16], at: [usize; 4]) {
    let [d0, d1, d2, d3] = at.map(|p| v[p]);
    [v[at[0]], v[at[1]], v[at[2]], v[at[3]]] = [d0 - d2, d1 + d2, d2 - d1, d1 - d3];
}

/// `Aᵀ` of F(2x2, 3x3) on the four values `at` of `v`, into the first two:
/// `(m0 + m1 + m2, m1 - m2 - m3)`.
fn at(v: &mut [f32; 16], at: [usize; 4]) {
    let [m0, m1, m2, m3] = at.map(|p| v[p]);
    [v[at[0]], v[at[1]]] = [m0 + m1 + m2, m1 - m2 - m3];
}

/// `Aᵀ M A + bias` of the tiles from `t0` (their 16 results `m [16, n, O]`) into (or, with
/// `accumulate`, added to) `dst`, the output rows `y0..` of the image (`[rows, W, O]`); pixels
/// past the image's edge are dropped.
fn untransform(
    m: &[f32],
    t0: usize,
    tiles_x: usize,
    bias: &[f32],
    (y0, (height, width), accumulate): (usize, (usize, usize), bool),
    dst: &mut [f32],
) {
    let o = bias.len();
    let n = m.len() / (16 * o);
    #[cfg(target_arch = "x86_64")]
    let lanes = super::simd::width();
    for i in 0..n {
        let t = t0 + i;
        let (ty, tx) = (t / tiles_x, t % tiles_x);
        // Where in `dst` each of the tile's four pixels goes, `None` past the image's edge.
        let pixels: [Option<usize>; 4] = std::array::from_fn(|p| {
            let (y, x) = (2 * ty + p / 2, 2 * tx + p % 2);
            (y < height && x < width).then(|| ((y - y0) * width + x) * o)
        });
        let base = i * o;
        #[cfg(target_arch = "x86_64")]
        let results = simd::Results {
            m,
            at: base,
            stride: n * o,
            bias,
            pixels,
            accumulate,
        };
        // SAFETY: every row of `m` holds `n * o` values and every pixel of `dst` `o`, so each
        // whole vector of channels is inside both.
        #[cfg(target_arch = "x86_64")]
        let o0 = unsafe { simd::output_vectors(lanes, &results, dst) }.unwrap_or(0);
        #[cfg(not(target_arch = "x86_64"))]
        let o0 = 0;
        for l in o0..o {
            let mut v: [f32; 16] = std::array::from_fn(|j| m[j * n * o + base + l]);
            for q in 0..4 {
                at(&mut v, [q, 4 + q, 8 + q, 12 + q]);
            }
            for r in 0..2 {
                at(&mut v, [4 * r, 4 * r + 1, 4 * r + 2, 4 * r + 3]);
            }
            for (p, at) in pixels.iter().enumerate() {
                if let Some(at) = at {
                    let y = v[4 * (p / 2) + p % 2] + bias[l];
                    dst[at + l] = if accumulate { dst[at + l] + y } else { y };
                }
            }
        }
    }
}

/// The transforms on a vector of channels at a time (8 or 16, the level's width), the same
/// arithmetic as `bt` and `at`.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::super::simd::{per_width, F32s};

    #[inline(always)]
    unsafe fn bt<V: F32s>(v: &mut [V; 16], at: [usize; 4]) {
        let [d0, d1, d2, d3] = [v[at[0]], v[at[1]], v[at[2]], v[at[3]]];
        v[at[0]] = d0.sub(d2);
        v[at[1]] = d1.add(d2);
        v[at[2]] = d2.sub(d1);
        v[at[3]] = d1.sub(d3);
    }

    #[inline(always)]
    unsafe fn at<V: F32s>(v: &mut [V; 16], at: [usize; 4]) {
        let [m0, m1, m2, m3] = [v[at[0]], v[at[1]], v[at[2]], v[at[3]]];
        v[at[0]] = m0.add(m1).add(m2);
        v[at[1]] = m1.sub(m2).sub(m3);
    }

    /// Channels `c0..c0 + LANES` of one tile's patch (`None`: outside the image), transformed,
    /// into `u[j * stride + at..][..LANES]` for the 16 positions `j`.
    ///
    /// # Safety
    /// The width's instructions present; each pixel holds `c0 + LANES` values; `u` holds
    /// `15 * stride + at + LANES`.
    #[inline(always)]
    unsafe fn input_tile<V: F32s>(
        patch: &[Option<&[f32]>; 16],
        c0: usize,
        u: &mut [f32],
        at: usize,
        stride: usize,
    ) {
        // Plain loops, no closures: a closure would not inherit the caller's target features,
        // and the vector loads in it would stay calls.
        let mut v = [V::splat(0.0); 16];
        for (vj, p) in v.iter_mut().zip(patch) {
            if let Some(p) = p {
                *vj = V::load(p.as_ptr().add(c0));
            }
        }
        for r in 0..4 {
            bt(&mut v, [4 * r, 4 * r + 1, 4 * r + 2, 4 * r + 3]);
        }
        for q in 0..4 {
            bt(&mut v, [q, 4 + q, 8 + q, 12 + q]);
        }
        for (j, vj) in v.into_iter().enumerate() {
            vj.store(u.as_mut_ptr().add(j * stride + at));
        }
    }

    /// Channels `o0..o0 + LANES` of one tile's 16 results (`m[j * stride + at..][..LANES]`),
    /// folded back, plus `bias`, into (or, with `accumulate`, added to) the tile's pixels
    /// (offsets into `dst`; `None`: past the edge).
    ///
    /// # Safety
    /// The width's instructions present; `m` holds `15 * stride + at + LANES` values, `bias`
    /// `LANES`, and each pixel of `dst` `o0 + LANES` from its offset.
    #[inline(always)]
    unsafe fn output_tile<V: F32s>(
        m: &[f32],
        (at, stride): (usize, usize),
        bias: &[f32],
        (pixels, accumulate): (&[Option<usize>; 4], bool),
        o0: usize,
        dst: &mut [f32],
    ) {
        let mut v = [V::splat(0.0); 16];
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = V::load(m.as_ptr().add(j * stride + at));
        }
        for q in 0..4 {
            self::at(&mut v, [q, 4 + q, 8 + q, 12 + q]);
        }
        for r in 0..2 {
            self::at(&mut v, [4 * r, 4 * r + 1, 4 * r + 2, 4 * r + 3]);
        }
        let b = V::load(bias.as_ptr());
        for (p, px) in pixels.iter().enumerate() {
            if let Some(px) = px {
                let at = dst.as_mut_ptr().add(px + o0);
                let y = v[4 * (p / 2) + p % 2].add(b);
                if accumulate { y.add(V::load(at)) } else { y }.store(at);
            }
        }
    }

    per_width! {
        /// The channels of one tile's patch that fill whole vectors, as [`input_tile`], with
        /// `width`'s instructions; the first channel left (`None`: no vectors on this CPU).
        ///
        /// # Safety
        /// As [`input_tile`] for every vector.
        pub unsafe fn input_vectors(
            patch: (&[Option<&[f32]>; 16], usize),
            u: &mut [f32],
            at: (usize, usize),
        ) -> usize = input_all
    }

    #[inline(always)]
    unsafe fn input_all<V: F32s>(
        (patch, c): (&[Option<&[f32]>; 16], usize),
        u: &mut [f32],
        (at, stride): (usize, usize),
    ) -> usize {
        let mut c0 = 0;
        while c0 + V::LANES <= c {
            input_tile::<V>(patch, c0, u, at + c0, stride);
            c0 += V::LANES;
        }
        c0
    }

    /// One tile's 16 results (`m[j * stride + at..]`, channels last) and where they go: the
    /// tile's pixels in `dst` (offsets; `None` past the edge), plus `bias`, over the values
    /// there or (`accumulate`) added to them.
    pub struct Results<'a> {
        pub m: &'a [f32],
        pub at: usize,
        pub stride: usize,
        pub bias: &'a [f32],
        pub pixels: [Option<usize>; 4],
        pub accumulate: bool,
    }

    per_width! {
        /// The output channels that fill whole vectors, as [`output_tile`], with `width`'s
        /// instructions; the first channel left (`None`: no vectors on this CPU).
        ///
        /// # Safety
        /// As [`output_tile`] for every vector.
        pub unsafe fn output_vectors(r: &Results, dst: &mut [f32]) -> usize = output_all
    }

    #[inline(always)]
    unsafe fn output_all<V: F32s>(r: &Results, dst: &mut [f32]) -> usize {
        let mut o0 = 0;
        while o0 + V::LANES <= r.bias.len() {
            output_tile::<V>(
                r.m,
                (r.at + o0, r.stride),
                &r.bias[o0..],
                (&r.pixels, r.accumulate),
                o0,
                dst,
            );
            o0 += V::LANES;
        }
        o0
    }
}

thread_local! {
    /// A chunk's transformed inputs and results, reused across calls (taken out while in use).
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv::{conv2d, patch_major_weight, upsample_nearest_2x, Conv2dShape};
    use crate::cpu::reference::pseudo;

    /// Relative L2 distance of `got` from `want`.
    /// Outputs of the same sums cut into other chunks of tiles: the same bits on the packed
    /// kernels (a row's sums do not depend on the rows beside it); equal to rounding on the
    /// portable level, whose `gemm` crate takes other paths, with another order of the sums, for
    /// products of few rows.
    fn same_sums(got: &[f32], want: &[f32], what: &str) {
        if crate::cpu::isa::Isa::detect() == crate::cpu::isa::Isa::Portable {
            let err = distance(got, want);
            assert!(err < 1e-6, "{what}: relative L2 {err}");
        } else {
            assert_eq!(got, want, "{what}");
        }
    }

    fn distance(got: &[f32], want: &[f32]) -> f64 {
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for (g, w) in got.iter().zip(want) {
            err += (*g as f64 - *w as f64).powi(2);
            norm += (*w as f64).powi(2);
        }
        (err / norm.max(1e-30)).sqrt()
    }

    /// A test convolution's operands, f32 products.
    struct Operands {
        /// `[B, h, w, C]`
        x: Vec<f32>,
        /// `[B, C]` each
        scale: Vec<f32>,
        shift: Vec<f32>,
        wg: Winograd3x3,
        /// `[O]`
        bias: Vec<f32>,
    }

    /// Pseudo-random [`Operands`] of a `(B, h, w, C, O)` convolution from seeds `seed..seed + 5`.
    fn operands((b, h, w, c, o): (usize, usize, usize, usize, usize), seed: u32) -> Operands {
        Operands {
            x: pseudo(b * h * w * c, seed),
            scale: pseudo(b * c, seed + 1),
            shift: pseudo(b * c, seed + 2),
            wg: Winograd3x3::new(&pseudo(o * c * 9, seed + 3), o, c, Compute::F32),
            bias: pseudo(o, seed + 4),
        }
    }

    /// A prologue gives the convolution of the mapped image (written out first here): batches
    /// (each image its own scale and shift), channel tails past the vector width, upsampled
    /// inputs, with and without SiLU, chunks of every size.
    #[test]
    fn the_prologue_equals_mapping_the_image_first() {
        for (b, h, w, c, o, up) in [
            (2, 5, 7, 33, 20, 1),
            (1, 4, 3, 16, 16, 2),
            (2, 3, 3, 5, 17, 1),
            (1, 11, 6, 16, 16, 1),
            (2, 7, 5, 8, 8, 2),
        ] {
            let (hh, ww) = (h * up, w * up);
            let Operands {
                x,
                scale,
                shift,
                wg,
                bias,
            } = operands((b, h, w, c, o), 7);
            for silu in [false, true] {
                let pro = Prologue {
                    scale: &scale,
                    shift: &shift,
                    silu,
                };
                let mapped: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| pro.apply(v, (i / (h * w * c)) * c + i % c))
                    .collect();
                let mut want = vec![0.0; b * hh * ww * o];
                conv3x3(
                    &mapped,
                    up,
                    None,
                    &wg,
                    Some(&bias),
                    (b, hh, ww),
                    &mut want,
                    false,
                );
                let mut got = vec![f32::NAN; want.len()];
                conv3x3(
                    &x,
                    up,
                    Some(pro),
                    &wg,
                    Some(&bias),
                    (b, hh, ww),
                    &mut got,
                    false,
                );
                let err = distance(&got, &want);
                assert!(
                    err < 1e-5,
                    "({b}, {h}x{w}, {c}->{o}, up {up}, silu {silu}): {err}"
                );
                // Chunks of one tile and of a few slide the window of mapped rows down each
                // band in steps: the same mapped rows, so the same sums (`same_sums`).
                for chunk_tiles in [1, 3] {
                    let mut chunked = vec![f32::NAN; want.len()];
                    let output = Output {
                        accumulate: false,
                        chunk_bytes: chunk_tiles * 16 * 4 * (c + o),
                    };
                    let dims = (hh, ww);
                    convolve(
                        &x,
                        up,
                        Some(pro),
                        &wg,
                        Some(&bias),
                        dims,
                        &mut chunked,
                        output,
                    );
                    same_sums(&chunked, &got, &format!("{chunk_tiles} tiles a chunk"));
                }
            }
        }
    }

    /// Against the direct convolution (itself checked against an f64 reference in `conv`) of
    /// the explicitly upsampled image: odd and single-pixel sizes (tiles past the edge),
    /// batches, several bands, upsampled inputs. In f32 the two agree to f32 rounding; in bf16
    /// the Winograd error (about twice the direct bf16 convolution's: the transformed inputs
    /// and weights are rounded) stays within 2.5 times it.
    #[test]
    fn matches_the_direct_convolution() {
        // (B, h, w, C, O, up): h x w is the stored image, the convolved one is up times larger.
        let cases = [
            (1, 1, 1, 1, 1, 1),
            (2, 3, 5, 7, 9, 1),
            (1, 3, 2, 33, 40, 2),
            (2, 17, 13, 16, 24, 1),
            (1, 9, 11, 8, 8, 2),
            (1, 12, 10, 64, 48, 1),
        ];
        for (b, h, w, c, o, up) in cases {
            let (hh, ww) = (h * up, w * up);
            let x = pseudo(b * h * w * c, 1);
            let wt = pseudo(o * c * 9, 2);
            let bias = pseudo(o, 3);
            let xu = if up == 2 {
                upsample_nearest_2x(&x, b, h, w, c)
            } else {
                x.clone()
            };
            let s = Conv2dShape {
                batch: b,
                height: hh,
                width: ww,
                c_in: c,
                c_out: o,
                kernel: 3,
                stride: 1,
                pad: [1; 4],
            };
            let direct = |storage, compute| {
                let packed = PackedMatrix::new(
                    &patch_major_weight(&wt, o, c, 3),
                    o,
                    9 * c,
                    storage,
                    compute,
                );
                let mut out = vec![0.0; b * hh * ww * o];
                conv2d(&xu, &packed, Some(&bias), &s, &mut out);
                out
            };
            let winograd = |compute| {
                let mut out = vec![f32::NAN; b * hh * ww * o];
                let wg = Winograd3x3::new(&wt, o, c, compute);
                conv3x3(&x, up, None, &wg, Some(&bias), (b, hh, ww), &mut out, false);
                out
            };
            let want = direct(Storage::F32, Compute::F32);
            // Chunks of one tile and of a few: the same sums (`same_sums`).
            let whole = winograd(Compute::Bf16);
            for chunk_tiles in [1, 3] {
                let mut got = vec![f32::NAN; whole.len()];
                let wg = Winograd3x3::new(&wt, o, c, Compute::Bf16);
                let output = Output {
                    accumulate: false,
                    chunk_bytes: chunk_tiles * 16 * 4 * (c + o),
                };
                convolve(
                    &x,
                    up,
                    None,
                    &wg,
                    Some(&bias),
                    (hh, ww),
                    &mut got[..hh * ww * o],
                    output,
                );
                let what = format!("{chunk_tiles} tiles a chunk");
                same_sums(&got[..hh * ww * o], &whole[..hh * ww * o], &what);
            }
            let case = format!("(B {b}, {hh}x{ww}, C {c}, O {o}, up {up})");
            let f32_err = distance(&winograd(Compute::F32), &want);
            assert!(f32_err < 1e-6, "{case}: f32 relative L2 error {f32_err}");
            let direct_err = distance(&direct(Storage::Bf16, Compute::Bf16), &want);
            let bf16_err = distance(&winograd(Compute::Bf16), &want);
            println!("{case}: bf16 relative L2 error {bf16_err:.2e}, direct {direct_err:.2e}");
            assert!(
                bf16_err < 2.5 * direct_err.max(2e-3) && bf16_err < 1e-2,
                "{case}: bf16 relative L2 error {bf16_err}, direct {direct_err}"
            );
        }
    }

    /// Accumulating adds the convolution to what `out` holds, in the output transform: the
    /// same bits as writing it and adding after, at the vector channels and the tail past them,
    /// odd edges, upsampled inputs, a prologue, chunks of one tile and of a few.
    #[test]
    fn accumulating_adds_the_convolution_to_out() {
        for (b, h, w, c, o, up) in [
            (2, 5, 7, 33, 20, 1),
            (1, 3, 2, 16, 19, 2),
            (1, 1, 1, 4, 3, 1),
        ] {
            let (hh, ww) = (h * up, w * up);
            let Operands {
                x,
                scale,
                shift,
                wg,
                bias,
            } = operands((b, h, w, c, o), 21);
            let pro = Prologue {
                scale: &scale,
                shift: &shift,
                silu: true,
            };
            let conv = |out: &mut [f32], accumulate| {
                let dims = (b, hh, ww);
                conv3x3(&x, up, Some(pro), &wg, Some(&bias), dims, out, accumulate)
            };
            let residual = pseudo(b * hh * ww * o, 26);
            let mut y = vec![f32::NAN; residual.len()];
            conv(&mut y, false);
            let want: Vec<f32> = y.iter().zip(&residual).map(|(y, r)| y + r).collect();
            let mut got = residual.clone();
            conv(&mut got, true);
            same_sums(&got, &want, &format!("({b}, {h}x{w}, {c}->{o}, up {up})"));
            for chunk_tiles in [1, 3] {
                let image = hh * ww * o;
                let mut got = residual[..image].to_vec();
                let output = Output {
                    accumulate: true,
                    chunk_bytes: chunk_tiles * 16 * 4 * (c + o),
                };
                let x = &x[..h * w * c];
                convolve(
                    x,
                    up,
                    Some(pro),
                    &wg,
                    Some(&bias),
                    (hh, ww),
                    &mut got,
                    output,
                );
                same_sums(
                    &got,
                    &want[..image],
                    &format!("{chunk_tiles} tiles a chunk"),
                );
            }
        }
    }
}
