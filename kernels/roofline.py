"""The numbers of kernels/ROOFLINE.md: one guided step of the public 1B model on an H100 SXM.

Run by hand (`python3 kernels/roofline.py`); prints the markdown of the 512 px and 1024 px
GEMM tables and of the 512 px step under each remaining GEMM change. The split-K choice
mirrors `muddit_kernels::cuda::ops::split_k` (same cost model, same constants); `ops.rs`'s
unit test pins the choices at the 512 px shapes.
"""

import math

PEAK = 989e12  # dense bf16 tensor-core flop/s
HBM = 3.35e12  # bytes/s
GEMM_EFF = 0.55  # of PEAK per busy block slot, mma.sync (see ROOFLINE.md)
BW_EFF = 0.75  # of HBM for bandwidth-bound passes
SLOTS = 132 * 2  # resident GEMM blocks
TILE, BK = 128, 32
MAX_SPLITS, MIN_DEPTH = 8, 8 * BK
FLOPS_PER_BYTE = 220.0

D, HEADS, DUAL, SINGLE = 1024, 8, 14, 28


def slices(k, s):
    steps = math.ceil(k / BK)
    per = math.ceil(steps / max(1, min(s, steps)))
    return math.ceil(steps / per), per * BK


def split_k(m, n, k):
    tiles = math.ceil(m / TILE) * math.ceil(n / TILE)

    def cost(s):
        count, depth = slices(k, s)
        flops = math.ceil(tiles * count / SLOTS) * SLOTS * 2 * TILE * TILE * depth
        return flops + (8 * count * m * n * FLOPS_PER_BYTE if count > 1 else 0)

    best = 1
    for s in range(2, MAX_SPLITS + 1):
        if slices(k, s)[1] < MIN_DEPTH:
            break
        if cost(s) < cost(best):
            best = s
    return best


def gemm(m, n, k, out_bytes, split):
    """(flops, bytes, floor s, predicted s): `out_bytes` per output element (2 bf16, 4 f32,
    8 for the f32 residual read and written)."""
    flops = 2 * m * n * k
    nbytes = 2 * n * k + 2 * m * k + out_bytes * m * n
    floor = max(flops / PEAK, nbytes / HBM)
    s = split_k(m, n, k) if split else 1
    count, depth = slices(k, s)
    tiles = math.ceil(m / TILE) * math.ceil(n / TILE)
    waves = math.ceil(tiles * count / SLOTS)
    compute = waves * 2 * TILE * TILE * depth / (PEAK * GEMM_EFF / SLOTS)
    t = max(compute, nbytes / (HBM * BW_EFF))
    if count > 1:
        t += 8 * count * m * n / (HBM * BW_EFF)
    return flops, nbytes, floor, t, count


def step_gemms(image_tokens, ids):
    """(name, launches per step, M, N, K, output bytes) of a guided step (batch 2)."""
    mi, mt, ms = 2 * image_tokens, 2 * 77, 2 * (image_tokens + 77)
    rows = []
    for stream, m in (("dual image", mi), ("dual text", mt)):
        rows += [
            (f"{stream} qkv", DUAL, m, 3 * D, D, 2),
            (f"{stream} out", DUAL, m, D, D, 2),
            (f"{stream} ff up + GELU", DUAL, m, 4 * D, D, 2),
            (f"{stream} ff down, gated residual", DUAL, m, D, 4 * D, 8),
        ]
    rows += [
        ("single qkv + proj_mlp", SINGLE, ms, 7 * D, D, 2),
        ("single proj_out, gated residual", SINGLE, ms, D, 5 * D, 8),
        ("image head conv2 (f32 logits)", 1, 2 * ids, 8192, D, 4),
    ]
    return rows


def table(image_tokens, ids):
    print("| GEMM (M x N x K) | launches | FLOPs | bytes | floor | one pass | split-K (slices) |")
    print("|---|---|---|---|---|---|---|")
    tot = [0.0] * 5
    for name, n_l, m, n, k, ob in step_gemms(image_tokens, ids):
        f, b, fl, t1, _ = gemm(m, n, k, ob, False)
        _, _, _, t2, s = gemm(m, n, k, ob, True)
        tot = [a + n_l * x for a, x in zip(tot, (f, b, fl, t1, t2))]
        print(f"| {name} ({m} x {n} x {k}) | {n_l} | {n_l * f / 1e9:.0f} GF | "
              f"{n_l * b / 1e6:.0f} MB | {n_l * fl * 1e6:.0f} us | {n_l * t1 * 1e6:.0f} us | "
              f"{n_l * t2 * 1e6:.0f} us ({s}) |")
    print(f"| **GEMMs** | | **{tot[0] / 1e12:.2f} TF** | {tot[1] / 1e9:.2f} GB | "
          f"**{tot[2] * 1e3:.2f} ms** | **{tot[3] * 1e3:.2f} ms** | **{tot[4] * 1e3:.2f} ms** |")


def bar_scenarios(image_tokens, ids, others_s):
    """The step under each remaining GEMM change: every block slot busy (a perfect stream-K
    schedule), with and without padded 128-row tiles, and a wgmma kernel at 65% / 70%.
    `others_s`: the non-GEMM kernels of the step (attention, norms, sampler), in seconds."""
    rows = step_gemms(image_tokens, ids)
    padded = sum(n_l * math.ceil(m / TILE) * math.ceil(n / TILE) * TILE * TILE * 2 * k
                 for _, n_l, m, n, k, _ in rows)
    exact = sum(n_l * 2 * m * n * k for _, n_l, m, n, k, _ in rows)
    print("| GEMM kernel | schedule | GEMMs | step |")
    print("|---|---|---|---|")
    for kernel, eff, schedule, flops in (
        ("mma.sync", GEMM_EFF, "every block slot busy (stream-K), 128-row tiles padded", padded),
        ("mma.sync", GEMM_EFF, "every slot busy, no padding", exact),
        ("wgmma", 0.65, "every slot busy, no padding", exact),
        ("wgmma", 0.70, "every slot busy, no padding", exact),
    ):
        t = flops / (PEAK * eff)
        print(f"| {kernel} at {eff:.0%} | {schedule} | {t * 1e3:.2f} ms | "
              f"{(t + others_s) * 1e3:.2f} ms |")


if __name__ == "__main__":
    print("512 px (256 image tokens, 1024 ids):")
    table(256, 1024)
    print("\n1024 px (1024 image tokens, 4096 ids):")
    table(1024, 4096)
    print("\n512 px, the step under each remaining GEMM change (other kernels 0.37 ms):")
    bar_scenarios(256, 1024, 0.373e-3)
