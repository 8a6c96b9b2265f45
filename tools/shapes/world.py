"""The shapes world of the default model: scenes, rendering, captions, questions, a pixel checker.

64 x 64 RGB, black background, one or two flat shapes (circle, square, triangle) of pure colors.
One shape: at the left, right, top, bottom or center, about 20 px across. Two shapes: side by
side, different colors. Jitter: every shape's side is drawn from 18..=22 px and its center is
moved by -3..=3 px on each axis, so one scene key has many renders (22,050 single-shape images,
about 16.2 million pairs). Everything is a pure function of a seed (numpy's PCG64).

Held out: `heldout_hashes(eval_dir)` reads the evaluation set's images; `sample_objects(key,
rng, exclude)` redraws the jitter until the render is none of them, so no training image is
pixel-identical to an evaluation image.

The vocabulary written here is the single source of truth: `python tools/shapes/world.py
--vocab models/shapes-64/eval/world.json` writes it for the Rust checker and eval.
"""

import json
import sys
from pathlib import Path

import numpy as np

SIZE = 64
SHAPES = ["circle", "square", "triangle"]
COLORS = {  # name -> RGB, pure and flat
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
}
POSITIONS = {  # name -> (center x, center y, phrase)
    "left": (16, 32, "on the left"),
    "right": (48, 32, "on the right"),
    "top": (32, 16, "at the top"),
    "bottom": (32, 48, "at the bottom"),
    "center": (32, 32, "in the center"),
}
PAIR_CENTERS = ((18, 32), (46, 32))  # left and right shape of a pair
SIDE_RANGE = (18, 22)  # bounding-box side in px, inclusive ("about 20 px across")
JITTER = 3  # center jitter in px, each axis, inclusive (positions stay 16 px apart; a pair's
            # shapes can touch at x = 32 but never overlap, and always differ in color)
COUNT_WORDS = {1: "one", 2: "two"}


def all_scene_keys():
    """Every scene up to jitter: ('single', shape, color, pos) and ('pair', s1, c1, s2, c2)."""
    keys = []
    for s in SHAPES:
        for c in COLORS:
            for p in POSITIONS:
                keys.append(("single", s, c, p))
    for s1 in SHAPES:
        for c1 in COLORS:
            for s2 in SHAPES:
                for c2 in COLORS:
                    if c1 != c2:
                        keys.append(("pair", s1, c1, s2, c2))
    return keys


def scene_objects(key, rng):
    """[(shape, color, cx, cy, side)] with jitter drawn from rng (left to right for pairs)."""
    def obj(shape, color, cx, cy):
        side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
        dx, dy = rng.integers(-JITTER, JITTER + 1, size=2)
        return (shape, color, cx + int(dx), cy + int(dy), side)
    if key[0] == "single":
        _, s, c, p = key
        cx, cy, _ = POSITIONS[p]
        return [obj(s, c, cx, cy)]
    _, s1, c1, s2, c2 = key
    return [obj(s1, c1, *PAIR_CENTERS[0]), obj(s2, c2, *PAIR_CENTERS[1])]


def image_hash(img):
    """sha1 hex of uint8 [64, 64, 3] pixels: the identity of a render."""
    import hashlib
    return hashlib.sha1(np.ascontiguousarray(img, np.uint8).tobytes()).hexdigest()


def heldout_hashes(eval_dir):
    """The hashes of the evaluation set's images (eval_dir/eval.json, its PNGs): the renders
    training must never draw. An empty set when eval_dir is None."""
    if eval_dir is None:
        return set()
    from PIL import Image
    eval_dir = Path(eval_dir)
    doc = json.loads((eval_dir / "eval.json").read_text())
    return {image_hash(np.asarray(Image.open(eval_dir / it["file"]).convert("RGB")))
            for it in doc["images"]}


def sample_objects(key, rng, exclude=()):
    """(objects, image, redraws): scene_objects(key, rng) rendered, with the jitter redrawn
    (from the same rng) while the render's hash is in `exclude`."""
    redraws = 0
    while True:
        objs = scene_objects(key, rng)
        img = render(objs)
        if not exclude or image_hash(img) not in exclude:
            return objs, img, redraws
        redraws += 1


def render(objects):
    """uint8 [64, 64, 3]: hard-edged shapes on black. The bounding box of a shape of side `side`
    centered at (cx, cy) is columns/rows [cx - side//2, cx - side//2 + side)."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    for shape, color, cx, cy, side in objects:
        x0, y0 = cx - side // 2, cy - side // 2
        x1, y1 = x0 + side, y0 + side
        if shape == "square":
            m = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        elif shape == "circle":
            r = side / 2
            m = (xx - (x0 + r)) ** 2 + (yy - (y0 + r)) ** 2 <= r * r
        else:  # triangle pointing up: apex at the top middle, base along the bottom
            t = (yy - y0) / side  # 0 at the apex row, 1 at the base
            half = t * side / 2
            m = (yy >= y0) & (yy < y1) & (np.abs(xx - (x0 + side / 2)) <= half)
        img[m] = COLORS[color]
    return img


def caption(key):
    if key[0] == "single":
        _, s, c, p = key
        return f"a {c} {s} {POSITIONS[p][2]}"
    _, s1, c1, s2, c2 = key
    return f"a {c1} {s1} to the left of a {c2} {s2}"


def questions(key):
    """[(question, answer)] that have one right answer for this scene."""
    qa = []
    if key[0] == "single":
        _, s, c, p = key
        qa.append((f"what color is the {s}?", c))
        qa.append((f"what shape is {POSITIONS[p][2]}?", s))
        qa.append(("how many shapes are there?", "one"))
        qa.append((f"where is the {c} {s}?", p))
    else:
        _, s1, c1, s2, c2 = key
        if s1 != s2:
            qa.append((f"what color is the {s1}?", c1))
            qa.append((f"what color is the {s2}?", c2))
        qa.append(("what shape is on the left?", s1))
        qa.append(("what shape is on the right?", s2))
        qa.append(("how many shapes are there?", "two"))
        qa.append((f"where is the {c1} {s1}?", "left"))
        qa.append((f"where is the {c2} {s2}?", "right"))
    return qa


def all_texts():
    texts = set()
    for k in all_scene_keys():
        texts.add(caption(k))
        for q, a in questions(k):
            texts.add(q)
            texts.add(a)
    return sorted(texts)


# ----------------------------------------------------------------------------- checker

DARK = 80  # a pixel whose largest channel is below this is background


def classify_pixels(img):
    """int [64, 64]: -1 background, else the index into COLORS of the nearest chromaticity."""
    f = img.astype(np.float64)
    mx = f.max(axis=2)
    names = list(COLORS)
    pal = np.array([COLORS[n] for n in names], np.float64)
    pal = pal / pal.max(axis=1, keepdims=True)
    chroma = f / np.maximum(mx, 1)[..., None]
    d = ((chroma[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    cls = d.argmin(-1)
    cls[mx < DARK] = -1
    return cls


def components(cls, min_area=30):
    """[(color, area, x0, y0, x1, y1)] of 4-connected same-color regions of at least min_area."""
    names = list(COLORS)
    seen = np.zeros(cls.shape, bool)
    out = []
    h, w = cls.shape
    for y in range(h):
        for x in range(w):
            if cls[y, x] < 0 or seen[y, x]:
                continue
            c = cls[y, x]
            stack, pix = [(y, x)], []
            seen[y, x] = True
            while stack:
                py, px = stack.pop()
                pix.append((py, px))
                for ny, nx in ((py + 1, px), (py - 1, px), (py, px + 1), (py, px - 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and cls[ny, nx] == c:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            if len(pix) >= min_area:
                ys, xs = zip(*pix)
                out.append((names[c], len(pix), min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return out


def shape_kind(area, bw, bh):
    fill = area / (bw * bh)
    if fill >= 0.9:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def judge(img):
    """The scene key the pixels show, or None when they show no valid scene."""
    comps = components(classify_pixels(img))
    objs = []
    for color, area, x0, y0, x1, y1 in comps:
        bw, bh = x1 - x0, y1 - y0
        if not (14 <= bw <= 26 and 14 <= bh <= 26):
            return None
        objs.append((shape_kind(area, bw, bh), color, (x0 + x1) / 2, (y0 + y1) / 2))
    if len(objs) == 1:
        s, c, cx, cy = objs[0]
        best = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
        px, py, _ = POSITIONS[best]
        if abs(px - cx) > 6 or abs(py - cy) > 6:
            return None
        return ("single", s, c, best)
    if len(objs) == 2:
        objs.sort(key=lambda o: o[2])
        (s1, c1, x1_, y1_), (s2, c2, x2_, y2_) = objs
        for (s, c, cx, cy), (px, py) in zip(objs, PAIR_CENTERS):
            if abs(px - cx) > 6 or abs(py - cy) > 6:
                return None
        if c1 == c2:
            return None
        return ("pair", s1, c1, s2, c2)
    return None


def vocab_json():
    return dict(size=SIZE, shapes=SHAPES, colors={k: list(v) for k, v in COLORS.items()},
                positions={k: dict(x=v[0], y=v[1], phrase=v[2]) for k, v in POSITIONS.items()},
                pair_centers=[list(c) for c in PAIR_CENTERS], side_range=list(SIDE_RANGE),
                jitter=JITTER, count_words={str(k): v for k, v in COUNT_WORDS.items()},
                checker=dict(dark=DARK, min_area=30, fill_square=0.9, fill_circle=0.64,
                             side_min=14, side_max=26, max_offset=6))


def all_single_renders():
    """Every (key, objects) of one shape: 90 keys x 5 sides x 7 x 7 offsets."""
    out = []
    for k in all_scene_keys():
        if k[0] != "single":
            continue
        cx, cy, _ = POSITIONS[k[3]]
        for side in range(SIDE_RANGE[0], SIDE_RANGE[1] + 1):
            for dy in range(-JITTER, JITTER + 1):
                for dx in range(-JITTER, JITTER + 1):
                    out.append((k, [(k[1], k[2], cx + dx, cy + dy, side)]))
    return out


if __name__ == "__main__":
    # Self-check: every single-shape render, and the extreme and random pairs, judged right.
    bad = 0
    singles = all_single_renders()
    for k, objs in singles:
        if judge(render(objs)) != k:
            bad += 1
            print("misjudged", k, objs, judge(render(objs)))
    n = len(singles)
    ex = (-JITTER, JITTER)
    for s1 in SHAPES:
        for s2 in SHAPES:
            for side in SIDE_RANGE:
                for dx1 in ex:
                    for dx2 in ex:
                        for dy in ex:
                            k = ("pair", s1, "red", s2, "white")
                            objs = [(s1, "red", PAIR_CENTERS[0][0] + dx1, 32 + dy, side),
                                    (s2, "white", PAIR_CENTERS[1][0] + dx2, 32 - dy, side)]
                            n += 1
                            if judge(render(objs)) != k:
                                bad += 1
                                print("misjudged", k, objs, judge(render(objs)))
    rng = np.random.default_rng(0)
    keys = [k for k in all_scene_keys() if k[0] == "pair"]
    for k in keys:
        for _ in range(10):
            n += 1
            if judge(render(scene_objects(k, rng))) != k:
                bad += 1
                print("misjudged", k)
    print(f"{n} renders, {bad} misjudged; {len(all_texts())} texts")
