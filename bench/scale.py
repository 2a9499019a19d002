"""The cross-image stages at collection sizes: seconds and peak memory of seed, bank, retrieval and evaluation
on synthetic collections, and their growth per 10x images.

    python bench/scale.py --sizes 1000 10000 100000 --work /tmp/maskbank-scale --out runs/scale.json
    python bench/scale.py --sizes 200 2000 --work /tmp/scale-smoke --out /tmp/scale.json     # a quick look

A synthetic collection of N labelled images and N/10 target images (a held-out split) has 25 proposals per
image with 384-channel unit features, 80 classes and 1-4 labels per image drawn from a skewed (1/rank) class
distribution; a proposal is one of its image's classes or one of 10 kinds of background, its feature that
kind's direction plus noise. The pooled features are written to a real maskbank store (``build``, not
timed as a stage), each collection in content-key order as the per-image stages write their shards, and
every stage reads images in the order they are stored, as the stages do; every stage runs in a process of its own (its peak RSS is that process's):

  seed       ``tasks.seed.seed_images`` with the seed stage's own streamed reader of the store and its
             default evidence cap, over the N labelled images
  bank       per labelled image, one prototype per seeded class (the normalised mean of its proposals),
             images in content-key order into ``BankBuilder`` with the bank stage's per-class cap, then the
             outlier filter
  retrieve   ``BankIndex.classify`` (the default rule) of the target images' proposals, read a block of
             images at a time as the retrieve stage reads them
  evaluate   one dataset-wide confusion matrix of the seeds against each proposal's true class, and of
             the retrieved labels, accumulated a block of images at a time

What this leaves out is per-image work whose cost is linear by construction and measured elsewhere:
painting and storing label maps, and pooling dense features (bench/storage.py has the store's per-image
rates). The JSON holds, per size, each stage's seconds and peak RSS, the proposal-level agreement of seeds
and retrieval with the synthetic truth, and the growth factor of seconds per 10x images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench._common import format_table, provenance, publish  # noqa: E402

PROPOSALS = 25
CHANNELS = 384
CLASSES = 80
BACKGROUNDS = 10
NOISE = 1.2
POOLED_KEY = "synthetic-pooled"
WRITE_BATCH = 2000
BLOCK_IMAGES = 256
STAGES = ("seed", "bank", "retrieve", "evaluate")


def _key(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()[:32]


def _collection(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``bool[n, K]`` image labels and ``int16[n, PROPOSALS]`` true kind of each proposal (-1 - b for background b)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, CLASSES)
    p /= p.sum()
    labels = np.zeros((n, CLASSES), bool)
    kinds = np.zeros((n, PROPOSALS), np.int16)
    for i in range(n):
        classes = 1 + rng.choice(CLASSES - 1, rng.integers(1, 5), replace=False, p=p)
        labels[i, classes] = True
        fg = rng.random(PROPOSALS) < 0.6
        kinds[i] = np.where(fg, rng.choice(classes, PROPOSALS), -1 - rng.integers(0, BACKGROUNDS, PROPOSALS))
    return labels, kinds


def _directions() -> np.ndarray:
    d = np.random.default_rng(12345).standard_normal((CLASSES + BACKGROUNDS, CHANNELS)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _features(kinds: np.ndarray, first: int, directions: np.ndarray) -> np.ndarray:
    out = np.empty((len(kinds), PROPOSALS, CHANNELS), np.float32)
    for j, row in enumerate(kinds):
        rng = np.random.default_rng(1_000_003 + first + j)
        idx = np.where(row >= 0, row, CLASSES - 1 - row)
        f = directions[idx] + NOISE / np.sqrt(CHANNELS) * rng.standard_normal((PROPOSALS, CHANNELS)).astype(np.float32)
        out[j] = f / np.linalg.norm(f, axis=1, keepdims=True)
    return out


def build(n: int, work: Path) -> dict:
    """Write the labelled and target collections' pooled features into a store under ``work``."""
    from maskbank.storage.store import Store

    work.mkdir(parents=True, exist_ok=True)
    targets = max(1, n // 10)
    labels, kinds = _collection(n + targets)
    # each collection in content-key order, as a run's per-image stages write their shards
    order = [*sorted(range(n), key=_key), *sorted(range(n, n + targets), key=_key)]
    labels, kinds = labels[order], kinds[order]
    np.save(work / "labels.npy", labels)
    np.save(work / "kinds.npy", kinds)
    (work / "keys.json").write_text(json.dumps([_key(i) for i in order]))
    st = Store.open(str(work / "store"), create=True)
    directions = _directions()
    t0 = time.perf_counter()
    for s in range(0, n + targets, WRITE_BATCH):
        e = min(s + WRITE_BATCH, n + targets)
        feats = _features(kinds[s:e], s, directions)
        sal = np.full(PROPOSALS, np.nan, np.float32)
        area = np.full(PROPOSALS, 1.0 / PROPOSALS, np.float32)
        st.write_pooled(POOLED_KEY, [st.pooled_output(_key(order[i]), feats[i - s], sal, area, (64, 64))
                                     for i in range(s, e)])
    return {"labelled": n, "targets": targets, "write_seconds": time.perf_counter() - t0}


def _truth(kinds: np.ndarray) -> np.ndarray:
    return np.where(kinds >= 0, kinds, 0).astype(np.int64)


def run_stage(stage: str, n: int, work: Path) -> dict:
    from maskbank.flows.params import BankParams, RetrieveParams, SeedParams
    from maskbank.flows.stages.labels import blocks, pooled_reader
    from maskbank.storage.layout import POOLED
    from maskbank.storage.store import Store
    from maskbank.tasks.bank import BankBuilder, PrototypeBank
    from maskbank.tasks.metrics import ConfusionMatrix
    from maskbank.tasks.retrieve import BankIndex, rule_k
    from maskbank.tasks.seed import seed_images

    labels = np.load(work / "labels.npy")
    kinds = np.load(work / "kinds.npy")
    targets = len(labels) - n
    st = Store.open(str(work / "store"), create=False)
    keys = json.loads((work / "keys.json").read_text())
    lab_keys, tgt_keys = keys[:n], keys[n:]
    t0 = time.perf_counter()
    out: dict = {}
    if stage == "seed":
        counts = st.element_counts(POOLED, POOLED_KEY, lab_keys)
        result = seed_images(pooled_reader(st, POOLED_KEY, lab_keys), counts, labels[:n], saliency=True,
                             priority=np.argsort(np.argsort(lab_keys)), config=SeedParams().config())
        np.save(work / "seeds.npy", result.labels.reshape(n, PROPOSALS))
    elif stage == "bank":
        seeds = np.load(work / "seeds.npy")
        params = BankParams()
        builder = BankBuilder([f"c{c}" for c in range(CLASSES)], dim=CHANNELS, max_per_class=params.max_prototypes_per_class)
        by_key = np.argsort(lab_keys)
        read = pooled_reader(st, POOLED_KEY, lab_keys)
        for block in blocks(n, BLOCK_IMAGES):
            todo = [int(by_key[b]) for b in block
                    if not builder.full([0, *np.flatnonzero(labels[by_key[b]])])]
            feats, _ = read(np.asarray(todo))
            feats = feats.reshape(len(todo), PROPOSALS, CHANNELS)
            for f, j in zip(feats, todo):
                classes = np.unique(seeds[j])
                vectors = np.stack([f[seeds[j] == c].mean(0) for c in classes])
                builder.add(j, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), classes)
        bank = builder.build(drop_ratio=params.filter_ratio)
        np.savez(work / "bank.npz", vectors=bank.vectors, labels=bank.labels, images=bank.image_index)
        out["prototypes"] = len(bank)
    elif stage == "retrieve":
        b = np.load(work / "bank.npz")
        bank = PrototypeBank(b["vectors"], b["labels"], b["images"], [f"c{c}" for c in range(CLASSES)])
        params = RetrieveParams()
        index = BankIndex(bank, device="cpu")
        read = pooled_reader(st, POOLED_KEY, tgt_keys)
        predicted = np.zeros((targets, PROPOSALS), np.int32)
        for block in blocks(targets, BLOCK_IMAGES):
            feats, _ = read(np.asarray(block))
            got, _, _ = index.classify(feats, rule=params.rule, k=rule_k(params.rule, params.k, params.k_per_class))
            predicted[block.start : block.stop] = got.reshape(len(block), PROPOSALS)
        np.save(work / "retrieved.npy", predicted)
    elif stage == "evaluate":
        truth = _truth(kinds)
        for name, pred, rows in (("seeds", np.load(work / "seeds.npy"), range(n)),
                                 ("retrieval", np.load(work / "retrieved.npy"), range(n, n + targets))):
            cm = ConfusionMatrix(CLASSES)
            for block in blocks(len(rows), BLOCK_IMAGES):
                cm.update(np.clip(pred[block.start : block.stop], 0, None), truth[rows.start + block.start : rows.start + block.stop])
            out[f"{name}_miou"] = float(cm.miou())
            out[f"{name}_accuracy"] = float(np.trace(cm.matrix) / cm.matrix.sum())
    else:
        raise ValueError(stage)
    out.update(seconds=time.perf_counter() - t0, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return out


def cap_table(n: int, work: Path, caps: list[int]) -> list[dict]:
    """Seeds' agreement with the synthetic truth on the ``n``-image collection for each evidence cap
    (``evidence_per_class`` = cap, ``reference_images`` = 2 x cap; 0 = no cap)."""
    from maskbank.flows.params import SeedParams
    from maskbank.flows.stages.labels import pooled_reader
    from maskbank.storage.layout import POOLED
    from maskbank.storage.store import Store
    from maskbank.tasks.metrics import ConfusionMatrix
    from maskbank.tasks.seed import seed_images

    labels = np.load(work / "labels.npy")[:n]
    truth = _truth(np.load(work / "kinds.npy")[:n])
    keys = json.loads((work / "keys.json").read_text())[:n]
    st = Store.open(str(work / "store"), create=False)
    counts = st.element_counts(POOLED, POOLED_KEY, keys)
    rows = []
    for cap in caps:
        per_class, reference = (cap, 2 * cap) if cap else (n, n)
        config = SeedParams(evidence_per_class=per_class, reference_images=reference).config()
        t0 = time.perf_counter()
        result = seed_images(pooled_reader(st, POOLED_KEY, keys), counts, labels, saliency=True,
                             priority=np.arange(n), config=config)
        cm = ConfusionMatrix(CLASSES).update(result.labels.reshape(n, PROPOSALS), truth)
        rows.append({"evidence_per_class": per_class, "reference_images": reference, "seconds": time.perf_counter() - t0,
                     "miou": float(cm.miou()), "accuracy": float(np.trace(cm.matrix) / cm.matrix.sum())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="Labelled images per collection.")
    ap.add_argument("--work", type=Path, required=True, help="Folder for the synthetic stores (tens of GB at 100k).")
    ap.add_argument("--out", type=Path, help="Results JSON (a .txt table beside it).")
    ap.add_argument("--caps", type=int, nargs="+", help="Instead: seed the first size's collection (built if missing) "
                    "with each evidence cap (per class; the reference sample is twice it; 0 = none) and score it.")
    ap.add_argument("--stage", choices=("build", *STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:  # one stage in this process
        work = args.work / str(args.n)
        result = build(args.n, work) if args.stage == "build" else run_stage(args.stage, args.n, work)
        print(json.dumps(result))
        return
    if args.out is None:
        ap.error("--out is required")
    origin = provenance("bench/scale.py", argv)
    if args.caps:
        n = args.sizes[0]
        if not (args.work / str(n) / "store").exists():
            _child(["--work", str(args.work), "--stage", "build", "--n", str(n)])
        rows = cap_table(n, args.work / str(n), args.caps)
        text = format_table(["evidence per class", "reference images", "seconds", "mIoU", "accuracy"],
                            [[r["evidence_per_class"], r["reference_images"], f"{r['seconds']:.1f}", r["miou"],
                              r["accuracy"]] for r in rows])
        publish({"images": n, "caps": rows}, args.out, text, origin)
        return
    results: dict = {"sizes": {}}
    for n in args.sizes:
        entry = {"build": _child(["--work", str(args.work), "--stage", "build", "--n", str(n)])}
        for stage in STAGES:
            entry[stage] = _child(["--work", str(args.work), "--stage", stage, "--n", str(n)])
            print(f"{n} images: {stage} {entry[stage]['seconds']:.1f} s, {entry[stage]['peak_rss_gb']:.2f} GB", flush=True)
        entry["total_seconds"] = sum(entry[s]["seconds"] for s in STAGES)
        entry["peak_rss_gb"] = max(entry[s]["peak_rss_gb"] for s in STAGES)
        results["sizes"][str(n)] = entry
    sizes = [str(n) for n in args.sizes]
    growth = {}
    for a, b in zip(sizes, sizes[1:]):
        power = 1 / np.log10(int(b) / int(a))  # the ratio of seconds scaled to a 10x step
        ratio = {s: results["sizes"][b][s]["seconds"] / results["sizes"][a][s]["seconds"] for s in STAGES}
        ratio["total"] = results["sizes"][b]["total_seconds"] / results["sizes"][a]["total_seconds"]
        growth[f"{a}->{b}"] = {s: r**power for s, r in ratio.items()}
    results["growth_per_10x"] = growth
    rows = [[n, *(f"{results['sizes'][n][s]['seconds']:.1f} s / {results['sizes'][n][s]['peak_rss_gb']:.2f} GB" for s in STAGES),
             f"{results['sizes'][n]['total_seconds']:.0f} s", results["sizes"][n]["evaluate"]["seeds_miou"],
             results["sizes"][n]["evaluate"]["retrieval_miou"]] for n in sizes]
    text = format_table(["images", *STAGES, "total", "seed mIoU", "retrieval mIoU"], rows)
    text += "\n\ngrowth of seconds per 10x images: " + "; ".join(
        f"{k}: " + ", ".join(f"{s} {v:.1f}x" for s, v in g.items()) for k, g in growth.items())
    publish(results, args.out, text, origin)


if __name__ == "__main__":
    main()
