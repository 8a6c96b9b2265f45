"""One sitting of muddit against the upstream PyTorch code, alternated, on this CPU.

Run by hand (never by CI); it takes 10 to 60 minutes depending on the CPU:

    /work/pyenv/bin/python benches/pytorch/sitting.py --muddit-src /tmp/muddit-src \
        --model /work/m512 --rounds 2 --dtypes f32,bf16 [--pipeline-steps 16]

Each round, for each dtype, runs our `muddit --dtype D bench --steps 3 --json` (load, text
encoding, step median, VQ decode of one run; the text encoding and the decode are each the
process's first, PyTorch's are medians after a warm-up), then `peer.py` for the same stages: `--what step`,
`--what text`, `--what vq` (and, once at the end, `--what pipeline` against our
`bench --steps N` when `--pipeline-steps` is given). Both sides get `--threads` threads
(`RAYON_NUM_THREADS`, `OMP_NUM_THREADS`). A PyTorch call that runs past `--peer-timeout`
seconds is stopped and reported as such; `--skip vq:bf16` leaves a stage out (PyTorch's bf16
VQ decode on a CPU without bf16 instructions takes over 40 minutes).

Prints the CPU (`lscpu` model and the flags that choose our kernels), the level our products
chose, every raw result as a JSON line, then a markdown table per dtype: each stage's seconds per
round, ours against PyTorch, and the ratio (ours / PyTorch; below 1 is faster). The raw lines
go to `--log` as well. Load times depend on whether the model's files are in the page cache
(PyTorch's f32 runs hold 9 GB and can push them out).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve"]


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return f"lscpu failed: {e}"
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("Flags", "").split())
    have = [f for f in FLAGS if f in flags]
    return (f"{fields.get('Model name', '?')}, family {fields.get('CPU family', '?')} model "
            f"{fields.get('Model', '?')}, {fields.get('CPU(s)', '?')} CPUs; flags: {' '.join(have)}")


def run_json(cmd, env, timeout):
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout} s"}
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    text = out.stdout.strip()
    try:
        # `peer.py` prints one JSON line last; `muddit bench --json` one JSON document.
        return json.loads(text) if text.startswith("{\n") else json.loads(text.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"no JSON after {time.perf_counter() - start:.0f} s: {text[-300:]}"}


def ours_stages(r: dict) -> dict:
    if "error" in r:
        return {}
    return {
        "load": r["load_s"],
        "text": r["text_encode_ms"] / 1e3,
        "step": r["step_ms"]["median"] / 1e3,
        "vq": r["vq_decode_ms"] / 1e3,
        "total": r["total_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--muddit-src", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--muddit", type=Path, default=HERE.parents[1] / "target/release/muddit")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-timeout", type=int, default=900)
    ap.add_argument("--pipeline-steps", type=int, default=0)
    ap.add_argument("--skip", default="", help="PyTorch stages not to run, e.g. vq:bf16,step:bf16")
    ap.add_argument("--log", type=Path, default=Path("sitting.jsonl"))
    args = ap.parse_args()
    if not args.muddit.is_file():
        sys.exit(f"{args.muddit}: no muddit binary (cargo build --release -p muddit-cli)")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    ours = [str(args.muddit), "--model", str(args.model)]
    peer = [args.python, str(HERE / "peer.py"), "--muddit-src", str(args.muddit_src),
            "--model", str(args.model), "--threads", str(args.threads)]
    print(f"CPU: {cpu_line()}")
    results = {}  # (dtype, round, side, stage) -> seconds or None

    def record(dtype, rnd, side, stages, raw):
        line = {"time": time.strftime("%H:%M:%S"), "dtype": dtype, "round": rnd, "side": side, "raw": raw}
        print(json.dumps(line), flush=True)
        with args.log.open("a") as f:
            f.write(json.dumps(line) + "\n")
        for stage, seconds in stages.items():
            results[(dtype, rnd, side, stage)] = seconds

    dtypes = args.dtypes.split(",")
    for rnd in range(1, args.rounds + 1):
        for dtype in dtypes:
            r = run_json(ours + ["--dtype", dtype, "bench", "--steps", "3", "--json"], env, None)
            if rnd == 1 and "cpu_kernels" in r:
                print(f"our level for {dtype}: {json.dumps(r['cpu_kernels'][dtype])}")
            stages = ours_stages(r)
            record(dtype, rnd, "ours", {k: stages.get(k) for k in ("load", "text", "step", "vq")}, r)
            for what, runs in (("step", 2), ("text", 3), ("vq", 1)):
                if f"{what}:{dtype}" in args.skip.split(","):
                    continue
                r = run_json(peer + ["--dtype", dtype, "--what", what, "--runs", str(runs)], env,
                             args.peer_timeout)
                record(dtype, rnd, "pytorch", {what: r.get("median_s")}, r)
    if args.pipeline_steps:
        dtype = dtypes[0]
        r = run_json(ours + ["--dtype", dtype, "bench", "--steps", str(args.pipeline_steps), "--json"], env, None)
        stages = ours_stages(r)
        record(dtype, 0, "ours", {"whole": stages.get("total"), "load": stages.get("load")}, r)
        r = run_json(peer + ["--dtype", dtype, "--what", "pipeline", "--steps", str(args.pipeline_steps)], env,
                     args.peer_timeout)
        record(dtype, 0, "pytorch", {"whole": r.get("total_s"), "load": r.get("load_s")}, r)

    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for dtype in dtypes:
        print(f"\n{dtype}, {args.threads} threads ({cpu_line().split(';')[0]})\n")
        print("| stage | round | ours s | PyTorch s | ratio |")
        print("|---|---|---|---|---|")
        rounds = [(r, r) for r in range(1, args.rounds + 1)]
        if args.pipeline_steps and dtype == dtypes[0]:
            rounds.append((0, f"whole, {args.pipeline_steps} steps"))
        for stage in ("load", "text", "step", "vq", "whole"):
            for rnd, label in rounds:
                a, b = results.get((dtype, rnd, "ours", stage)), results.get((dtype, rnd, "pytorch", stage))
                if a is None and b is None:
                    continue
                ratio = "-" if a is None or not b else f"{a / b:.2f}"
                print(f"| {stage} | {label} | {fmt(a)} | {fmt(b)} | {ratio} |")


if __name__ == "__main__":
    main()
