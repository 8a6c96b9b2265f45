#!/usr/bin/env python3
"""Export the trained shapes-world Muddit in the public layout (f16 weights):

    /work/pyenv/bin/python tools/shapes/export.py --muddit-src /tmp/muddit-src \
        --work /tmp/shapes-train --out models/shapes-64

OUT/transformer/   upstream `SymmetricTransformer2DModel` (save_pretrained); the text head's rows
                   of the ids the world never uses are zeros (their logits are exactly 0, which
                   the training softmax accounted for)
OUT/text_encoder/  `CLIPTextModelWithProjection`, 49408 token rows (unused ones zero)
OUT/tokenizer/     the real CLIP BPE (vocab.json, merges.txt), pad token <|endoftext|>
OUT/vqvae/         diffusers `VQModel`
OUT/scheduler/     upstream `Scheduler` config (cosine)
OUT/mask_token_embedding.pth   the <mask> row of the text encoder (f32, torch.save)
OUT/muddit.json    the command defaults for this model (64 px, step counts, guidance)
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

import clip_tokenizer

DEFAULTS = dict(width=64, height=64, t2i_steps=16, cfg=1.0, i2t_steps=12, resolution=64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--muddit-src", type=Path, default=Path("/tmp/muddit-src"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: WORK/mmdit.pt")
    ap.add_argument("--t2i-steps", type=int, default=DEFAULTS["t2i_steps"])
    ap.add_argument("--i2t-steps", type=int, default=DEFAULTS["i2t_steps"])
    ap.add_argument("--cfg", type=float, default=DEFAULTS["cfg"])
    ap.add_argument("--greedy", action="store_true",
                    help="muddit.json asks for argmax draws (the CLI's --sample overrides it)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.muddit_src.resolve()))
    import src.scheduler as scheduler_module
    import src.transformer as transformer_module
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    ck = torch.load(args.checkpoint or args.work / "mmdit.pt", weights_only=False)
    used = torch.tensor(ck["used"])
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    # text encoder: 49408 rows; the <mask> row (49408) goes to mask_token_embedding.pth
    clip_cfg = dict(ck["clip_cfg"], vocab_size=49408)
    clip = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
    state = dict(ck["clip"])
    emb = state["text_model.embeddings.token_embedding.weight"]
    mask_row = emb[49408].clone().float()
    state["text_model.embeddings.token_embedding.weight"] = emb[:49408].clone()
    missing, unexpected = clip.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    clip.half().save_pretrained(out / "text_encoder", safe_serialization=True)
    torch.save(mask_row.half().float(), out / "mask_token_embedding.pth")

    # transformer: the compact head scattered into the full 49409-row head
    tr = transformer_module.SymmetricTransformer2DModel(**ck["cfg"])
    state = dict(ck["transformer"])
    compact = state.pop("text_decoder.1.weight")
    state.pop("text_decoder.1.rest")
    full = torch.zeros(ck["cfg"]["tokenizer_vocab_size"], compact.shape[1])
    full[used] = compact
    state["text_decoder.1.weight"] = full
    tr.load_state_dict(state, strict=True)
    tr.half().save_pretrained(out / "transformer", safe_serialization=True)

    # the VQ-VAE as train_vq.py left it (its decoder may have trained on after the ids were fixed)
    vq_ck = torch.load(args.work / "vqvae.pt", weights_only=False)
    assert torch.equal(vq_ck["state"]["quantize.embedding.weight"], ck["vq"]["state"]["quantize.embedding.weight"])
    vq = VQModel(**vq_ck["config"])
    vq.load_state_dict(vq_ck["state"])
    vq.half().save_pretrained(out / "vqvae", safe_serialization=True)

    scheduler_module.Scheduler(mask_token_id=ck["cfg"]["vocab_size"] - 1,
                               masking_schedule="cosine").save_pretrained(out / "scheduler")
    clip_tokenizer.write(out / "tokenizer")
    defaults = dict(DEFAULTS, t2i_steps=args.t2i_steps, i2t_steps=args.i2t_steps, cfg=args.cfg)
    if args.greedy:
        defaults["greedy"] = True
    (out / "muddit.json").write_text(json.dumps(defaults, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported step {ck['step']} ({ck['spent']:.0f} s of training) to {out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
