#!/usr/bin/env python3
"""The README's grid: images `muddit t2i` wrote, each under its prompt, scaled up 3x (nearest).

    cargo run --release -p muddit-cli -- t2i --seed 1 --prompt "..." --prompt "..." \
        --output /tmp/grid-%d.png
    /work/pyenv/bin/python tools/shapes/make_grid.py --out docs/shapes-grid.png \
        /tmp/grid-0.png ... (the prompts are read from each PNG's muddit-parameters chunk)
"""

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SCALE = 3
COLS = 4


def prompt_of(path: Path) -> str:
    info = Image.open(path).info
    params = json.loads(info["muddit-parameters"])
    return params["prompts"][params["index"] // params["images_per_prompt"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("images", type=Path, nargs="+")
    args = ap.parse_args()
    font = ImageFont.load_default()
    cell_w, img_h, text_h = 64 * SCALE + 60, 64 * SCALE, 34
    rows = (len(args.images) + COLS - 1) // COLS
    grid = Image.new("RGB", (COLS * cell_w, rows * (img_h + text_h)), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for i, path in enumerate(args.images):
        x, y = (i % COLS) * cell_w, (i // COLS) * (img_h + text_h)
        img = Image.open(path).convert("RGB").resize((64 * SCALE, 64 * SCALE), Image.NEAREST)
        grid.paste(img, (x + 30, y + 2))
        words = prompt_of(path).split()
        lines = [" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2:])] \
            if len(words) > 5 else [" ".join(words)]
        for j, line in enumerate(lines):
            draw.text((x + 8, y + img_h + 4 + 13 * j), line, fill=(230, 230, 230), font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.size[0]} x {grid.size[1]})")


if __name__ == "__main__":
    main()
