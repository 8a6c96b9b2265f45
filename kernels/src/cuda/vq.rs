//! `vq.cu`: the VQ-VAE's GroupNorm (+ SiLU), nearest 2x upsampling and nearest codebook
//! entries. The parameter structs, the launch plans ([`group_norm`], [`upsample2x`],
//! [`vq_nearest`]) and the runners on a [`Device`].

use super::device::{Device, Ptr};
use super::launch::{elementwise_grid, ensure, grid_1d, Launch};
use super::nvrtc::Module;
use super::Result;

/// GroupNorm eps of every norm of the VQ-VAE family.
const GROUP_NORM_EPS: f32 = 1e-6;

/// `group_norm_stats_bf16` and `group_norm_apply_bf16` (vq.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupNormParams {
    pub x: u64,
    pub out: u64,
    pub weight: u64,
    pub bias: u64,
    /// f64 `[B, G, chunks, 3]` workspace: [`group_norm_workspace`] elements.
    pub stats: u64,
    pub batch: i32,
    pub pixels: i32,
    pub channels: i32,
    pub groups: i32,
    /// Set by [`group_norm`].
    pub chunks: i32,
    pub silu: i32,
    pub eps: f32,
    pub pad_: i32,
}

/// `upsample2x_bf16` (vq.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Upsample2xParams {
    pub x: u64,
    pub out: u64,
    pub batch: i32,
    pub h: i32,
    pub w: i32,
    pub c: i32,
}

/// `vq_nearest_f32` (vq.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VqNearestParams {
    pub z: u64,
    pub codebook: u64,
    pub ids: u64,
    pub pixels: i32,
    pub entries: i32,
    pub dim: i32,
    pub pad_: i32,
}

device_repr!(GroupNormParams, Upsample2xParams, VqNearestParams);

/// Pixels per partial sum of the GroupNorm statistics.
const GN_BAND: usize = 4096;
const GN_MAX_GROUPS: i32 = 128;

fn group_norm_chunks(pixels: i32) -> i32 {
    (pixels.max(1) as usize).div_ceil(GN_BAND).min(256) as i32
}

/// f64 elements of the workspace `group_norm` needs for `batch` items of `pixels` pixels.
pub fn group_norm_workspace(batch: usize, pixels: usize, groups: usize) -> usize {
    batch * groups * group_norm_chunks(pixels as i32) as usize * 3
}

/// GroupNorm (+ SiLU) over bf16 `[B, P, C]`: the statistics launch, then the apply launch.
#[allow(clippy::type_complexity)]
pub fn group_norm(
    mut p: GroupNormParams,
) -> Result<(Launch<GroupNormParams>, Launch<GroupNormParams>)> {
    const OP: &str = "group_norm";
    ensure(p.batch > 0 && p.pixels > 0 && p.channels > 0, OP, || {
        format!("B {} P {} C {}", p.batch, p.pixels, p.channels)
    })?;
    ensure(
        p.groups > 0 && p.groups <= GN_MAX_GROUPS && p.channels % p.groups == 0,
        OP,
        || {
            format!(
                "{} channels in {} groups (at most {GN_MAX_GROUPS})",
                p.channels, p.groups
            )
        },
    )?;
    ensure(p.batch < 65536, OP, || "batch too large".into())?;
    p.chunks = group_norm_chunks(p.pixels);
    let stats = Launch::new(
        (Module::Vq, "group_norm_stats_bf16"),
        [p.chunks as u32, p.groups as u32, p.batch as u32],
        256,
        0,
        p,
    );
    let per_item = p.pixels as usize * p.channels as usize;
    let blocks = per_item
        .div_ceil(256)
        .clamp(1, (132 * 8 / p.batch as usize).max(1));
    let apply = Launch::new(
        (Module::Vq, "group_norm_apply_bf16"),
        [blocks as u32, p.batch as u32, 1],
        256,
        0,
        p,
    );
    Ok((stats, apply))
}

/// Nearest 2x upsampling of bf16 `[B, h, w, c]`.
pub fn upsample2x(p: Upsample2xParams) -> Result<Launch<Upsample2xParams>> {
    const OP: &str = "upsample2x";
    ensure(p.batch > 0 && p.h > 0 && p.w > 0 && p.c > 0, OP, || {
        format!("{p:?}")
    })?;
    let n = 4 * p.batch as usize * p.h as usize * p.w as usize * p.c as usize;
    Ok(Launch::new(
        (Module::Vq, "upsample2x_bf16"),
        elementwise_grid(OP, n)?,
        256,
        0,
        p,
    ))
}

/// Nearest codebook entry of each f32 latent `[P, E]` among f32 `[V, E]`: i32 ids `[P]`.
pub fn vq_nearest(p: VqNearestParams) -> Result<Launch<VqNearestParams>> {
    const OP: &str = "vq_nearest";
    ensure(p.pixels >= 0 && p.entries > 0 && p.dim > 0, OP, || {
        format!("{p:?}")
    })?;
    let smem = 32 * p.dim as usize * 4;
    ensure(smem <= 200 << 10, OP, || {
        format!("latent width {} too large", p.dim)
    })?;
    Ok(Launch::new(
        (Module::Vq, "vq_nearest_f32"),
        grid_1d(OP, (p.pixels as usize).div_ceil(8))?,
        256,
        smem as u32,
        p,
    ))
}

impl Device {
    /// GroupNorm (eps 1e-6, then SiLU when `silu`) of bf16 `x [B, P, C]` into `out` (may be
    /// `x`), affine f32 `weight`, `bias` `[C]`; `stats` holds
    /// [`group_norm_workspace`]`(B, P, groups)` f64.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm(
        &self,
        x: Ptr<u16>,
        out: Ptr<u16>,
        (weight, bias): (Ptr<f32>, Ptr<f32>),
        stats: Ptr<f64>,
        (batch, pixels, channels): (usize, usize, usize),
        groups: usize,
        silu: bool,
    ) -> Result<()> {
        const OP: &str = "group_norm";
        let n = batch * pixels * channels;
        let (s, a) = group_norm(GroupNormParams {
            x: x.need(n, OP, "x")?,
            out: out.need(n, OP, "out")?,
            weight: weight.need(channels, OP, "weight")?,
            bias: bias.need(channels, OP, "bias")?,
            stats: stats.need(group_norm_workspace(batch, pixels, groups), OP, "stats")?,
            batch: batch as i32,
            pixels: pixels as i32,
            channels: channels as i32,
            groups: groups as i32,
            silu: silu as i32,
            eps: GROUP_NORM_EPS,
            ..GroupNormParams::default()
        })?;
        // SAFETY: x and out hold B x P x C elements, weight and bias C, the workspace its size
        // (checked above); the statistics launch is ordered before the apply launch.
        unsafe {
            self.launch(&s)?;
            self.launch(&a)
        }
    }

    /// The nearest codebook entry (exact squared L2 in f64, lowest id on ties) of each f32
    /// latent `z [P, E]` among the f32 `codebook [V, E]`: ids `[P]`.
    pub fn vq_nearest(
        &self,
        z: Ptr<f32>,
        (codebook, entries): (Ptr<f32>, usize),
        ids: Ptr<u32>,
        pixels: usize,
        dim: usize,
    ) -> Result<()> {
        const OP: &str = "vq_nearest";
        let launch = vq_nearest(VqNearestParams {
            z: z.need(pixels * dim, OP, "z")?,
            codebook: codebook.need(entries * dim, OP, "codebook")?,
            ids: ids.need(pixels, OP, "ids")?,
            pixels: pixels as i32,
            entries: entries as i32,
            dim: dim as i32,
            pad_: 0,
        })?;
        // SAFETY: P x E latents, V x E codebook rows and P ids, checked above.
        unsafe { self.launch(&launch) }
    }

    /// Nearest 2x upsampling: bf16 `x [B, h, w, c]` to `out [B, 2h, 2w, c]`.
    pub fn upsample2x(
        &self,
        x: Ptr<u16>,
        out: Ptr<u16>,
        batch: usize,
        (h, w, c): (usize, usize, usize),
    ) -> Result<()> {
        const OP: &str = "upsample2x";
        let n = batch * h * w * c;
        let launch = upsample2x(Upsample2xParams {
            x: x.need(n, OP, "x")?,
            out: out.need(4 * n, OP, "out")?,
            batch: batch as i32,
            h: h as i32,
            w: w as i32,
            c: c as i32,
        })?;
        // SAFETY: n elements in, 4 n out (checked above).
        unsafe { self.launch(&launch) }
    }
}
