"""The real CLIP BPE tokenizer files (vocab.json + merges.txt, 49408 ids) built from OpenCLIP's
`bpe_simple_vocab_16e6.txt.gz` (committed at tests/fixtures/sides/tokenizer/): the byte
alphabet, the same with `</w>`, one token per merge, then the two special tokens, as OpenCLIP
and OpenAI build the vocabulary. Pad token `<|endoftext|>` (so padding is a special token that
decoding skips)."""

import gzip
import json
from pathlib import Path

BPE = Path(__file__).resolve().parents[2] / "tests/fixtures/sides/tokenizer/bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode():
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


def write(folder: Path) -> None:
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(
        special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True,
        errors="replace", add_prefix_space=False), indent=2) + "\n")
