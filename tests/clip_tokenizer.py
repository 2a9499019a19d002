"""A real CLIP tokenizer for tests, built from the BPE merges the ``open_clip_torch`` wheel ships: CLIP's
vocabulary is the 256 byte symbols, each also as a word end, the merged pairs in order, and the two markers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CONTEXT = 77
MERGES = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [table[b] for b in printable + extra]


def write_clip_tokenizer(folder: Path) -> Path:
    """Save a ``transformers`` ``CLIPTokenizer`` with CLIP's own vocabulary into ``folder``."""
    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe(), "rt", encoding="utf-8").read().split("\n")[1 : MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CONTEXT,
                              pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return folder
