#!/usr/bin/env python3
"""Write the held-out evaluation set of the shapes world and the world's vocabulary and checker
parameters for the Rust side. Held out: the images are drawn from a seed of their own, and
train_vq.py / train_mmdit.py read this set (`--heldout`) and redraw any training render that
is pixel-identical to one of its images (world.sample_objects), so no evaluation image was
trained on. The text-to-image prompts cannot be held out (the world has 360 captions): that
part measures drawing a right, checker-valid image for a known caption.

    /work/pyenv/bin/python tools/shapes/make_eval.py --out models/shapes-eval

OUT/eval.json: {"world": ..., "t2i": [{"prompt", "key"}], "images": [{"file", "key",
"objects": [[shape, color, cx, cy, side]], "sha1", "caption", "qa": [{"question",
"answer"}]}]}; OUT/images/NNN.png.
A key is the scene as a list: ["single", shape, color, position] or ["pair", shape1, color1,
shape2, color2] (left to right).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import world

SEED = 20261122


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--t2i", type=int, default=100)
    ap.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    keys = world.all_scene_keys()
    singles = [k for k in keys if k[0] == "single"]
    pairs = [k for k in keys if k[0] == "pair"]

    def pick(n):
        # half singles, half pairs, without repeats
        a = [singles[i] for i in rng.permutation(len(singles))[: n // 2]]
        b = [pairs[i] for i in rng.permutation(len(pairs))[: n - n // 2]]
        out = a + b
        return [out[i] for i in rng.permutation(len(out))]

    t2i = [dict(prompt=world.caption(k), key=list(k)) for k in pick(args.t2i)]
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, k in enumerate(pick(args.images)):
        objs = world.scene_objects(k, rng)
        img = world.render(objs)
        assert world.judge(img) == k
        name = f"images/{i:03d}.png"
        Image.fromarray(img, "RGB").save(args.out / name)
        qa = world.questions(k)
        chosen = [qa[j] for j in sorted(rng.permutation(len(qa))[:2])]
        images.append(dict(file=name, key=list(k), objects=[list(o) for o in objs],
                           sha1=world.image_hash(img), caption=world.caption(k),
                           qa=[dict(question=q, answer=a) for q, a in chosen]))
    heldout = ("the images are held out: the training scripts (--heldout this folder) redraw "
               "any render whose pixels equal one of them; the t2i prompts are captions of the "
               "world's 360 scenes, which training uses")
    doc = dict(generator="tools/shapes/make_eval.py", seed=SEED, heldout=heldout,
               world=world.vocab_json(),
               t2i=t2i, images=images)
    (args.out / "eval.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(t2i)} prompts, {len(images)} images, "
          f"{sum(len(x['qa']) for x in images)} questions -> {args.out}")


if __name__ == "__main__":
    main()
