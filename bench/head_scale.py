"""The second stage's head at collection sizes: seconds and peak memory of gathering its training sample
and training it, and of labelling one image with it, on synthetic token grids.

    python bench/head_scale.py --sizes 300 3000 30000 --out runs/head-scale.json

Each of N labelled images is a 24 x 32 grid of 384-channel tokens (DINOv2-S at 448 px on a 4:3 image), of
2-4 of 80 classes (1/rank class distribution) laid out in vertical bands, each token its class's direction
plus noise, covered by proposals (one per band and half) of which 80 % have a target (the rest: tokens no
proposal covers) and a fifth carry a wrong label. Per size, in a process of its own (its peak RSS is that
process's): offering every image's tokens and targets to ``TokenSample`` with the default cap (what the
``segmenter`` stage does as it reads the images), ``train_head`` with the defaults, and ``pixel_labels`` plus
``proposal_votes`` of one 480 x 640 image (what ``fill`` and ``segment`` do per image). Reading the stored
features, which grows linearly by construction, is left out. The JSON holds per size the seconds of each
part, the peak RSS, the tokens offered and kept, the head's token accuracy on held-out images, and the growth
factor of seconds per 10x images.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import format_table, provenance, publish  # noqa: E402

GRID = (24, 32)
CHANNELS = 384
CLASSES = 80
NOISE = 1.2
WRONG = 0.2


def _image(rng: np.random.Generator, directions: np.ndarray, weights: np.ndarray):
    labels = np.sort(rng.choice(np.arange(1, CLASSES), size=rng.integers(2, 5), replace=False, p=weights))
    cuts = np.sort(rng.choice(np.arange(1, GRID[1]), size=len(labels) - 1, replace=False))
    truth = np.zeros(GRID, np.int64)
    for c, lo, hi in zip(labels, [0, *cuts], [*cuts, GRID[1]]):
        truth[:, lo:hi] = c
    tokens = (directions[truth] + rng.normal(scale=NOISE, size=(*GRID, CHANNELS)) / np.sqrt(CHANNELS)).astype(np.float16)
    rows = np.arange(GRID[0])[:, None]
    cover = np.stack([((truth == c) & half).reshape(-1) for c in labels
                      for half in (rows < GRID[0] // 2, rows >= GRID[0] // 2)]).astype(np.float32)
    cover[:, rng.random(cover.shape[1]) < 0.2] = 0  # tokens no proposal covers
    seeds = np.array([c if rng.random() > WRONG else rng.choice(labels) for c in np.repeat(labels, 2)])
    return labels, truth, tokens, cover, seeds


def _peak_mib() -> float:
    status = Path("/proc/self/status")
    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] if status.exists() else []
    return int(hwm[0].split()[1]) / 1024 if hwm else float("nan")


def measure(n: int) -> dict:
    """One size's figures (run in a process of its own)."""
    import torch

    from maskbank.tasks.geometry import PatchGeometry
    from maskbank.tasks.segmenter import SegmenterConfig, TokenSample, pixel_labels, proposal_votes, token_targets, train_head

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(CLASSES, CHANNELS)) / np.sqrt(CHANNELS)
    weights = 1.0 / np.arange(1, CLASSES)
    weights /= weights.sum()
    config = SegmenterConfig()
    sample = TokenSample(config.max_tokens, seed=config.seed)
    t0 = time.perf_counter()
    for i in range(n):
        labels, _, tokens, cover, seeds = _image(rng, directions, weights)
        target, weight = token_targets(cover, seeds, np.ones(len(seeds), np.float32))
        sample.add(f"image-{i}", tokens.reshape(-1, CHANNELS), target, weight, labels)
    gather = time.perf_counter() - t0
    t0 = time.perf_counter()
    head, loss = train_head(sample, CLASSES, config)
    train = time.perf_counter() - t0
    right = total = 0
    for _ in range(50):
        labels, truth, tokens, _, _ = _image(rng, directions, weights)
        p = head.probabilities(tokens.reshape(-1, CHANNELS), labels)
        right += int((labels[p.argmax(1)] == truth.reshape(-1)).sum())
        total += truth.size
    geometry = PatchGeometry((480, 640), (336, 448), 14, GRID)
    labels, _, tokens, cover, _ = _image(rng, directions, weights)
    t0 = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        pixel_labels(head, tokens, geometry, labels)
        pixel_labels(head, tokens, geometry, None)
        proposal_votes(head, tokens, cover, None)
    per_image = (time.perf_counter() - t0) / repeats
    return {"images": n, "tokens_offered": sample.offered, "tokens_kept": len(sample), "gather_s": gather,
            "train_s": train, "label_one_image_s": per_image, "peak_rss_mib": _peak_mib(), "loss": loss,
            "token_accuracy": right / total}


def _in_child(n: int) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (n,))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000, 30000], help="labelled images")
    parser.add_argument("--out", type=Path, default=Path("runs/head-scale.json"), help="results JSON")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.sizes):
        parser.error("--sizes are image counts, at least 1")
    origin = provenance("bench/head_scale.py", argv)
    rows = []
    for n in args.sizes:
        rows.append(_in_child(n))
        print(rows[-1], flush=True)
    for a, b in zip(rows, rows[1:]):
        b["growth_per_10x"] = {k: (b[k] / a[k]) ** (1 / np.log10(b["images"] / a["images"]))
                               for k in ("gather_s", "train_s")}
    table = format_table(["images", "tokens offered", "kept", "gather s", "train s", "label 1 image s", "peak MiB",
                          "token accuracy"],
                         [[r["images"], r["tokens_offered"], r["tokens_kept"], r["gather_s"], r["train_s"],
                           r["label_one_image_s"], r["peak_rss_mib"], r["token_accuracy"]] for r in rows])
    results = {"rows": rows}
    publish(results, args.out, table, origin)
    return results


if __name__ == "__main__":
    main()
