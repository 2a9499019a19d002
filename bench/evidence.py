"""How a class's pseudo-labels depend on how many labelled images it has: seeding on random subsets of a
collection, each class's IoU against the IoU its proposals allow, grouped by its images in the subset.

    python bench/evidence.py --data ../shared/data/msrc21-dev --store runs/scene-store --out bench/results/evidence-msrc21.json

The flow computes the proposals and features of the collection (or ``--proposals KEY --pooled KEY`` name
those a store already holds); then, for each subset size (``--fractions`` of the collection, ``--repeats``
random subsets each, the whole collection once), the subset is seeded as a collection of its own with the
default parameters, and every class it has is scored on the subset: IoU of its seeds, IoU of the oracle
restricted to the image labels (each proposal takes its majority truth class among its image's labels), and
its labelled images in the subset. The table groups classes by those images: the mean IoU, the mean oracle
IoU and their ratio. Where it falls off is what ``tasks.collection.THIN_CLASS_IMAGES`` is set from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import format_table, provenance, publish  # noqa: E402
from bench.quality import load_split, seed_labels  # noqa: E402
from bench.scenes import scores  # noqa: E402
from maskbank.flows.params import RunParams  # noqa: E402
from maskbank.flows.stages.embed import features_key  # noqa: E402
from maskbank.flows.stages.ingest import DatasetInput  # noqa: E402
from maskbank.flows.stages.pool import pooled_key  # noqa: E402
from maskbank.flows.stages.propose import proposals_key  # noqa: E402
from maskbank.storage.store import Store  # noqa: E402
from maskbank.tasks.models.device import resolve_device  # noqa: E402

FRACTIONS = (0.08, 0.12, 0.17, 0.25, 0.35, 0.5, 0.7)
BINS = ((1, 1), (2, 3), (4, 5), (6, 8), (9, 12), (13, 20), (21, 40), (41, 10**9))


def stored_keys(store: Path, data: Path, proposals: str | None, pooled: str | None, params: RunParams,
                device: str) -> tuple[str, str, set[str]]:
    """The proposals and pooled keys to read (``proposals`` and ``pooled`` when given, else those of a run of
    the flow on ``data``), and the images the flow skipped."""
    if bool(proposals) != bool(pooled):
        raise SystemExit("error: --proposals and --pooled go together: give both stored keys, or neither to run the flow")
    if proposals and pooled:
        return proposals, pooled, set()
    from maskbank.flows.label import label_images

    run = label_images(datasets=[DatasetInput(path=str(data))], store=str(store), params=params, device=device)
    pk = proposals_key(params.propose)
    return pk, pooled_key(pk, features_key(params.embed), params.pool), {k for k, _ in run.skipped}


def class_rows(images: list, names: list[str], params: RunParams, device, background: bool) -> list[dict]:
    """Each class of the collection ``images`` (seeded as one): its labelled images, seed IoU, oracle IoU."""
    labels = seed_labels(images, len(names), params.seed, device, background=background)
    seeded = scores(images, labels, names)["iou"]
    oracle = scores(images, [im.proposals.majority(im.labels) for im in images], names)["iou"]
    counts = np.zeros(len(names), np.int64)
    for im in images:
        counts[np.unique(np.asarray(im.labels, np.int64))] += 1
    return [{"class": names[c], "images": int(counts[c]), "iou": seeded[names[c]], "oracle": oracle[names[c]]}
            for c in range(1, len(names))
            if counts[c] and seeded.get(names[c]) is not None and oracle.get(names[c])]


def binned(rows: list[dict]) -> list[dict]:
    out = []
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r["images"] <= hi]
        if sel:
            iou, oracle = np.mean([r["iou"] for r in sel]), np.mean([r["oracle"] for r in sel])
            out.append({"images": f"{lo}" if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"),
                        "classes": len(sel), "iou": float(iou), "oracle": float(oracle), "ratio": float(iou / oracle)})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a dataset with image labels and pixel truth")
    parser.add_argument("--store", type=Path, default=Path("runs/scene-store"), help="maskbank store")
    parser.add_argument("--proposals", help="proposals key the store holds (with --pooled: the flow is not run)")
    parser.add_argument("--pooled", help="pooled key the store holds")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="random seed of the subsets")
    parser.add_argument("--out", type=Path, default=Path("runs/evidence.json"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    origin = provenance("bench/evidence.py", argv)
    params = RunParams()
    pk, plk, skipped = stored_keys(args.store, args.data, args.proposals, args.pooled, params, args.device)
    split = load_split(Store.open(str(args.store), create=False), DatasetInput(path=str(args.data)), pk, plk, skipped)
    images, names = split.images, split.ref.class_names
    background, device = split.ref.has_background, resolve_device(args.device)
    rng = np.random.default_rng(args.seed)
    rows = []
    for fraction in [*args.fractions, 1.0]:
        for repeat in range(args.repeats if fraction < 1 else 1):
            pick = np.sort(rng.choice(len(images), max(2, round(fraction * len(images))), replace=False))
            for r in class_rows([images[i] for i in pick], names, params, device, background):
                rows.append({**r, "fraction": fraction, "repeat": repeat, "subset_images": len(pick)})
    bins = binned(rows)
    text = "\n".join([
        f"{split.ref.name}: {len(images)} images, {len(names) - 1} classes; subsets of "
        f"{', '.join(str(f) for f in args.fractions)} of them ({args.repeats} each) and the whole",
        format_table(["labelled images of the class", "classes", "seed IoU", "oracle IoU", "ratio"],
                     [[b["images"], b["classes"], b["iou"], b["oracle"], b["ratio"]] for b in bins]),
    ])
    results = {"dataset": str(args.data), "proposals": pk, "pooled": plk, "rows": rows, "bins": bins}
    publish(results, args.out, text, origin)
    return results


if __name__ == "__main__":
    main()
