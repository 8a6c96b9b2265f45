//! The MM-DiT forward on the CUDA kernels: the layers of [`Mmdit`] with [`Cuda`] weights
//! (loaded once by [`Mmdit::load`], the same structure as the CPU forward's), the same steps as
//! `cpu.rs` (reference section 2).
//!
//! Storage on the device (`cuda::backend`): weight matrices bf16 `[N, K]`, biases and norm
//! weights f32; activations bf16; the residual streams, modulations and logits f32.
//! Convolutions: the 1x1 ones are GEMMs over pixels, the down block's 2x2 stride-2 conv is
//! `conv2d_bf16` on the NHWC image, the up block's 2x2 transposed conv is four GEMMs (one per
//! kernel tap) whose row maps scatter the pixels into the doubled grid.
//!
//! Heads of `Dh < 64` (the test fixtures) are stored zero-padded to `Dp = 64` inside the q, k, v
//! and attention-output buffers `[B, S, H, Dp]` (`Backend::linear_heads` pads the weights);
//! per-head RMSNorm and RoPE run head by head on the first `Dh` values, and attention uses the
//! `1 / sqrt(Dh)` scale.
//!
//! One forward, for `[B, h, w]` ids and `L` text tokens (`N` image tokens after the down block,
//! `S = L + N`): text residual `T [B, L, D]` and image residual `I [B, N, D]` through the dual
//! blocks (joint q, k, v `[B, S, H, Dp]` written through row maps: text rows `0..L`, image rows
//! `L..S` of each item), then both copied into the joint residual `X [B, S, D]` for the single
//! blocks and the heads. Nothing leaves the device inside a forward.

use muddit_kernels::cuda::gemm::{Conv, GemmOpts, GemmOut};
use std::sync::{Arc, Mutex};

use muddit_kernels::cuda::common::{Act, RowMap};

use super::{
    rope_tables, DualBlock, FeedForward, Mlp, Mmdit, MmditInput, MmditOutput, Modulation, Qkv,
    RmsNorm, SingleBlock, DUAL_ATTN, DUAL_MLP, MICRO_CONDS, SINGLE, SIN_DIM,
};
use crate::config::TransformerConfig;
use crate::cuda::backend::{Cuda, Heads};
use crate::cuda::{Buffer, Device, Ptr};
use crate::error::Result;
use crate::model_dir::{build_from, open_config};
use crate::weights::{Vb, Weights};
use crate::Compute;

/// `m`'s shift and scale in `mods [B, chunks * D]` as the modulated LayerNorm takes them:
/// (shift, scale, row stride, rows per batch item).
fn shift_scale(
    mods: &Buffer<f32>,
    m: Modulation,
    d: usize,
    per: usize,
) -> Result<(Ptr<f32>, Ptr<f32>, usize, usize)> {
    Ok((
        mods.at(m.shift * d)?,
        mods.at(m.scale * d)?,
        m.chunks * d,
        per,
    ))
}

/// `m`'s gate in `mods` as a gated GEMM takes it: (gate, row stride, rows per batch item).
fn gate(
    mods: &Buffer<f32>,
    m: Modulation,
    d: usize,
    per: usize,
) -> Result<(Ptr<f32>, usize, usize)> {
    Ok((mods.at(m.gate * d)?, m.chunks * d, per))
}

/// The shapes of one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    batch: usize,
    text: usize,
    height: usize,
    width: usize,
    /// The grid the blocks see.
    rows: usize,
    cols: usize,
}

impl Shape {
    fn pixels(&self) -> usize {
        self.batch * self.height * self.width
    }
    fn image(&self) -> usize {
        self.rows * self.cols
    }
    fn seq(&self) -> usize {
        self.text + self.image()
    }
}

/// Every activation buffer of one forward shape, allocated once per shape.
pub(crate) struct Workspace {
    shape: Shape,
    /// `[B, h, w]` image ids (u32; the embedding reads them as i32).
    pub(crate) ids: Buffer<u32>,
    /// `[B, L, J]` text features, f32 then bf16.
    ctx: Buffer<f32>,
    ctx_b: Buffer<u16>,
    /// `[B, P + 5 * 256]` pooled vector and micro-condition embeddings, f32 then bf16.
    cond: Buffer<f32>,
    cond_b: Buffer<u16>,
    /// `[B, 5]`
    micro: Buffer<f32>,
    /// `[1]` timestep, its embedding `[256]` f32 and bf16.
    timestep: Buffer<f32>,
    tsin: Buffer<f32>,
    tsin_b: Buffer<u16>,
    /// `[B, D]` MLP hiddens.
    hb1: Buffer<u16>,
    hb2: Buffer<u16>,
    th: Buffer<u16>,
    temb: Buffer<f32>,
    temb_silu: Buffer<u16>,
    /// Image embedding `[B, h, w, D]` ping-pong.
    emb0: Buffer<u16>,
    emb1: Buffer<u16>,
    tproj: Buffer<u16>,
    /// Residual streams.
    t: Buffer<f32>,
    i: Buffer<f32>,
    x: Buffer<f32>,
    /// `[B, 6D]`
    mods: Buffer<f32>,
    mods_c: Buffer<f32>,
    /// Normalised rows `[B * S, D]`.
    y: Buffer<u16>,
    /// `[B, S, H, Dp]`
    q: Buffer<u16>,
    k: Buffer<u16>,
    v: Buffer<u16>,
    o: Buffer<u16>,
    /// `[B * S, 4D]`
    hid: Buffer<u16>,
    /// Single blocks: `[B * S, H * Dp + 4D]` (attention, then the MLP's hidden).
    cat: Buffer<u16>,
    /// `[S, Dh]`
    cos: Buffer<f32>,
    sin: Buffer<f32>,
    /// Heads: `[B, N, D]`, `[B, h, w, D]`.
    hb: Buffer<u16>,
    ph: Buffer<u16>,
    up: Buffer<u16>,
    m1: Buffer<u16>,
    tl: Buffer<u16>,
    /// `[B, h, w, V]`
    pub(crate) logits: Buffer<f32>,
    /// `[B, L, Vt]`
    pub(crate) text_logits: Buffer<f32>,
}

/// The heads a forward runs ([`CudaMmdit::run`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logits {
    /// Image logits only (text-to-image).
    Image,
    /// Text logits only (image-to-text).
    Text,
    Both,
}

/// The MM-DiT on a CUDA device (or its emulator): the layers, and the workspace of the last
/// forward shape.
pub struct CudaMmdit {
    /// The model's config (as `model.cfg`).
    pub cfg: TransformerConfig,
    pub(crate) model: Mmdit<Cuda>,
    dev: Arc<Device>,
    heads: Heads,
    workspace: Mutex<Option<Workspace>>,
}

impl CudaMmdit {
    /// Loads `transformer/` of a model folder (or that folder) onto `dev`, with the checks of
    /// [`crate::model_dir::load_transformer`].
    pub fn load(dev: &Arc<Device>, dir: &std::path::Path) -> Result<Self> {
        let (dir, cfg) = open_config(dir, "transformer", TransformerConfig::from_file)?;
        let build = |vb: &Vb| Self::new(dev, &cfg, vb);
        build_from(&dir, Compute::F32, build, Weights::ensure_all_used)
    }

    /// Builds the model from the same tensors as [`Mmdit::new`], onto `dev`.
    pub fn new(dev: &Arc<Device>, cfg: &TransformerConfig, vb: &Vb) -> Result<Self> {
        let heads = Heads::new(
            cfg.num_attention_heads,
            cfg.attention_head_dim,
            "attention_head_dim",
        )?;
        let backend = Cuda::new(dev, Some(heads));
        Ok(CudaMmdit {
            cfg: cfg.clone(),
            model: Mmdit::load(&backend, cfg, vb)?,
            dev: dev.clone(),
            heads,
            workspace: Mutex::new(None),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    pub fn has_text_head(&self) -> bool {
        self.model.has_text_head()
    }

    /// The workspace for a shape (allocated on first use, reused while the shape stays).
    fn workspace(
        &self,
        batch: usize,
        text: usize,
        height: usize,
        width: usize,
    ) -> Result<std::sync::MutexGuard<'_, Option<Workspace>>> {
        let (rows, cols) = super::blocks_grid(&self.cfg, height, width)?;
        let shape = Shape {
            batch,
            text,
            height,
            width,
            rows,
            cols,
        };
        let mut guard = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().map(|w| w.shape) != Some(shape) {
            *guard = None;
            *guard = Some(self.allocate(shape)?);
        }
        Ok(guard)
    }

    fn allocate(&self, s: Shape) -> Result<Workspace> {
        let dev = &self.dev;
        let cfg = &self.cfg;
        let (b, l, d) = (s.batch, s.text, cfg.inner_dim());
        let (n, seq, px) = (s.image(), s.seq(), s.pixels());
        let hd = self.heads.width();
        let cw = cfg.pooled_projection_dim + MICRO_CONDS * SIN_DIM;
        let (cos, sin) = rope_tables(cfg, l, s.rows, s.cols);
        Ok(Workspace {
            shape: s,
            ids: dev.zeros(px)?,
            ctx: dev.zeros(b * l * cfg.joint_attention_dim)?,
            ctx_b: dev.zeros(b * l * cfg.joint_attention_dim)?,
            cond: dev.zeros(b * cw)?,
            cond_b: dev.zeros(b * cw)?,
            micro: dev.zeros(b * MICRO_CONDS)?,
            timestep: dev.zeros(1)?,
            tsin: dev.zeros(SIN_DIM)?,
            tsin_b: dev.zeros(SIN_DIM)?,
            hb1: dev.zeros(b * d)?,
            hb2: dev.zeros(b * d)?,
            th: dev.zeros(d)?,
            temb: dev.zeros(b * d)?,
            temb_silu: dev.zeros(b * d)?,
            emb0: dev.zeros(px * d)?,
            emb1: dev.zeros(px * d)?,
            tproj: dev.zeros(b * l * d)?,
            t: dev.zeros(b * l * d)?,
            i: dev.zeros(b * n * d)?,
            x: dev.zeros(b * seq * d)?,
            mods: dev.zeros(b * 6 * d)?,
            mods_c: dev.zeros(b * 6 * d)?,
            y: dev.zeros(b * seq * d)?,
            q: dev.zeros(b * seq * hd)?,
            k: dev.zeros(b * seq * hd)?,
            v: dev.zeros(b * seq * hd)?,
            o: dev.zeros(b * seq * hd)?,
            hid: dev.zeros(b * seq * 4 * d)?,
            cat: dev.zeros(b * seq * (hd + 4 * d))?,
            cos: dev.upload(&cos)?,
            sin: dev.upload(&sin)?,
            hb: dev.zeros(b * n * d)?,
            ph: dev.zeros(b * n * d)?,
            up: dev.zeros(px * d)?,
            m1: dev.zeros(px * d)?,
            tl: dev.zeros(b * l * d)?,
            logits: dev.zeros(px * cfg.codebook_size)?,
            text_logits: dev.zeros(b * l * cfg.tokenizer_vocab_size.unwrap_or(0))?,
        })
    }

    /// Runs `f` on the workspace of a forward over `[batch, height, width]` ids and `text`
    /// text tokens (the device-resident loops of [`super::text_to_image`]).
    pub(crate) fn with_workspace<R>(
        &self,
        (batch, text, height, width): (usize, usize, usize, usize),
        f: impl FnOnce(&mut Workspace) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.workspace(batch, text, height, width)?;
        f(guard.as_mut().expect("allocated by workspace()"))
    }

    /// Uploads the per-request inputs (text features, pooled vectors, micro-conditions).
    pub(crate) fn upload_conditions(
        &self,
        ws: &mut Workspace,
        text: &[f32],
        pooled: &[f32],
        micro: &[f32],
    ) -> Result<()> {
        let p = self.cfg.pooled_projection_dim;
        let cw = p + MICRO_CONDS * SIN_DIM;
        self.dev.write(&mut ws.ctx, 0, text)?;
        for (b, row) in pooled
            .chunks_exact(p.max(1))
            .enumerate()
            .take(ws.shape.batch)
        {
            self.dev.write(&mut ws.cond, b * cw, row)?;
        }
        Ok(self.dev.write(&mut ws.micro, 0, micro)?)
    }

    /// The per-request inputs from device buffers (the device text encoder's outputs): text
    /// features `[B, L, J]` and pooled vectors `[B, P]` f32, micro-conditions from the host.
    pub(crate) fn set_conditions(
        &self,
        ws: &mut Workspace,
        text: Ptr<f32>,
        pooled: Ptr<f32>,
        micro: &[f32],
    ) -> Result<()> {
        let s = ws.shape;
        let p = self.cfg.pooled_projection_dim;
        let cw = p + MICRO_CONDS * SIN_DIM;
        let j = self.cfg.joint_attention_dim;
        self.dev.copy(text, ws.ctx.ptr(), s.batch * s.text * j)?;
        for b in 0..s.batch {
            self.dev.copy(pooled.at(b * p)?, ws.cond.at(b * cw)?, p)?;
        }
        Ok(self.dev.write(&mut ws.micro, 0, micro)?)
    }

    /// The whole forward with host inputs and outputs, as [`crate::mmdit::Mmdit::forward`].
    pub fn forward(&self, x: &MmditInput) -> Result<MmditOutput> {
        super::check_input(&self.cfg, x)?;
        let mut guard = self.workspace(x.batch, x.text_len, x.height, x.width)?;
        let ws = guard.as_mut().expect("allocated above");
        self.upload_conditions(
            ws,
            x.encoder_hidden_states,
            x.pooled_projections,
            x.micro_conds,
        )?;
        let ids: Vec<u32> = x.image_tokens.iter().map(|&i| i as u32).collect();
        self.dev.write(&mut ws.ids, 0, &ids)?;
        self.run(ws, x.timestep, Logits::Both)?;
        let image_logits = self.dev.read(&ws.logits, 0, ws.logits.len())?;
        let text_logits = match self.model.text_decoder {
            Some(_) => Some(self.dev.read(&ws.text_logits, 0, ws.text_logits.len())?),
            None => None,
        };
        Ok(MmditOutput {
            image_logits,
            text_logits,
        })
    }

    /// One forward on the workspace's ids (already on the device, every id below
    /// `vocab_size`); the logits of `heads` stay on the device (text-to-image reads the image
    /// logits alone, image-to-text the text logits alone).
    pub(crate) fn run(&self, ws: &mut Workspace, timestep: f32, heads: Logits) -> Result<()> {
        self.dev.write(&mut ws.timestep, 0, &[timestep])?;
        let ws: &Workspace = ws;
        self.conditioning(ws)?;
        self.embed(ws)?;
        for block in &self.model.transformer_blocks {
            self.dual_block(block, ws)?;
        }
        let s = ws.shape;
        let (l, n, seq, d) = (s.text, s.image(), s.seq(), self.cfg.inner_dim());
        for b in 0..s.batch {
            self.dev
                .copy(ws.t.at(b * l * d)?, ws.x.at(b * seq * d)?, l * d)?;
            self.dev
                .copy(ws.i.at(b * n * d)?, ws.x.at((b * seq + l) * d)?, n * d)?;
        }
        for block in &self.model.single_transformer_blocks {
            self.single_block(block, ws)?;
        }
        self.heads_out(ws, heads)
    }

    /// `temb_silu [B, D]` bf16 (reference 2.1).
    fn conditioning(&self, ws: &Workspace) -> Result<()> {
        let dev = &self.dev;
        let b = ws.shape.batch;
        let p = self.cfg.pooled_projection_dim;
        let cw = p + MICRO_CONDS * SIN_DIM;
        let half = SIN_DIM / 2;
        for i in 0..b {
            let out = ws.cond.at(i * cw + p)?;
            dev.sin_embed(
                ws.micro.at(i * MICRO_CONDS)?,
                MICRO_CONDS,
                half,
                1.0,
                out,
                SIN_DIM,
            )?;
        }
        dev.act(Act::None, ws.cond.ptr(), ws.cond_b.ptr(), b * cw)?;
        let (ce, te, ts) = (
            &self.model.cond_embed,
            &self.model.time_text_embed.text_embedder,
            &self.model.time_text_embed.timestep_embedder,
        );
        let (cond, hb1, hb2, temb) = (ws.cond_b.ptr(), ws.hb1.ptr(), ws.hb2.ptr(), ws.temb.ptr());
        // cond [B, P + 5 * 256] -> [B, D] -> temb [B, D] f32
        self.mlp(ce, (cond, b), hb1, (GemmOut::Bf16, hb2))?;
        self.mlp(te, (hb2, b), hb1, (GemmOut::F32, temb))?;
        dev.sin_embed(ws.timestep.ptr(), 1, half, 1000.0, ws.tsin.ptr(), SIN_DIM)?;
        dev.act(Act::None, ws.tsin.ptr(), ws.tsin_b.ptr(), SIN_DIM)?;
        let silu = GemmOpts::with_act(Act::Silu);
        let ts_1 = ts.linear_1.mat();
        dev.gemm(GemmOut::Bf16, ts_1, ws.tsin_b.ptr(), 1, ws.th.ptr(), silu)?;
        // temb[b] += timestep_embedder(t): every row reads the one timestep row.
        let broadcast = GemmOpts {
            a_map: RowMap::part(1, 0, 0),
            ..GemmOpts::default()
        };
        let (ts_2, th) = (ts.linear_2.mat(), ws.th.ptr());
        dev.gemm(GemmOut::Residual, ts_2, th, b, temb, broadcast)?;
        let d = self.cfg.inner_dim();
        Ok(dev.act(Act::Silu, temb, ws.temb_silu.ptr(), b * d)?)
    }

    /// `out [rows, D] = linear_2(SiLU(linear_1(x [rows, in])))` of `mlp` through `hidden
    /// [rows, D]`, `out` written as `kind`.
    fn mlp<C>(
        &self,
        mlp: &Mlp<Cuda>,
        (x, rows): (Ptr<u16>, usize),
        hidden: Ptr<u16>,
        (kind, out): (GemmOut, Ptr<C>),
    ) -> Result<()> {
        let silu = GemmOpts::with_act(Act::Silu);
        let (linear_1, linear_2) = (mlp.linear_1.mat(), mlp.linear_2.mat());
        self.dev
            .gemm(GemmOut::Bf16, linear_1, x, rows, hidden, silu)?;
        let plain = GemmOpts::default();
        Ok(self.dev.gemm(kind, linear_2, hidden, rows, out, plain)?)
    }

    /// `res [rows, D] += gate * ff.out(GELU-tanh(ff.proj(y [rows, D])))` through `hid
    /// [rows, 4D]`.
    fn feed_forward(
        &self,
        ff: &FeedForward<Cuda>,
        (y, rows): (Ptr<u16>, usize),
        hid: Ptr<u16>,
        (res, gate): (Ptr<f32>, (Ptr<f32>, usize, usize)),
    ) -> Result<()> {
        let gelu = GemmOpts::with_act(Act::GeluTanh);
        let (proj, out) = (ff.proj.mat(), ff.out.mat());
        self.dev.gemm(GemmOut::Bf16, proj, y, rows, hid, gelu)?;
        let gated = GemmOpts::gated(gate);
        Ok(self
            .dev
            .gemm(GemmOut::Residual, out, hid, rows, res, gated)?)
    }

    /// `x [rows, D]` RMS-normalised in place by `norm`.
    fn rms_norm(&self, x: Ptr<u16>, norm: &RmsNorm<Cuda>, rows: usize) -> Result<()> {
        let d = self.cfg.inner_dim();
        Ok(self.dev.rms_norm(x, x, norm.weight.ptr(), rows, d)?)
    }

    /// Image ids to `I [B, N, D]`, text features to `T [B, L, D]` (reference 2.2).
    fn embed(&self, ws: &Workspace) -> Result<()> {
        let dev = &self.dev;
        let s = ws.shape;
        let (d, px, b) = (self.cfg.inner_dim(), s.pixels(), s.batch);
        let plain = GemmOpts::default();
        let table = (self.model.embed.embeddings.ptr(), self.cfg.vocab_size);
        dev.embedding(ws.ids.ptr(), table, None, ws.emb0.ptr(), px, d)?;
        self.rms_norm(ws.emb0.ptr(), &self.model.embed.layer_norm, px)?;
        let conv = self.model.embed.conv.mat();
        dev.gemm(GemmOut::Bf16, conv, ws.emb0.ptr(), px, ws.emb1.ptr(), plain)?;
        let h = match &self.model.down_block {
            Some(down) => {
                self.rms_norm(ws.emb1.ptr(), &down.norm, px)?;
                let geom = (s.height, s.width, d);
                let (mat, x, out) = (down.conv.mat(), ws.emb1.ptr(), ws.emb0.ptr());
                dev.conv2d(mat, x, b, geom, Conv::valid(2, 2), None, out)?;
                &ws.emb0
            }
            None => &ws.emb1,
        };
        let n = b * s.image();
        self.rms_norm(h.ptr(), &self.model.project_to_hidden_norm, n)?;
        let pth = self.model.project_to_hidden.mat();
        dev.gemm(GemmOut::F32, pth, h.ptr(), n, ws.i.ptr(), plain)?;

        let (rows, j) = (b * s.text, self.cfg.joint_attention_dim);
        dev.act(Act::None, ws.ctx.ptr(), ws.ctx_b.ptr(), rows * j)?;
        let ce = self.model.context_embedder.mat();
        let (ctx, tproj) = (ws.ctx_b.ptr(), ws.tproj.ptr());
        dev.gemm(GemmOut::Bf16, ce, ctx, rows, tproj, plain)?;
        self.rms_norm(tproj, &self.model.encoder_proj_layer_norm, rows)?;
        Ok(dev.act(Act::None, ws.tproj.ptr(), ws.t.ptr(), rows * d)?)
    }

    /// q, k, v of `rows` normalised rows `y` into the joint buffers through `map`, q and k
    /// normalised per head and rotated.
    fn qkv(
        &self,
        attn: &Qkv<Cuda>,
        y: Ptr<u16>,
        rows: usize,
        map: RowMap,
        ws: &Workspace,
    ) -> Result<()> {
        let dev = &self.dev;
        let hd = self.heads.width();
        let opts = GemmOpts {
            c_map: map,
            ..GemmOpts::default()
        };
        let geom = (self.heads.h, self.heads.dh, self.heads.dp);
        let tables = (ws.cos.ptr(), ws.sin.ptr(), ws.shape.seq());
        for (lin, buf, norm) in [
            (&attn.q, &ws.q, Some(&attn.norm_q.weight)),
            (&attn.k, &ws.k, Some(&attn.norm_k.weight)),
            (&attn.v, &ws.v, None),
        ] {
            dev.gemm(GemmOut::Bf16, lin.mat(), y, rows, buf.ptr(), opts)?;
            if let Some(w) = norm {
                dev.qk_norm_rope(buf.ptr(), hd, map, rows, geom, w.ptr(), tables)?;
            }
        }
        Ok(())
    }

    /// `transformer_blocks.i`: `I` and `T` updated in place.
    fn dual_block(&self, blk: &DualBlock<Cuda>, ws: &Workspace) -> Result<()> {
        let dev = &self.dev;
        let s = ws.shape;
        let (b, l, n, seq, d) = (s.batch, s.text, s.image(), s.seq(), self.cfg.inner_dim());
        let hd = self.heads.width();
        let plain = GemmOpts::default();
        let temb = ws.temb_silu.ptr();
        for (norm, mods) in [(&blk.norm1, &ws.mods), (&blk.norm1_context, &ws.mods_c)] {
            dev.gemm(GemmOut::F32, norm.mat(), temb, b, mods.ptr(), plain)?;
        }
        // (residual, tokens per item, modulations, first joint row, projections, MLP)
        let streams = [
            (&ws.i, n, &ws.mods, l, &blk.attn_image, &blk.to_out, &blk.ff),
            (
                &ws.t,
                l,
                &ws.mods_c,
                0,
                &blk.attn_text,
                &blk.to_add_out,
                &blk.ff_context,
            ),
        ];
        for &(res, per, mods, offset, attn, _, _) in &streams {
            let shift_scale = shift_scale(mods, DUAL_ATTN, d, per)?;
            dev.layer_norm(res.ptr(), ws.y.ptr(), b * per, d, Some(shift_scale))?;
            self.qkv(
                attn,
                ws.y.ptr(),
                b * per,
                RowMap::part(per, seq, offset),
                ws,
            )?;
        }
        let (qkv, shape) = ((ws.q.ptr(), ws.k.ptr(), ws.v.ptr()), (b, seq, self.heads.h));
        let dims = (self.heads.dh, self.heads.dp);
        dev.attention(qkv, (ws.o.ptr(), hd), shape, dims, false)?;
        for &(res, per, mods, offset, _, to_out, ff) in &streams {
            let rows = b * per;
            let attn_out = GemmOpts {
                lda: hd,
                a_map: RowMap::part(per, seq, offset),
                gate: Some(gate(mods, DUAL_ATTN, d, per)?),
                ..GemmOpts::default()
            };
            let (to_out, o) = (to_out.mat(), ws.o.ptr());
            dev.gemm(GemmOut::Residual, to_out, o, rows, res.ptr(), attn_out)?;
            let shift_scale = shift_scale(mods, DUAL_MLP, d, per)?;
            dev.layer_norm(res.ptr(), ws.y.ptr(), rows, d, Some(shift_scale))?;
            let gate = gate(mods, DUAL_MLP, d, per)?;
            self.feed_forward(ff, (ws.y.ptr(), rows), ws.hid.ptr(), (res.ptr(), gate))?;
        }
        Ok(())
    }

    /// `single_transformer_blocks.i`: `X` updated in place.
    fn single_block(&self, blk: &SingleBlock<Cuda>, ws: &Workspace) -> Result<()> {
        let dev = &self.dev;
        let s = ws.shape;
        let (b, seq, d) = (s.batch, s.seq(), self.cfg.inner_dim());
        let (hd, rows) = (self.heads.width(), s.batch * s.seq());
        let temb = ws.temb_silu.ptr();
        let plain = GemmOpts::default();
        dev.gemm(GemmOut::F32, blk.norm.mat(), temb, b, ws.mods.ptr(), plain)?;
        let shift_scale = shift_scale(&ws.mods, SINGLE, d, seq)?;
        dev.layer_norm(ws.x.ptr(), ws.y.ptr(), rows, d, Some(shift_scale))?;
        let cat_w = hd + 4 * d;
        let mlp = GemmOpts {
            ldc: cat_w,
            act: Act::GeluTanh,
            ..GemmOpts::default()
        };
        let (proj_mlp, y) = (blk.proj_mlp.mat(), ws.y.ptr());
        dev.gemm(GemmOut::Bf16, proj_mlp, y, rows, ws.cat.at(hd)?, mlp)?;
        self.qkv(&blk.attn, ws.y.ptr(), rows, RowMap::IDENTITY, ws)?;
        let (qkv, shape) = ((ws.q.ptr(), ws.k.ptr(), ws.v.ptr()), (b, seq, self.heads.h));
        let dims = (self.heads.dh, self.heads.dp);
        dev.attention(qkv, (ws.cat.ptr(), cat_w), shape, dims, false)?;
        let gated = GemmOpts::gated(gate(&ws.mods, SINGLE, d, seq)?);
        let proj_out = blk.proj_out.mat();
        let (cat, x) = (ws.cat.ptr(), ws.x.ptr());
        Ok(dev.gemm(GemmOut::Residual, proj_out, cat, rows, x, gated)?)
    }

    /// Text logits `[B, L, Vt]` and image logits `[B, h, w, V]` from `X` (reference 2.7), those
    /// of `heads`.
    fn heads_out(&self, ws: &Workspace, heads: Logits) -> Result<()> {
        let dev = &self.dev;
        let s = ws.shape;
        let (b, l, n, seq, d) = (s.batch, s.text, s.image(), s.seq(), self.cfg.inner_dim());
        let plain = GemmOpts::default();
        if let Some(dec) = self
            .model
            .text_decoder
            .as_ref()
            .filter(|_| heads != Logits::Image)
        {
            for i in 0..b {
                dev.layer_norm(ws.x.at(i * seq * d)?, ws.tl.at(i * l * d)?, l, d, None)?;
            }
            let (tl, logits) = (ws.tl.ptr(), ws.text_logits.ptr());
            dev.gemm(GemmOut::F32, dec.mat(), tl, b * l, logits, plain)?;
        }
        if heads == Logits::Text {
            return Ok(());
        }
        for i in 0..b {
            dev.act(
                Act::None,
                ws.x.at((i * seq + l) * d)?,
                ws.hb.at(i * n * d)?,
                n * d,
            )?;
        }
        self.rms_norm(ws.hb.ptr(), &self.model.project_from_hidden_norm, b * n)?;
        let pfh = self.model.project_from_hidden.mat();
        dev.gemm(GemmOut::Bf16, pfh, ws.hb.ptr(), b * n, ws.ph.ptr(), plain)?;
        let h = match &self.model.up_block {
            Some(up) => {
                self.rms_norm(ws.ph.ptr(), &up.norm, b * n)?;
                // Tap (ki, kj) of pixel (b, i, j) lands on (b, 2i + ki, 2j + kj): rows of two
                // output pixels (2D wide), item rows r = b * rows + i at 2r + ki.
                for kk in 0..4 {
                    let (ki, kj) = (kk / 2, kk % 2);
                    let opts = GemmOpts {
                        ldc: 2 * d,
                        c_map: RowMap::part(s.cols, 2 * s.cols, ki * s.cols),
                        ..GemmOpts::default()
                    };
                    let tap = up.conv.rows(kk * d, d)?;
                    let (ph, up) = (ws.ph.ptr(), ws.up.at(kj * d)?);
                    dev.gemm(GemmOut::Bf16, tap, ph, b * n, up, opts)?;
                }
                &ws.up
            }
            None => &ws.ph,
        };
        let px = s.pixels();
        let conv1 = self.model.mlm_layer.conv1.mat();
        dev.gemm(GemmOut::Bf16, conv1, h.ptr(), px, ws.m1.ptr(), plain)?;
        self.rms_norm(ws.m1.ptr(), &self.model.mlm_layer.layer_norm, px)?;
        let conv2 = self.model.mlm_layer.conv2.mat();
        Ok(dev.gemm(GemmOut::F32, conv2, ws.m1.ptr(), px, ws.logits.ptr(), plain)?)
    }
}
