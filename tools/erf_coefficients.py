"""Fits the two polynomials of the vector GELU-erf (`kernels/src/cpu/simd.rs`, `gelu_erf`).

With t = |x| / sqrt(2) >= 0:
- below t = SPLIT, erf(t) = t * P(t^2), P of degree 6 fitted to erf(t) / t on [0, SPLIT];
- from SPLIT to TOP, erfc(t) = exp(S(t - MID) - t^2), S of degree 9 fitted to ln erfc(t) + t^2.
Each fit is a least-squares fit on Chebyshev nodes, reweighted by its errors (Lawson's
iteration towards the minimax polynomial), with the coefficients rounded to f32 before each
error is measured. Prints the Rust constants and the worst error of each fit.

    python tools/erf_coefficients.py   # needs numpy; the reference is Python's math.erf / erfc
"""
import math

import numpy as np

SPLIT, MID, TOP = 1.0, 2.75, 4.5


def fit(f, lo, hi, degree, var):
    n = 6000
    t = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    y = np.array([f(v) for v in t])
    x = np.stack([var(t) ** i for i in range(degree + 1)], 1)
    w = np.ones(n)
    best = None
    for _ in range(80):
        c, *_ = np.linalg.lstsq(x * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)
        c = c.astype(np.float32).astype(np.float64)
        e = np.abs(x @ c - y)
        if best is None or e.max() < best[1]:
            best = (c, e.max())
        w = w * (e + 1e-30)
        w /= w.sum()
    return best


def rust(name, coefs):
    values = ", ".join(np.format_float_scientific(np.float32(v), unique=True) for v in coefs)
    return f"const {name}: [f32; {len(coefs)}] = [{values}];"


def main():
    p, p_err = fit(lambda t: math.erf(t) / t if t > 0 else 2 / math.sqrt(math.pi), 0.0, SPLIT, 6,
                   lambda t: t * t)
    s, s_err = fit(lambda t: math.log(math.erfc(t)) + t * t, SPLIT, TOP, 9, lambda t: t - MID)
    print(f"// erf(t) / t on [0, {SPLIT}]: worst error {p_err:.2e}")
    print(rust("ERF_P", p))
    print(f"// ln erfc(t) + t^2 on [{SPLIT}, {TOP}] in t - {MID}: worst error {s_err:.2e}")
    print(rust("ERFC_S", s))


if __name__ == "__main__":
    main()
