#!/usr/bin/env python3
"""Train the VQ-VAE (diffusers `VQModel`, 4 levels: 8 px per id, 64 x 64 -> 8 x 8 ids) on
renders of the shapes world. CPU, deterministic from --seed. Writes OUT/vqvae.pt (state dict
and config) and prints reconstruction metrics (pixel MSE, checker agreement).

    nice -n 19 /work/pyenv/bin/python tools/shapes/train_vq.py --out /tmp/shapes-train --minutes 8
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import world

VQ = dict(
    in_channels=3, out_channels=3,
    block_out_channels=[8, 16, 32, 32],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=8,
    num_vq_embeddings=512,
    mid_block_add_attention=False,
    lookup_from_codebook=True,
    act_fn="silu",
    sample_size=64,
)


HELDOUT = Path(__file__).resolve().parents[2] / "models/shapes-eval"


def dataset(n, seed, exclude=()):
    """n renders of uniformly drawn scene keys, none pixel-identical to an image in `exclude`
    (hashes; the held-out evaluation set)."""
    rng = np.random.default_rng(seed)
    keys = world.all_scene_keys()
    imgs = np.empty((n, world.SIZE, world.SIZE, 3), np.uint8)
    chosen = []
    redraws = 0
    for i in range(n):
        k = keys[int(rng.integers(len(keys)))]
        _, imgs[i], r = world.sample_objects(k, rng, exclude)
        redraws += r
        chosen.append(k)
    if exclude:
        print(f"{n} renders (seed {seed}): {redraws} redrawn as held-out images", flush=True)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0), chosen


def score(vq, test, test_keys):
    """Test MSE of the reconstructions, and how many of them the checker judges as their scene."""
    vq.eval()
    with torch.no_grad():
        rec = vq(test).sample.clamp(0, 1)
    mse = (rec - test).pow(2).mean().item()
    arr = (rec.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    ok = sum(world.judge(a) == k for a, k in zip(arr, test_keys))
    return mse, ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=12000)
    ap.add_argument("--heldout", type=Path, default=HELDOUT,
                    help="evaluation set whose images training never draws")
    ap.add_argument("--init", type=Path, default=None,
                    help="warm start from this vqvae.pt (state and config)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--decoder-only", action="store_true",
                    help="continue OUT/vqvae.pt training only the decoder (and post_quant_conv): "
                         "the ids of every image stay the same, so it may run beside train_mmdit.py")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 2, and 1 with --decoder-only, which runs beside "
                         "train_mmdit.py)")
    args = ap.parse_args()
    if args.threads is None:
        args.threads = 1 if args.decoder_only else 2
    if args.decoder_only:
        return decoder_only(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from diffusers import VQModel

    args.out.mkdir(parents=True, exist_ok=True)
    exclude = world.heldout_hashes(args.heldout)
    data, _ = dataset(args.images, args.seed, exclude)
    test, test_keys = dataset(200, args.seed + 1000, exclude)
    vq = VQModel(**VQ)
    if args.init:
        vq.load_state_dict(torch.load(args.init)["state"])
    opt = torch.optim.Adam(vq.parameters(), lr=args.lr)
    n_codes = VQ["num_vq_embeddings"]
    usage = torch.zeros(n_codes)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    step = 0
    budget = args.minutes * 60
    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(len(data), (args.batch,), generator=gen)
        x = data[idx]
        h = vq.encode(x).latents
        zq, vq_loss, (_, _, ids) = vq.quantize(h)
        rec = vq.decoder(vq.post_quant_conv(zq))
        loss = (rec - x).pow(2).mean() * 10 + (rec - x).abs().mean() + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        usage += torch.bincount(ids.flatten(), minlength=n_codes).float()
        step += 1
        if step % 50 == 0 and frac < 0.8:
            # restart the codes unused in the last 50 steps on random current latents
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                z = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
                pick = torch.randint(len(z), (len(dead),), generator=gen)
                with torch.no_grad():
                    vq.quantize.embedding.weight[dead] = z[pick] + 0.01 * torch.randn(len(dead), z.shape[1], generator=gen)
            print(f"step {step} {time.time() - t0:.0f}s loss {loss.item():.4f} "
                  f"mse {(rec - x).pow(2).mean().item():.5f} dead {len(dead)}", flush=True)
            usage.zero_()
    mse, ok = score(vq, test, test_keys)
    print(f"done: {step} steps in {time.time() - t0:.0f}s; test mse {mse:.5f}; checker agrees on "
          f"{ok}/{len(test_keys)} reconstructions")
    torch.save(dict(state=vq.state_dict(), config=VQ, steps=step, test_mse=mse,
                    checker_ok=ok / len(test_keys)), args.out / "vqvae.pt")


def decoder_only(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from diffusers import VQModel
    ck = torch.load(args.out / "vqvae.pt")
    vq = VQModel(**ck["config"])
    vq.load_state_dict(ck["state"])
    exclude = world.heldout_hashes(args.heldout)
    data, _ = dataset(args.images, args.seed, exclude)
    test, test_keys = dataset(200, args.seed + 1000, exclude)
    with torch.no_grad():
        zq = torch.cat([vq.quantize(vq.encode(data[i:i + 60]).latents)[0] for i in range(0, len(data), 60)])
    params = list(vq.decoder.parameters()) + list(vq.post_quant_conv.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0, step, budget = time.time(), 0, args.minutes * 60
    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(len(data), (args.batch,), generator=gen)
        rec = vq.decoder(vq.post_quant_conv(zq[idx]))
        x = data[idx]
        loss = (rec - x).pow(2).mean() * 10 + (rec - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"decoder step {step} {time.time() - t0:.0f}s mse {(rec - x).pow(2).mean().item():.5f}", flush=True)
    mse, ok = score(vq, test, test_keys)
    print(f"decoder done: {step} steps; test mse {mse:.5f}; checker agrees on {ok}/{len(test_keys)}")
    torch.save(dict(state=vq.state_dict(), config=ck["config"], steps=ck["steps"], decoder_steps=step,
                    test_mse=mse, checker_ok=ok / len(test_keys)), args.out / "vqvae.pt")


if __name__ == "__main__":
    main()
