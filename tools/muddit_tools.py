"""What the fixture, training and benchmark scripts under tools/ (and benches/pytorch/) share:
the configs of small models in Muddit's layout, seeded random parameters, and importing the
upstream Muddit package.

Scripts in tools/fixtures/ and tools/shapes/ find this module through
`sys.path.insert(0, str(Path(__file__).resolve().parents[1]))`.
"""

import math
import sys
from pathlib import Path

TEXT_LEN = 77  # CLIP's context, and so the text length of every Muddit model


def mmdit_config(layers: int, single_layers: int, heads: int, head_dim: int, rope: list,
                 **rest) -> dict:
    """A `SymmetricTransformer2DModel` config: `layers` dual-stream and `single_layers`
    single-stream blocks of `heads` x `head_dim`, rotary axes `rope`, plus `rest` (vocabularies,
    text widths, down/upsampling)."""
    return dict(num_layers=layers, num_single_layers=single_layers, num_attention_heads=heads,
                attention_head_dim=head_dim, axes_dims_rope=rope, **rest)


def clip_config(hidden: int, intermediate: int, projection: int, layers: int, heads: int,
                **rest) -> dict:
    """A `CLIPTextConfig` of 77 positions and LayerNorm eps 1e-5, plus `rest` (activation,
    special token ids, vocabulary)."""
    return dict(hidden_size=hidden, intermediate_size=intermediate, projection_dim=projection,
                num_hidden_layers=layers, num_attention_heads=heads,
                max_position_embeddings=TEXT_LEN, **rest, layer_norm_eps=1e-5)


def vq_config(channels: list, layers_per_block: int, groups: int, latent: int, codes: int,
              attention: bool, act: str = "silu", **rest) -> dict:
    """A diffusers `VQModel` config as Muddit's VQ-VAE: one down and one up block per entry of
    `channels`, `codes` codebook entries looked up by id; `rest` adds `vq_embed_dim`,
    `norm_type`..."""
    levels = len(channels)
    return dict(block_out_channels=channels, down_block_types=["DownEncoderBlock2D"] * levels,
                up_block_types=["UpDecoderBlock2D"] * levels, layers_per_block=layers_per_block,
                norm_num_groups=groups, latent_channels=latent, num_vq_embeddings=codes,
                mid_block_add_attention=attention, lookup_from_codebook=True, act_fn=act, **rest)


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table, which CLIP's BPE is written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def fan_in_divided(t, fan_in: int):
    """`t / sqrt(fan_in)`: the default weight scale of `randomize`."""
    return t / math.sqrt(fan_in)


def randomize(model, gen, emb_std: float = 1.0, scale=fan_in_divided) -> None:
    """Overwrites every parameter of `model` with seeded values that keep activations of order 1:
    Linear / Conv2d weight `scale(randn, prod(shape[1:]))`; ConvTranspose2d weight
    [in, out, kh, kw] `scale(randn, in)` (stride == kernel: each output pixel sees one input
    pixel through `in` weights); biases 0.1 randn; norm weights 1 + 0.2 randn; embedding tables
    `emb_std` randn. Fails on a parameter no rule covers, or one left at its default."""
    import torch
    import torch.nn as nn

    seen = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            randn = lambda: torch.randn(p.shape, generator=gen)  # noqa: E731
            if isinstance(module, nn.ConvTranspose2d) and pname == "weight":
                new = scale(randn(), p.shape[0])
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and pname == "weight":
                new = scale(randn(), math.prod(p.shape[1:]))
            elif isinstance(module, nn.Embedding) and pname == "weight":
                new = emb_std * randn()
            elif pname == "bias":
                new = 0.1 * randn()
            elif pname == "weight" and "norm" in type(module).__name__.lower():
                new = 1.0 + 0.2 * randn()
            else:
                raise RuntimeError(f"no init rule for {full} ({type(module).__name__})")
            with torch.no_grad():
                p.copy_(new)
            seen.add(full)
    missing = {n for n, _ in model.named_parameters()} - seen
    if missing:
        raise RuntimeError(f"parameters left at their default init: {sorted(missing)}")


def import_upstream_package(muddit_src: Path, files=("pipeline.py", "transformer.py",
                                                      "scheduler.py")):
    """Upstream Muddit's `src.pipeline`, `src.scheduler` and `src.transformer`, imported as the
    package `src` the way its inference scripts do; exits naming the file when one is missing."""
    for f in files:
        if not (muddit_src / "src" / f).is_file():
            sys.exit(f"error: {muddit_src / 'src' / f} not found (--muddit-src must hold src/{f})")
    sys.path.insert(0, str(Path(muddit_src).resolve()))
    import src.pipeline as pipeline_module  # noqa: E402  (upstream imports src.scheduler itself)
    import src.scheduler as scheduler_module
    import src.transformer as transformer_module
    return pipeline_module, scheduler_module, transformer_module


def load_upstream_pipeline(upstream, root: Path, dtype):
    """Upstream's `UnifiedPipeline` loaded from the model folder `root` as its inference scripts
    do, converted to `dtype`, progress bar off. Under a dtype other than f32, CLIP's causal mask
    (which transformers builds in the default dtype) is built in `dtype`; only there is the
    default switched (the scheduler's mask ratio must stay f32)."""
    import torch
    from diffusers import VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    pipeline_module, scheduler_module, transformer_module = upstream
    pipe = pipeline_module.UnifiedPipeline(
        vqvae=VQModel.from_pretrained(root, subfolder="vqvae"),
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder"),
        transformer=transformer_module.SymmetricTransformer2DModel.from_pretrained(
            root, subfolder="transformer"),
        scheduler=scheduler_module.Scheduler.from_pretrained(root, subfolder="scheduler"),
    )
    pipe.to(dtype)
    if dtype != torch.float32:
        pipe.text_encoder.register_forward_pre_hook(lambda m, a: torch.set_default_dtype(dtype))
        pipe.text_encoder.register_forward_hook(
            lambda m, a, o: torch.set_default_dtype(torch.float32))
    pipe.set_progress_bar_config(disable=True)
    return pipe
