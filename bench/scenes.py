"""Pseudo-labels of scene collections whose class list has no background, next to their proposal oracle, with
and without the no-background mode.

    python bench/scenes.py --data ../shared/data/msrc21-dev ../shared/data/camvid-train --store runs/scene-store --out bench/results/scenes.json

Each dataset is an ``images/`` + ``masks/`` folder with a class list and no background class (MSRC-21, CamVid):
every pixel is one of the image's labels. The main flow pseudo-labels it with the default models and
parameters (the no-background mode follows from the class list), then, on the same proposals and features:

  pseudo_labels            the flow's pseudo-labels, scored from its stored label maps
  seeds_with_background    seeding again with background allowed, as for a class list that has one
  oracle                   each proposal takes its majority truth class
  oracle_restricted        each proposal takes the majority among its image's labels: the pseudo-labels' ceiling

mIoU over the dataset's classes (background, an unused placeholder here, is left out of the mean; a pixel left
unlabelled counts against its true class), pixel accuracy, proposals per image and the share of counted
pixels inside a proposal. ``checks``: seeding again in-process in the no-background mode reproduces the flow's
pseudo-labels, and scoring them per proposal reproduces the flow's evaluation.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import format_table, proposal_confusion, provenance, publish  # noqa: E402
from bench.quality import Image, load_split, score_version, seed_labels, version_proposal_labels  # noqa: E402
from maskbank.flows.params import RunParams  # noqa: E402
from maskbank.flows.stages.embed import features_key  # noqa: E402
from maskbank.flows.stages.ingest import DatasetInput  # noqa: E402
from maskbank.flows.stages.pool import pooled_key  # noqa: E402
from maskbank.flows.stages.propose import proposals_key  # noqa: E402
from maskbank.storage.store import Store  # noqa: E402
from maskbank.tasks.metrics import ConfusionMatrix, summarise  # noqa: E402
from maskbank.tasks.models.device import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [REPO.parent / "shared" / "data" / n for n in ("msrc21-dev", "camvid-train")]
TOLERANCE = 1e-9
ROWS = ("pseudo_labels", "seeds_with_background", "oracle", "oracle_restricted")


def scores(images: Sequence[Image], labels: Sequence[np.ndarray], class_names: list[str]) -> dict:
    """mIoU without the background placeholder, pixel accuracy, classes present, of the proposals' labels."""
    cm = ConfusionMatrix(len(class_names))
    cm.matrix = proposal_confusion([im.proposals for im in images], labels, len(class_names))
    s = summarise(cm, class_names, background=False)
    return {"images": len(images), "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
            "classes_present": s["classes_present"], "iou": s["iou"]}


def scene_rows(store: Path, data: Path, params: RunParams, device: str) -> dict:
    """The flow's pseudo-labels of ``data`` and the in-process rows on its proposals and features."""
    from maskbank.flows.label import label_images

    dataset = DatasetInput(path=str(data))
    run = label_images(datasets=[dataset], store=str(store), params=params, device=device)
    st = Store.open(store, create=False)
    pk, fk = proposals_key(params.propose), features_key(params.embed)
    split = load_split(st, dataset, pk, pooled_key(pk, fk), {k for k, _ in run.skipped})
    if split.ref.has_background:
        raise ValueError(f"{data}: its class list has a background class; this benchmark is for scenes without one")
    images, names, dev = split.images, split.ref.class_names, resolve_device(device)
    flow_labels = version_proposal_labels(st, run.pseudo_labels, images)
    replicated = seed_labels(images, len(names), params.seed, dev, background=False)
    rows = {
        "pseudo_labels": scores(images, flow_labels, names),
        "seeds_with_background": scores(images, seed_labels(images, len(names), params.seed, dev), names),
        "oracle": scores(images, [im.proposals.majority() for im in images], names),
        "oracle_restricted": scores(images, [im.proposals.majority(im.labels or None) for im in images], names),
    }
    flow_eval = run.pseudo_label_metrics["classes"]["miou"]
    covered = sum(int(im.proposals.counts.sum()) for im in images)
    counted = covered + sum(int(im.proposals.rest.sum()) for im in images)
    return {
        "dataset": str(data), "images": len(images), "classes": names[1:], "pseudo_labels_version": run.pseudo_labels,
        "rows": rows,
        "proposals": {"per_image": float(np.mean([len(im.proposals) for im in images])),
                      "coverage": covered / counted if counted else math.nan},
        "checks": {
            "flow_evaluation": _check(rows["pseudo_labels"]["miou"], flow_eval),
            "stored_label_maps": _check(score_version(st, run.pseudo_labels, images, names)["pixel_accuracy"],
                                        rows["pseudo_labels"]["pixel_accuracy"]),
            "seed_replicated": {"ok": all(np.array_equal(a, b) for a, b in zip(replicated, flow_labels))},
        },
    }


def _check(value: float, reference: float) -> dict:
    return {"value": value, "reference": reference, "ok": bool(abs(value - reference) <= TOLERANCE)}


def report(results: dict) -> str:
    """Each dataset's rows and ratios as text tables."""
    out = []
    for d in results["datasets"]:
        r = d["rows"]
        table = [[row, r[row]["images"], r[row]["miou"], r[row]["pixel_accuracy"], r[row]["classes_present"]]
                 for row in ROWS]
        ratio = r["pseudo_labels"]["miou"] / r["oracle_restricted"]["miou"] if r["oracle_restricted"]["miou"] else None
        out += [f"{Path(d['dataset']).name}: {d['images']} images, {len(d['classes'])} classes, "
                f"{d['proposals']['per_image']:.1f} proposals per image covering {d['proposals']['coverage']:.1%} "
                "of counted pixels",
                format_table(["row", "images", "mIoU", "pixel acc", "classes present"], table),
                f"pseudo_labels / oracle_restricted: {ratio:.3f}" if ratio is not None else "",
                "checks: " + ", ".join(f"{k} {'ok' if v.get('ok', True) else 'MISMATCH'}" for k, v in d["checks"].items()),
                ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA, help="images/ + masks/ folders")
    parser.add_argument("--store", type=Path, default=Path("runs/scene-store"), help="maskbank store (created)")
    parser.add_argument("--out", type=Path, default=Path("runs/scenes.json"), help="results JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    origin = provenance("bench/scenes.py", argv)
    results = {"datasets": [scene_rows(args.store, d, RunParams(), args.device) for d in args.data]}
    publish(results, args.out, report(results), origin)
    return results


if __name__ == "__main__":
    main()
