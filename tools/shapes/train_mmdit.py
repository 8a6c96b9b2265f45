#!/usr/bin/env python3
"""Train the Muddit MM-DiT (upstream `SymmetricTransformer2DModel`, text head on) and a CLIP text
encoder (transformers `CLIPTextModelWithProjection`) jointly on the shapes world, on top of the
VQ-VAE from train_vq.py. CPU, deterministic from --seed, bounded by --minutes; a checkpoint
(OUT/mmdit.pt) is written at every evaluation so a cut run still exports.

One batch mixes three tasks, each the masked-token cross-entropy the pipelines sample from:
  t2i      clean prompt (--uncond of them, 10% by default, get the empty prompt, for guidance), image ids masked;
  caption  clean image ids, all 77 text positions maskable (caption, end token, padding);
  vqa      clean image ids, question ids kept (start token, no end token), the rest maskable.
For text, every position after the question is a target, masked or not: the pipelines decode
the argmax of the last step's logits over all of them, so known tokens must be reproduced.
The masked fraction is cos(u pi/2) with u ~ U(0,1) and the transformer timestep is 1 - u: the
pair the pipelines see at step i = u S. For text, k = clamp(floor(77 cos(u pi/2)), 1, unknown)
positions are masked, as the scheduler re-masks.

With --short-text L, the first part of the budget trains on the first L text positions only
(every world text and its end token fit in L = 24): the 77 positions are 5/6 of the tokens each
step, and the rest of the budget, on all 77, adapts the model to the padding it reads at
inference.

Text head: only the rows of the token ids the world uses are trained; all other rows are
exported as zeros (logit exactly 0), and training adds one logit of value log(Vt - n_used) for
them, so the training softmax equals the exported full-vocabulary softmax. Same for the unused
rows of the CLIP token embedding (zero at init; their gradient is zero, so they stay zero).

    nice -n 19 /work/pyenv/bin/python tools/shapes/train_mmdit.py --muddit-src /tmp/muddit-src \
        --work /tmp/shapes-train --minutes 60
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import world
import clip_tokenizer

TEXT_LEN = 77
VT = 49409  # 49408 CLIP ids + <mask>
MASK_TEXT = 49408
EOT = 49407

CLIP = dict(
    vocab_size=VT,  # exported with 49408 rows; the <mask> row goes to mask_token_embedding.pth
    hidden_size=48,
    intermediate_size=192,
    projection_dim=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=TEXT_LEN,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    bos_token_id=49406,
    eos_token_id=2,  # as the public config: the pooled position is the argmax of the ids
    pad_token_id=EOT,
)

TRANSFORMER = dict(
    num_layers=2,
    num_single_layers=2,
    num_attention_heads=4,
    attention_head_dim=24,
    axes_dims_rope=[8, 8, 8],
    downsample=True,
    upsample=True,
)


def import_upstream(src: Path):
    sys.path.insert(0, str(src.resolve()))
    import src.pipeline as pipeline_module
    import src.transformer as transformer_module
    return pipeline_module, transformer_module


class CompactHead(nn.Module):
    """`text_decoder.1` restricted to the used rows, plus one logit log(Vt - n) for the rest."""

    def __init__(self, dim, used):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(len(used), dim) * 0.02)
        self.register_buffer("rest", torch.tensor(math.log(VT - len(used))))

    def forward(self, x):
        logits = x @ self.weight.t()
        return torch.cat([logits, self.rest.expand(*logits.shape[:-1], 1)], dim=-1)


def build(upstream_transformer, n_codes, used, layers=None):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    clip = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP))
    with torch.no_grad():
        emb = clip.text_model.embeddings.token_embedding.weight
        keep = torch.zeros(VT, dtype=torch.bool)
        keep[used] = True
        keep[MASK_TEXT] = True
        emb[~keep] = 0
    shape = {} if layers is None else dict(num_layers=layers[0], num_single_layers=layers[1])
    cfg = dict(TRANSFORMER, **shape, vocab_size=n_codes + 1, codebook_size=n_codes,
               joint_attention_dim=CLIP["hidden_size"], pooled_projection_dim=CLIP["projection_dim"],
               tokenizer_vocab_size=VT)
    tr = upstream_transformer.SymmetricTransformer2DModel(**cfg)
    tr.text_decoder[1] = CompactHead(tr.inner_dim, used)
    return clip, tr, cfg


def grow_from(tr, state):
    """Loads `state`, a transformer with fewer blocks, into `tr`: every tensor it has is copied,
    and the blocks it lacks (appended after its dual and single blocks) start as the identity:
    the gate rows of their AdaLN modulation are zero, so each adds gate * f(x) = 0 to the stream
    and the grown model computes exactly what the smaller one did."""
    missing, unexpected = tr.load_state_dict(state, strict=False)
    assert not unexpected, f"the warm start has tensors the model lacks: {unexpected[:4]}"
    new = sorted({".".join(k.split(".")[:2]) for k in missing})
    assert all(b.startswith(("transformer_blocks.", "single_transformer_blocks.")) for b in new), new
    with torch.no_grad():
        for name in new:
            block = tr.get_submodule(name)
            if name.startswith("single_"):
                # AdaLayerNormZeroSingle: shift, scale, gate
                gates = [block.norm.linear]
                chunks, which = 3, [2]
            else:
                # AdaLayerNormZero: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
                gates = [block.norm1.linear, block.norm1_context.linear]
                chunks, which = 6, [2, 5]
            for lin in gates:
                d = lin.out_features // chunks
                for c in which:
                    lin.weight[c * d:(c + 1) * d] = 0
                    lin.bias[c * d:(c + 1) * d] = 0
    return new


class Data:
    """Jittered renders (none pixel-identical to a held-out evaluation image), their VQ ids,
    and the token ids of every scene key's caption and question/answer texts."""

    def __init__(self, tok, vq, n, seed, exclude=()):
        rng = np.random.default_rng(seed)
        keys = world.all_scene_keys()
        self.keys = [keys[i % len(keys)] for i in rng.permutation(n)]
        imgs = np.empty((n, world.SIZE, world.SIZE, 3), np.uint8)
        redraws = 0
        for i, k in enumerate(self.keys):
            _, imgs[i], r = world.sample_objects(k, rng, exclude)
            redraws += r
        self.redraws = redraws
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        ids = []
        with torch.no_grad():
            for i in range(0, n, 100):
                lat = vq.encode(x[i:i + 100]).latents
                ids.append(vq.quantize(lat)[2][2].reshape(-1, 8, 8))
        self.ids = torch.cat(ids)
        self.tok = tok
        index = {k: j for j, k in enumerate(keys)}
        self.key_index = [index[k] for k in self.keys]
        key_caption = torch.stack([self.encode(world.caption(k)) for k in keys])
        key_qa = [[(self.question(q), self.encode_answer(q, a)) for q, a in world.questions(k)]
                  for k in keys]
        self.caption = key_caption[self.key_index]
        self.qa = [key_qa[j] for j in self.key_index]

    def encode(self, text):
        return torch.tensor(self.tok(text, padding="max_length", max_length=TEXT_LEN,
                                     truncation=True).input_ids)

    def question(self, q):
        return self.tok.encode(q)[:-1]  # start token, no end token

    def encode_answer(self, q, a):
        qi = self.question(q)
        ai = self.tok.encode(a)[1:]  # answer ids and the end token
        full = qi + ai
        full = full + [EOT] * (TEXT_LEN - len(full))
        return torch.tensor(full), len(qi)


PAD_WEIGHT = 0.1


def pad_after_end(ids):
    """bool [B, L]: the end-token positions after the first one (padding)."""
    is_end = ids == EOT
    return is_end & (is_end.long().cumsum(1) > 1)


def mask_text(ids, q_len, u, gen):
    """ids [L] -> (masked ids, bool mask of masked positions), in the fraction the pipelines
    mask of their 77."""
    text_len = len(ids)
    unknown = text_len - q_len
    k = int(math.floor(text_len * math.cos(u * math.pi / 2)))
    k = max(1, min(k, unknown))
    perm = torch.randperm(unknown, generator=gen)[:k] + q_len
    m = torch.zeros(text_len, dtype=torch.bool)
    m[perm] = True
    out = ids.clone()
    out[m] = MASK_TEXT
    return out, m


def make_batch(data, b_t2i, b_cap, b_vqa, n_codes, gen, uncond_ids, uncond_frac, text_len):
    """Text ids and targets come out [B, text_len]: the first text_len of the 77 positions."""
    n = len(data.keys)
    B = b_t2i + b_cap + b_vqa
    img = torch.empty(B, 8, 8, dtype=torch.long)
    txt = torch.empty(B, text_len, dtype=torch.long)
    img_tgt = torch.full((B, 8, 8), -100, dtype=torch.long)
    txt_tgt = torch.full((B, text_len), -100, dtype=torch.long)
    t = torch.empty(B)
    idx = torch.randint(n, (B,), generator=gen)
    us = torch.rand(B, generator=gen)
    for j in range(B):
        i = int(idx[j])
        u = float(us[j])
        t[j] = 1 - u
        if j < b_t2i:
            ids = data.ids[i]
            ratio = math.cos(u * math.pi / 2)
            k = max(1, int(math.floor(64 * ratio)))
            perm = torch.randperm(64, generator=gen)[:k]
            m = torch.zeros(64, dtype=torch.bool)
            m[perm] = True
            m = m.reshape(8, 8)
            img[j] = torch.where(m, n_codes, ids)
            img_tgt[j] = torch.where(m, ids, -100)
            drop = torch.rand(1, generator=gen).item() < uncond_frac
            txt[j] = (uncond_ids if drop else data.caption[i])[:text_len]
        else:
            img[j] = data.ids[i]
            if j < b_t2i + b_cap:
                full, q_len = data.caption[i], 0
            else:
                qa = data.qa[i]
                full, q_len = qa[int(torch.randint(len(qa), (1,), generator=gen))][1]
            full = full[:text_len]
            masked, m = mask_text(full, q_len, u, gen)
            txt[j] = masked
            # Every position after the question is a target, masked or not: the pipelines read
            # the answer from the argmax of the last step's logits, known positions included.
            txt_tgt[j, q_len:] = full[q_len:]
    return img, txt, img_tgt, txt_tgt, t


def forward(clip, tr, img_pos, img, txt, t):
    out = clip(txt, output_hidden_states=True)
    pooled, feats = out.text_embeds, out.hidden_states[-2]
    B = img.shape[0]
    micro = torch.tensor([64.0, 64.0, 0.0, 0.0, 6.0]).expand(B, 5)
    txt_pos = torch.zeros(txt.shape[1], 3)
    return tr(hidden_states=img, encoder_hidden_states=feats, pooled_projections=pooled,
              timestep=t, img_ids=img_pos, txt_ids=txt_pos, micro_conds=micro)


@torch.no_grad()
def quick_eval(clip, tr, img_pos, data, remap, n_codes, tok, vq, n=24, steps=12, cfg=4.0):
    """A greedy-draw version of the pipelines (cosine schedule) for monitoring only."""
    clip.eval(); tr.eval()
    sel = list(range(n))
    # t2i
    prompts = torch.stack([data.caption[i] for i in sel])
    uncond = data.encode("").expand(n, -1)
    ids = torch.full((n, 8, 8), n_codes, dtype=torch.long)
    for s in range(steps):
        t = torch.full((2 * n,), (steps - 1 - s) / steps)
        logits, _ = forward(clip, tr, img_pos, torch.cat([ids, ids]), torch.cat([uncond, prompts]), t)
        u_, c_ = logits.chunk(2)
        lg = (u_ + cfg * (c_ - u_)).permute(0, 2, 3, 1).reshape(n, 64, -1)
        lp = lg.log_softmax(-1)
        conf, x = lp.max(-1)
        flat = ids.reshape(n, 64)
        known = flat != n_codes
        x = torch.where(known, flat, x)
        if s == steps - 1:
            ids = x.reshape(n, 8, 8)
            break
        k = int(64 * math.cos((s + 1) / steps * math.pi / 2))
        conf = torch.where(known, torch.full_like(conf, 1e9), conf)
        unknown_count = int((~known).sum(1).min())
        k = max(1, min(k, unknown_count - 1))
        cut = conf.sort(1).values[:, k - 1:k]
        x = torch.where(conf <= cut, torch.full_like(x, n_codes), x)
        ids = x.reshape(n, 8, 8)
    pix = vq.decode(ids, force_not_quantize=True, shape=(n, 8, 8, vq.config.latent_channels)).sample
    arr = (pix.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    t2i_ok = sum(world.judge(a) == data.keys[i] for a, i in zip(arr, sel))
    # captions (greedy, no re-masking schedule shortcut: same schedule on text)
    txt = torch.full((n, TEXT_LEN), MASK_TEXT, dtype=torch.long)
    img = data.ids[sel]
    for s in range(steps):
        t = torch.full((n,), (steps - 1 - s) / steps)
        _, tl = forward(clip, tr, img_pos, img, txt, t)
        lp = tl.log_softmax(-1)
        conf, x = lp[..., :-1].max(-1)
        x = remap[x]
        known = txt != MASK_TEXT
        x = torch.where(known, txt, x)
        if s == steps - 1:
            txt = x
            break
        k = int(TEXT_LEN * math.cos((s + 1) / steps * math.pi / 2))
        k = max(1, min(k, TEXT_LEN - 1))
        conf = torch.where(known, torch.full_like(conf, 1e9), conf)
        cut = conf.sort(1).values[:, k - 1:k]
        txt = torch.where(conf <= cut, torch.full_like(x, MASK_TEXT), x)
    caps = [tok.decode(r.tolist(), skip_special_tokens=True).strip() for r in txt]
    cap_ok = sum(c == world.caption(data.keys[i]) for c, i in zip(caps, sel))
    clip.train(); tr.train()
    return t2i_ok / n, cap_ok / n, caps[:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--muddit-src", type=Path, default=Path("/tmp/muddit-src"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--images", type=int, default=20000, help="jittered renders in the pool")
    ap.add_argument("--batch", type=int, nargs=3, default=[16, 8, 8])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=40, help="steps")
    ap.add_argument("--eval-every", type=float, default=8.0, help="minutes")
    ap.add_argument("--uncond", type=float, default=0.1,
                    help="fraction of text-to-image samples with the empty prompt (for guidance)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", type=Path, default=None,
                    help="warm start: the text encoder and transformer weights of this mmdit.pt "
                         "(a fresh optimizer, step 0)")
    ap.add_argument("--layers", type=int, nargs=2, default=None, metavar=("DUAL", "SINGLE"),
                    help="transformer blocks (default: TRANSFORMER's); with --init, blocks the warm "
                         "start lacks are appended as identities (gates zero)")
    ap.add_argument("--heldout", type=Path,
                    default=Path(__file__).resolve().parents[2] / "models/shapes-eval",
                    help="evaluation set whose images training never draws")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 wastes no time spinning when the machine is shared")
    ap.add_argument("--short-text", type=int, default=None, metavar="L",
                    help="train on the first L of the 77 text positions (every world text and "
                         "its end token fit) until --short-until of the budget, then on all 77")
    ap.add_argument("--short-until", type=float, default=0.8,
                    help="fraction of the budget trained on --short-text positions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from diffusers import VQModel
    from transformers import CLIPTokenizer

    pipeline_module, transformer_module = import_upstream(args.muddit_src)
    clip_tokenizer.write(args.work / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(args.work / "tokenizer")
    used = sorted({i for s in world.all_texts() for i in tok.encode(s)})
    remap = torch.tensor(used)
    to_compact = torch.full((VT,), -100, dtype=torch.long)
    to_compact[remap] = torch.arange(len(used))

    vq_ck = torch.load(args.work / "vqvae.pt")
    vq = VQModel(**vq_ck["config"]).eval()
    vq.load_state_dict(vq_ck["state"])
    n_codes = vq_ck["config"]["num_vq_embeddings"]
    t0 = time.time()
    exclude = world.heldout_hashes(args.heldout)
    data = Data(tok, vq, args.images, args.seed, exclude)
    val = Data(tok, vq, 48, args.seed + 1, exclude)
    longest = max(int((data.caption != EOT).sum(1).max()),
                  max(int((full != EOT).sum()) for qa in data.qa for _, (full, _) in qa)) + 1
    if args.short_text is not None and not longest <= args.short_text <= TEXT_LEN:
        sys.exit(f"--short-text {args.short_text}: the longest text with its end token is "
                 f"{longest} ids, the model reads {TEXT_LEN}")
    print(f"data: {args.images} renders encoded in {time.time() - t0:.0f}s ({data.redraws} redrawn "
          f"as held-out images); {len(used)} text ids", flush=True)

    clip, tr, cfg = build(transformer_module, n_codes, used, args.layers)
    params = list(clip.parameters()) + list(tr.parameters())
    print(f"params: clip {sum(p.numel() for p in clip.parameters())/1e6:.2f}M, transformer "
          f"{sum(p.numel() for p in tr.parameters())/1e6:.2f}M (text head compact)", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    step = 0
    spent = 0.0
    if args.init and not args.resume:
        ck = torch.load(args.init)
        assert ck["used"] == used, "the warm start's text ids differ"
        clip.load_state_dict(ck["clip"])
        if args.layers is None:
            tr.load_state_dict(ck["transformer"])
        else:
            new = grow_from(tr, ck["transformer"])
            print(f"grown from {args.init}: new identity blocks {new}", flush=True)
    if args.resume and (args.work / "mmdit.pt").exists():
        ck = torch.load(args.work / "mmdit.pt")
        clip.load_state_dict(ck["clip"]); tr.load_state_dict(ck["transformer"])
        opt.load_state_dict(ck["opt"]); step = ck["step"]; spent = ck["spent"]
    img_pos = pipeline_module._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(args.seed + step)
    uncond_ids = data.encode("")
    budget = args.minutes * 60
    t_start = time.time() - spent
    last_eval = time.time()
    b_t2i, b_cap, b_vqa = args.batch
    clip.train(); tr.train()
    ema = None

    def save():
        torch.save(dict(clip=clip.state_dict(), transformer=tr.state_dict(), opt=opt.state_dict(),
                        step=step, spent=time.time() - t_start, used=used, cfg=cfg, clip_cfg=CLIP,
                        vq=vq_ck), args.work / "mmdit.pt")

    while time.time() - t_start < budget:
        frac = (time.time() - t_start) / budget
        warm = min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        short = args.short_text is not None and frac < args.short_until
        text_len = args.short_text if short else TEXT_LEN
        img, txt, img_tgt, txt_tgt, t = make_batch(data, b_t2i, b_cap, b_vqa, n_codes, gen, uncond_ids,
                                                  args.uncond, text_len)
        full_txt = torch.where(txt_tgt >= 0, txt_tgt, txt)
        img_logits, txt_logits = forward(clip, tr, img_pos, img, txt, t)
        li = F.cross_entropy(img_logits, img_tgt, ignore_index=-100)
        tt = torch.where(txt_tgt >= 0, to_compact[txt_tgt.clamp(min=0)], -100)
        ce = F.cross_entropy(txt_logits.reshape(-1, txt_logits.shape[-1]), tt.reshape(-1),
                             ignore_index=-100, reduction="none").reshape(tt.shape)
        # The padding after the first end token is most of every text and easy: it weighs
        # PAD_WEIGHT, so the few word positions (a VQA answer is one) carry the loss.
        w = torch.where(pad_after_end(full_txt) & (tt >= 0), PAD_WEIGHT, 1.0) * (tt >= 0)
        lt = (ce * w).sum() / w.sum().clamp(min=1)
        loss = li + lt
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0:
            print(f"step {step} {time.time() - t_start:.0f}s text {text_len} lr {opt.param_groups[0]['lr']:.2e} "
                  f"loss {ema:.3f} (img {li.item():.3f} txt {lt.item():.3f})", flush=True)
        if time.time() - last_eval > args.eval_every * 60:
            save()
            t2i, cap, ex = quick_eval(clip, tr, img_pos, val, remap, n_codes, tok, vq)
            print(f"eval @ step {step}: t2i {t2i:.2f} caption {cap:.2f} {ex}", flush=True)
            last_eval = time.time()
    save()
    t2i, cap, ex = quick_eval(clip, tr, img_pos, val, remap, n_codes, tok, vq)
    print(f"final @ step {step} ({time.time() - t_start:.0f}s): t2i {t2i:.2f} caption {cap:.2f} {ex}", flush=True)


if __name__ == "__main__":
    main()
