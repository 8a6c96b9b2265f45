#!/usr/bin/env python3
"""`muddit eval` with the upstream PyTorch pipeline (`UnifiedPipeline`) on an exported model
folder: the same held-out set, step counts and guidance (from the model's muddit.json), the
same checker (world.judge), caption exact match and attributes, VQA exact match. Shows the
export is faithful when its numbers agree with the engine's within sampling noise (the two
draw different random numbers). Greedy (`--greedy`, or `"greedy": true` in muddit.json):
argmax draws and no Gumbel noise, by the fixtures' patches of the upstream scheduler
(`tools/fixtures/make_pipeline_fixtures.py`, `Recorder`), as `muddit --greedy` draws.

    /work/pyenv/bin/python tools/shapes/eval_upstream.py --muddit-src /tmp/muddit-src \
        --model models/shapes-64 --set models/shapes-eval [--limit N] [--greedy] [--json]
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import world

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools/fixtures"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from make_pipeline_fixtures import Recorder  # noqa: E402
from muddit_tools import import_upstream_package, load_upstream_pipeline  # noqa: E402


def attributes(got, want):
    total = (2 if want[0] == "single" else 4) + (1 if want[0] == "single" else 0)
    if got is None or got[0] != want[0]:
        return 0, total
    return sum(a == b for a, b in zip(got[1:], want[1:])), total


def parse_caption(text):
    for k in world.all_scene_keys():
        if world.caption(k) == text:
            return k
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--muddit-src", type=Path, default=Path("/tmp/muddit-src"))
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--set", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    upstream = import_upstream_package(args.muddit_src)
    pipeline_module, scheduler_module, _ = upstream

    t_all = time.time()
    root = args.model
    d = json.loads((root / "muddit.json").read_text())
    greedy = args.greedy or d.get("greedy", False)
    if greedy:
        Recorder(scheduler_module, pipeline_module)
    doc = json.loads((args.set / "eval.json").read_text())
    prompts = doc["t2i"][: args.limit]
    images = doc["images"][: args.limit]
    pipe = load_upstream_pipeline(upstream, root, torch.float32)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    out = pipe(prompt=[p["prompt"] for p in prompts], height=64, width=64,
               guidance_scale=d["cfg"], num_inference_steps=d["t2i_steps"], output_type="latent",
               generator=gen)
    ids = out.images
    with torch.no_grad():
        pix = pipe.vqvae.decode(ids, force_not_quantize=True, shape=(
            ids.shape[0], ids.shape[1], ids.shape[2], pipe.vqvae.config.latent_channels)).sample.clip(0, 1)
    arr = (pix.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    t2i_ok = sum(world.judge(a) == tuple(p["key"]) for a, p in zip(arr, prompts))
    t2i_s = time.time() - t0

    r = d["resolution"]
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(args.set / it["file"]).convert("RGB")).copy())
                        .permute(2, 0, 1).float() / 255 for it in images])
    mask_emb = str(root / "mask_token_embedding.pth")
    t0 = time.time()
    caps = pipe(prompt=None, image=imgs, height=r, width=r, num_inference_steps=d["i2t_steps"],
                mask_token_embedding=mask_emb, generator=gen).prompts
    exact = sum(c.strip() == it["caption"] for c, it in zip(caps, images))
    attr = [attributes(parse_caption(c.strip()), tuple(it["key"])) for c, it in zip(caps, images)]
    cap_s = time.time() - t0

    t0 = time.time()
    qa = [(i, q) for i, it in enumerate(images) for q in it["qa"]]
    answers = pipe(prompt=[q["question"] for _, q in qa], image=imgs[[i for i, _ in qa]], height=r,
                   width=r, num_inference_steps=d["i2t_steps"], mask_token_embedding=mask_emb,
                   generator=gen).prompts
    right = sum(a.strip() == q["answer"] for a, (_, q) in zip(answers, qa))
    vqa_s = time.time() - t0
    report = dict(
        model=str(root), pipeline="upstream UnifiedPipeline (PyTorch, f32)", seed=args.seed,
        greedy=greedy,
        t2i=dict(n=len(prompts), steps=d["t2i_steps"], cfg=d["cfg"], full=t2i_ok / len(prompts)),
        caption=dict(n=len(images), steps=d["i2t_steps"], exact=exact / len(images),
                     attributes=sum(a for a, _ in attr) / sum(t for _, t in attr),
                     examples=caps[:5]),
        vqa=dict(n=len(qa), accuracy=right / len(qa),
                 examples=[[q["question"], a] for a, (_, q) in list(zip(answers, qa))[:5]]),
        seconds=dict(t2i=t2i_s, caption=cap_s, vqa=vqa_s, total=time.time() - t_all),
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
