"""The real CLIP BPE tokenizer files (vocab.json + merges.txt, 49408 ids) built from OpenCLIP's
`bpe_simple_vocab_16e6.txt.gz` (committed at tests/fixtures/sides/tokenizer/) by the fixtures'
`write_clip_vocab`, with pad token `<|endoftext|>` (so padding is a special token that decoding
skips)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools/fixtures"))
from make_sides_fixtures import write_clip_vocab  # noqa: E402

BPE = ROOT / "tests/fixtures/sides/tokenizer/bpe_simple_vocab_16e6.txt.gz"


def write(folder: Path) -> None:
    write_clip_vocab(BPE, folder, "<|endoftext|>")
