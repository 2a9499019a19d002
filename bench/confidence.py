"""Whether the pseudo-labels' confidence ranks them: the accuracy of the most confident 50, 80 and 100 % of the
pixels that proposals cover, by the confidence the seed stage stores as each proposal's score, against the
seeds' raw score and a random order.

    python bench/confidence.py --data ../shared/data/msrc21-dev --store runs/scene-store --out bench/results/confidence-msrc21.json

The flow computes the proposals and features (or ``--proposals KEY --pooled KEY`` name those a store holds);
the collection is seeded in-process with the default parameters, as the seed stage seeds it. A pixel's
confidence is its proposal's: the probability of the proposal's label under a softmax of its scores over the
classes it may take. Pixels no proposal covers have no confidence and are left out; void pixels are ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import format_table, provenance, publish  # noqa: E402
from bench.evidence import stored_keys  # noqa: E402
from bench.quality import load_split  # noqa: E402
from maskbank.flows.params import RunParams  # noqa: E402
from maskbank.flows.stages.ingest import DatasetInput  # noqa: E402
from maskbank.storage.store import Store  # noqa: E402
from maskbank.tasks.models.device import resolve_device  # noqa: E402
from maskbank.tasks.seed import seed_proposals  # noqa: E402

FRACTIONS = (0.5, 0.8, 1.0)


def accuracy_of_most_confident(total: np.ndarray, correct: np.ndarray, order_by: np.ndarray,
                               fractions=FRACTIONS) -> dict[str, float]:
    """Pixel accuracy of the proposals taken in descending ``order_by`` until each fraction of the covered
    pixels (``total`` per proposal, ``correct`` of them right) is reached."""
    order = np.argsort(-order_by, kind="stable")
    cum_total, cum_correct = np.cumsum(total[order]), np.cumsum(correct[order])
    out = {}
    for f in fractions:
        i = min(int(np.searchsorted(cum_total, f * cum_total[-1])), len(order) - 1)
        out[f"top_{round(f * 100)}"] = float(cum_correct[i] / cum_total[i])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="datasets with image labels and truth")
    parser.add_argument("--store", type=Path, default=Path("runs/scene-store"), help="maskbank store")
    parser.add_argument("--proposals", help="proposals key the store holds (with --pooled: the flow is not run)")
    parser.add_argument("--pooled", help="pooled key the store holds")
    parser.add_argument("--out", type=Path, default=Path("runs/confidence.json"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    origin = provenance("bench/confidence.py", argv)
    params, device = RunParams(), resolve_device(args.device)
    results, lines = {"datasets": []}, []
    for data in args.data:
        pk, plk, skipped = stored_keys(args.store, data, args.proposals, args.pooled, params, args.device)
        split = load_split(Store.open(str(args.store), create=False), DatasetInput(path=str(data)), pk, plk, skipped)
        images = sorted(split.images, key=lambda im: im.key)  # the seed stage's order
        names = split.ref.class_names
        index = np.concatenate([np.full(len(im.features), j) for j, im in enumerate(images)])
        multi_hot = np.zeros((len(images), len(names)), bool)
        for j, im in enumerate(images):
            multi_hot[j, im.labels] = True
        saliency = np.concatenate([im.saliency for im in images])
        seeds = seed_proposals(np.concatenate([im.features for im in images]), index, multi_hot,
                               saliency=None if np.isnan(saliency).any() else saliency,
                               config=params.seed.config(split.ref.has_background), device=device)
        counts = np.concatenate([im.proposals.counts for im in images])
        total, correct = counts.sum(1), counts[np.arange(len(counts)), seeds.labels]
        rows = {"confidence": accuracy_of_most_confident(total, correct, seeds.confidence),
                "raw score": accuracy_of_most_confident(total, correct, seeds.scores),
                "random": accuracy_of_most_confident(total, correct, np.random.default_rng(0).random(len(total)))}
        results["datasets"].append({"dataset": str(data), "images": len(images), "proposals": pk, "pooled": plk,
                                    "rows": rows, "single_choice": float(np.mean(seeds.confidence == 1))})
        lines += [f"{split.ref.name}: {len(images)} images, accuracy of the most confident covered pixels",
                  format_table(["ordered by", *(f"top {round(f * 100)} %" for f in FRACTIONS)],
                               [[k, *v.values()] for k, v in rows.items()]), ""]
    publish(results, args.out, "\n".join(lines), origin)
    return results


if __name__ == "__main__":
    main()
