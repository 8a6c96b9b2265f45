"""The PyTorch peer of `muddit bench`: the upstream Muddit code on the same model folder.

Run by hand (never by CI), alternating with our runs in one sitting, e.g.

    /work/pyenv/bin/python benches/pytorch/peer.py --muddit-src /path/to/Muddit \
        --model /work/bench-1b --dtype bf16 --what step --runs 3
    /work/pyenv/bin/python benches/pytorch/peer.py --muddit-src /path/to/Muddit \
        --model /work/bench-1b --dtype bf16 --what pipeline --steps 16

`--what step`: one guided text-to-image transformer call (batch 2: unconditional and conditional,
77 text tokens, the id grid of `--size` px), as `UnifiedPipeline` makes it; prints the median of
`--runs` after one warm-up. `--what vq`: the VQ decode of a random id grid (`--size` / 16 per side; 32 x 32 -> 512 px) as
`UnifiedPipeline` calls it (`VQModel.decode` with `force_not_quantize=True`), median of `--runs`
after one warm-up. `--what text`: the CLIP text tower on the prompt and the negative prompt
(one 77-token call each, hidden states kept), median of `--runs` after one warm-up.
`--what pipeline`: a whole `UnifiedPipeline` text-to-image run (load,
text encoding, `--steps` guided steps, VQ decode, PIL image) timed from the first `from_pretrained`
call; prints the wall time and the peak resident memory of the process.

`--muddit-src DIR`: a checkout of M-E-AGI-Lab/Muddit holding `src/pipeline.py`,
`src/transformer.py` and `src/scheduler.py` (imported as the package `src`; not part of this
repository). `--model DIR`: a model folder in the public layout, e.g. one written by
`muddit debug random-checkpoint --preset muddit-512 --dtype bf16 --out DIR`.
Needs torch, diffusers 0.34.0, transformers 4.48.0 (the venv at /work/pyenv).
"""
import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from muddit_tools import import_upstream_package, load_upstream_pipeline  # noqa: E402


def image_ids(rows: int, cols: int) -> torch.Tensor:
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(-1, 3)


def bench_step(transformer_module, model: Path, dtype, size: int, runs: int) -> dict:
    t = transformer_module.SymmetricTransformer2DModel.from_pretrained(model, subfolder="transformer")
    t.to(dtype).eval()
    cfg = t.config
    grid = size // 16
    gen = torch.Generator().manual_seed(0)
    ids = torch.full((2, grid, grid), cfg.vocab_size - 1, dtype=torch.long)
    hidden = torch.randn(2, 77, cfg.joint_attention_dim, generator=gen).to(dtype)
    pooled = torch.randn(2, cfg.pooled_projection_dim, generator=gen).to(dtype)
    micro = torch.tensor([[size, size, 0, 0, 6]] * 2, dtype=dtype)
    # The pipeline's position ids: the grid the blocks see (halved by the down block).
    img = image_ids(grid // 2, grid // 2).to(dtype)
    txt = torch.zeros(77, 3, dtype=dtype)
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = time.perf_counter()
            t(hidden_states=ids, micro_conds=micro, pooled_projections=pooled,
              encoder_hidden_states=hidden, img_ids=img, txt_ids=txt,
              timestep=torch.tensor([0.5], dtype=dtype))
            if i > 0:
                times.append(time.perf_counter() - start)
    return {"what": "step", "median_s": statistics.median(times), "runs_s": times}


def bench_vq(model: Path, dtype, size: int, runs: int) -> dict:
    from diffusers import VQModel
    vq = VQModel.from_pretrained(model, subfolder="vqvae").to(dtype).eval()
    cfg = vq.config
    grid = size // 2 ** (len(cfg.block_out_channels) - 1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.num_vq_embeddings, (1, grid, grid), generator=gen)
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = time.perf_counter()
            vq.decode(ids, force_not_quantize=True,
                      shape=(1, grid, grid, cfg.latent_channels)).sample.clip(0, 1)
            if i > 0:
                times.append(time.perf_counter() - start)
    return {"what": "vq", "median_s": statistics.median(times), "runs_s": times}


def bench_text(model: Path, dtype, runs: int) -> dict:
    from transformers import CLIPTextModelWithProjection
    enc = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder").to(dtype).eval()
    gen = torch.Generator().manual_seed(0)
    vocab = enc.config.vocab_size
    # The prompt and the negative prompt, one call each, as `UnifiedPipeline` encodes them.
    prompts = [torch.randint(0, vocab, (1, 77), generator=gen) for _ in range(2)]
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = time.perf_counter()
            for ids in prompts:
                enc(ids, return_dict=True, output_hidden_states=True)
            if i > 0:
                times.append(time.perf_counter() - start)
    return {"what": "text", "median_s": statistics.median(times), "runs_s": times}


def bench_pipeline(upstream, model: Path, dtype, size: int, steps: int) -> dict:
    from diffusers import VQModel  # noqa: F401  (imported before the clock starts)
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer  # noqa: F401
    start = time.perf_counter()
    pipe = load_upstream_pipeline(upstream, model, dtype)
    loaded = time.perf_counter() - start
    with torch.no_grad():
        pipe(prompt=["a photo of a cat"], height=size, width=size, guidance_scale=9.0,
             num_inference_steps=steps)
    total = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"what": "pipeline", "load_s": loaded, "total_s": total, "peak_rss_gb": peak_kb / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--muddit-src", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--what", choices=["step", "vq", "text", "pipeline"], default="step")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    upstream = import_upstream_package(args.muddit_src)
    if args.what == "step":
        result = bench_step(upstream[2], args.model, dtype, args.size, args.runs)
    elif args.what == "vq":
        result = bench_vq(args.model, dtype, args.size, args.runs)
    elif args.what == "text":
        result = bench_text(args.model, dtype, args.runs)
    else:
        result = bench_pipeline(upstream, args.model, dtype, args.size, args.steps)
    result.update(dtype=args.dtype, size=args.size, threads=args.threads, torch=torch.__version__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
