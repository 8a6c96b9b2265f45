//! `norm.cu`: RMSNorm and LayerNorm over rows. The parameter structs, the launch plans
//! ([`rms_norm`], [`layer_norm`]: shapes checked, grid chosen) and the runners on a [`Device`]
//! (buffer ranges checked, then launched).

use super::device::{Device, Ptr};
use super::launch::{ensure, grid_1d, span, Launch, ROWS_PER_BLOCK};
use super::nvrtc::Module;
use super::Result;

/// The eps of every RMSNorm and modulated LayerNorm of the MM-DiT (`engine::nn::NORM_EPS`).
pub const NORM_EPS: f32 = 1e-6;

/// `rms_norm_bf16` (norm.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RmsNormParams {
    pub x: u64,
    pub out: u64,
    pub weight: u64,
    pub rows: i32,
    pub d: i32,
    pub x_stride: i32,
    pub out_stride: i32,
    pub eps: f32,
    pub pad_: i32,
}

/// `layer_norm_f32` (norm.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerNormParams {
    pub x: u64,
    pub out: u64,
    pub scale: u64,
    pub shift: u64,
    pub rows: i32,
    pub d: i32,
    pub x_stride: i32,
    pub out_stride: i32,
    pub rows_per_item: i32,
    pub item_stride: i32,
    pub scale_add: f32,
    pub eps: f32,
}

device_repr!(RmsNormParams, LayerNormParams);

/// `rows` rows of `d` values, each side's row stride at least `d`.
fn check_rows(
    op: &'static str,
    rows: i32,
    d: i32,
    (x_stride, out_stride): (i32, i32),
) -> Result<()> {
    ensure(rows >= 0 && d > 0, op, || format!("rows {rows} d {d}"))?;
    ensure(x_stride >= d && out_stride >= d, op, || {
        format!("strides {x_stride}/{out_stride} below d {d}")
    })
}

/// RMSNorm over rows of bf16 `x [rows, d]` (strides in elements), f32 weight `[d]`.
pub fn rms_norm(p: RmsNormParams) -> Result<Launch<RmsNormParams>> {
    const OP: &str = "rms_norm";
    check_rows(OP, p.rows, p.d, (p.x_stride, p.out_stride))?;
    Ok(Launch::new(
        (Module::Norm, "rms_norm_bf16"),
        grid_1d(OP, (p.rows as usize).div_ceil(ROWS_PER_BLOCK))?,
        (32 * ROWS_PER_BLOCK) as u32,
        0,
        p,
    ))
}

/// LayerNorm of f32 rows with modulation, affine weights or none (see norm.cu).
pub fn layer_norm(p: LayerNormParams) -> Result<Launch<LayerNormParams>> {
    const OP: &str = "layer_norm";
    check_rows(OP, p.rows, p.d, (p.x_stride, p.out_stride))?;
    ensure(p.rows_per_item > 0, OP, || {
        "rows_per_item must be positive".into()
    })?;
    Ok(Launch::new(
        (Module::Norm, "layer_norm_f32"),
        grid_1d(OP, (p.rows as usize).div_ceil(ROWS_PER_BLOCK))?,
        (32 * ROWS_PER_BLOCK) as u32,
        0,
        p,
    ))
}

impl Device {
    /// RMSNorm (eps 1e-6) of bf16 rows `[rows, d]`, in place allowed; weight f32 `[d]`.
    pub fn rms_norm(
        &self,
        x: Ptr<u16>,
        out: Ptr<u16>,
        weight: Ptr<f32>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        let launch = rms_norm(RmsNormParams {
            x: x.need(rows * d, OP, "x")?,
            out: out.need(rows * d, OP, "out")?,
            weight: weight.need(d, OP, "weight")?,
            rows: rows as i32,
            d: d as i32,
            x_stride: d as i32,
            out_stride: d as i32,
            eps: NORM_EPS,
            pad_: 0,
        })?;
        // SAFETY: rows x d elements of x and out, d of the weight, checked above.
        unsafe { self.launch(&launch) }
    }

    /// LayerNorm (eps 1e-6) of f32 rows `[rows, d]` to bf16: with `mods = Some((shift, scale,
    /// item_stride, rows_per_item))` times `1 + scale` plus `shift` per item, else plain.
    pub fn layer_norm(
        &self,
        x: Ptr<f32>,
        out: Ptr<u16>,
        rows: usize,
        d: usize,
        mods: Option<(Ptr<f32>, Ptr<f32>, usize, usize)>,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let mut p = layer_norm_rows(x, out, rows, d)?;
        if let Some((shift, scale, item_stride, per_item)) = mods {
            let need = span(rows.div_ceil(per_item), item_stride, d);
            p.shift = shift.need(need, OP, "shift")?;
            p.scale = scale.need(need, OP, "scale")?;
            p.item_stride = item_stride as i32;
            p.rows_per_item = per_item as i32;
        }
        let launch = layer_norm(p)?;
        // SAFETY: x, out and the modulation rows checked above.
        unsafe { self.launch(&launch) }
    }

    /// LayerNorm of f32 rows `[rows, d]` to bf16 with affine f32 `weight`, `bias` `[d]` and
    /// `eps` (CLIP's `nn.LayerNorm`).
    pub fn layer_norm_affine(
        &self,
        x: Ptr<f32>,
        out: Ptr<u16>,
        rows: usize,
        d: usize,
        (weight, bias): (Ptr<f32>, Ptr<f32>),
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let launch = layer_norm(LayerNormParams {
            scale: weight.need(d, OP, "weight")?,
            shift: bias.need(d, OP, "bias")?,
            scale_add: 0.0,
            eps,
            ..layer_norm_rows(x, out, rows, d)?
        })?;
        // SAFETY: rows x d elements of x and out, d of the weight and bias, checked above.
        unsafe { self.launch(&launch) }
    }
}

/// A plain LayerNorm (eps 1e-6) of dense f32 rows `x [rows, d]` into bf16 `out`, both checked.
fn layer_norm_rows(x: Ptr<f32>, out: Ptr<u16>, rows: usize, d: usize) -> Result<LayerNormParams> {
    const OP: &str = "layer_norm";
    Ok(LayerNormParams {
        x: x.need(rows * d, OP, "x")?,
        out: out.need(rows * d, OP, "out")?,
        rows: rows as i32,
        d: d as i32,
        x_stride: d as i32,
        out_stride: d as i32,
        rows_per_item: i32::MAX,
        item_stride: 0,
        scale_add: 1.0,
        eps: NORM_EPS,
        ..LayerNormParams::default()
    })
}
