"""The main job on any dataset with pixel truth (a mask folder, VOC, COCO): the pseudo-labels next to their
proposal oracle, per class too.

    python bench/scenes.py --data ../shared/data/msrc21-dev ../shared/data/camvid-train --store runs/scene-store --out bench/results/scenes.json

The main flow pseudo-labels each dataset with the default models and parameters (a class list without a
background class, as MSRC-21's or CamVid's, seeds in the no-background mode: every pixel is one of the image's
labels), then, on the same proposals and features:

  pseudo_labels            the flow's pseudo-labels (the seeds with the pixels no proposal covers filled by the
                           second stage's head), scored from their stored label maps
  seeds                    the flow's seeds, before the head fills them
  seeds_with_background    (classes without background only) seeding again with background allowed
  oracle                   each proposal takes its majority truth class
  oracle_restricted        each proposal takes the majority among its image's labels (and background where the
                           classes have one): the seeds' ceiling; the filled pseudo-labels can pass it

``--proposals KEY --pooled KEY`` reads proposals and features a store already holds instead of running the
flow (``--features KEY`` where the pooled group does not record its features key); ``--proposals KEY
--features KEY`` alone pools them first with the pool stage's own function and the parameters' ``pool``
settings (mask attention, for one). The seed, head and fill stages' own functions then make the versions
outside a flow run. mIoU (without a background class, the unused
placeholder 0 is left out of the means; a pixel left unlabelled counts against its true class), pixel accuracy,
mean class accuracy (per-class recall, the metric of the classic MSRC-21 papers), per-class IoU, proposals per
image and the share of counted pixels inside a proposal. ``checks``: seeding again in-process reproduces the
stored seeds, scoring them per proposal reproduces their stored maps' scores, and (with the flow) the
pseudo-labels' scores are the flow's evaluation.
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

from bench._common import format_table, proposal_confusion, provenance, publish, resize_nearest  # noqa: E402
from bench.quality import Image, load_split, seed_labels, version_proposal_labels  # noqa: E402
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


def scores(images: Sequence[Image], labels: Sequence[np.ndarray], class_names: list[str], background: bool = False) -> dict:
    """mIoU (without the background placeholder unless ``background``), pixel accuracy, mean class accuracy,
    classes present and per-class IoU of the proposals' labels."""
    cm = ConfusionMatrix(len(class_names))
    cm.matrix = proposal_confusion([im.proposals for im in images], labels, len(class_names))
    s = summarise(cm, class_names, background=background)
    return {"images": len(images), "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
            "mean_class_accuracy": s["mean_class_accuracy"], "classes_present": s["classes_present"], "iou": s["iou"]}


def scene_rows(store: Path, data: Path, params: RunParams, device: str, keys: tuple[str, str] | None = None,
               features: str | None = None) -> dict:
    """The pseudo-labels of ``data`` (the flow's, or seeded in-process on stored ``keys``: proposals, pooled)
    and the in-process rows on its proposals and features."""
    dataset = DatasetInput(path=str(data))
    if keys is None:
        from maskbank.flows.label import label_images

        run = label_images(datasets=[dataset], store=str(store), params=params, device=device)
        pk = proposals_key(params.propose)
        keys, skipped = (pk, pooled_key(pk, features_key(params.embed), params.pool)), {k for k, _ in run.skipped}
    else:
        run, skipped = None, set()
    st = Store.open(store, create=False)
    split = load_split(st, dataset, *keys, skipped)
    images, names, dev, bg = split.images, split.ref.class_names, resolve_device(device), split.ref.has_background
    replicated = seed_labels(images, len(names), params.seed, dev, background=bg)
    versions = _versions(store, split.ref, keys, features, params, device) if run is None else \
        {"seeds": run.seeds, "pseudo_labels": run.pseudo_labels}
    st.refresh()  # to the commits that made them
    rows = {"pseudo_labels": map_scores(st, versions["pseudo_labels"], images, names, bg),
            "seeds": scores(images, replicated if run is None else version_proposal_labels(st, run.seeds, images),
                            names, bg)}
    if not bg:
        rows["seeds_with_background"] = scores(images, seed_labels(images, len(names), params.seed, dev), names)
    allowed = lambda im: sorted({0, *im.labels}) if bg else (im.labels or None)
    rows["oracle"] = scores(images, [im.proposals.majority() for im in images], names, bg)
    rows["oracle_restricted"] = scores(images, [im.proposals.majority(allowed(im)) for im in images], names, bg)
    covered = sum(int(im.proposals.counts.sum()) for im in images)
    counted = covered + sum(int(im.proposals.rest.sum()) for im in images)
    checks = {"seeded": "in-process (stored keys given)" if run is None else "by the flow",
              "stored_seed_maps": _check(map_scores(st, versions["seeds"], images, names, bg)["pixel_accuracy"],
                                         rows["seeds"]["pixel_accuracy"]),
              "seed_replicated": {"ok": all(np.array_equal(a, b) for a, b in zip(
                  replicated, version_proposal_labels(st, versions["seeds"], images)))}}
    if run is not None:
        checks["flow_evaluation"] = _check(rows["pseudo_labels"]["miou"], run.pseudo_label_metrics["classes"]["miou"])
    return {
        "dataset": str(data), "images": len(images), "classes": names[1:], "background": bg, "proposals_key": keys[0],
        "pooled_key": keys[1], "pseudo_labels_version": run.pseudo_labels if run else None, "rows": rows,
        "proposals": {"per_image": float(np.mean([len(im.proposals) for im in images])),
                      "coverage": covered / counted if counted else math.nan},
        "checks": checks,
        "seconds": versions.get("seconds", run.seconds if run else {}),
    }


def map_scores(st: Store, version: str, images: Sequence[Image], class_names: list[str], background: bool) -> dict:
    """The scores of :func:`scores` for a version's stored label maps (which may label pixels outside every
    proposal, as the pseudo-labels the head fills do)."""
    cm = ConfusionMatrix(len(class_names))
    for im in images:
        cm.update(resize_nearest(st.read_label_map(version, im.key), im.truth.shape), im.truth)
    s = summarise(cm, class_names, background=background)
    return {"images": len(images), "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
            "mean_class_accuracy": s["mean_class_accuracy"], "classes_present": s["classes_present"], "iou": s["iou"]}


def _versions(store: Path, ref, keys: tuple[str, str], features: str | None, params: RunParams,
              device: str) -> dict:
    """The seeds and pseudo-labels of the collection ``ref`` on stored proposals and pooled features (``keys``),
    made by the flow's own stage functions outside a flow run, with each one's seconds (next to nothing for a
    version the store already holds); ``features``: the patch features' key (unset: the one the pooled group
    records)."""
    from maskbank.flows.stages.seed import seed_collection
    from maskbank.flows.stages.segment import fill_pseudo_labels, train_segmenter
    from maskbank.storage.layout import FEATURES, POOLED

    import time

    pk, plk = keys
    fk = features or (Store.open(store, create=False).stage_settings(POOLED, plk) or {}).get(FEATURES)
    if fk is None:
        raise SystemExit(f"pooled key {plk} records no features key (written before keys were recorded): give --features")
    t0 = time.perf_counter()
    seeds = seed_collection.fn(str(store), ref, pk, plk, params.seed, device=device)
    seconds = {"seed": time.perf_counter() - t0}
    if not params.segment.enabled:
        return {"seeds": seeds.id, "pseudo_labels": seeds.id, "seconds": seconds}
    t0 = time.perf_counter()
    head = train_segmenter.fn(str(store), ref, seeds, pk, fk, params.segment.config(), device=device)
    seconds["segmenter"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    filled = fill_pseudo_labels.fn(str(store), ref, seeds, head, pk, fk, params.segment.arbitrate_below)
    seconds["fill"] = time.perf_counter() - t0
    return {"seeds": seeds.id, "pseudo_labels": filled.id, "seconds": seconds}


def pool_stored(store: Path, data: Path, proposals: str, features: str, params: RunParams, device: str) -> str:
    """Pool the stored ``proposals`` and ``features`` of ``data``'s images with the pool stage's own function and
    ``params.pool`` (outside a flow run; nothing is done for images the pooled group already holds); its key.
    ``params.embed`` must be what made ``features`` where the pool settings make features again."""
    from maskbank.flows.stages.common import jobs_of
    from maskbank.flows.stages.ingest import ingest
    from maskbank.flows.stages.pool import pool_shard, pooled_key

    import time

    key = pooled_key(proposals, features, params.pool)
    jobs = jobs_of(ingest.fn(DatasetInput(path=str(data)), str(store)))
    t0 = time.perf_counter()
    for start in range(0, len(jobs), params.shard_size):
        pool_shard.fn(str(store), key, jobs[start : start + params.shard_size], proposals, features, params.pool,
                      params.embed, device=device)
    print(f"pooled {len(jobs)} images of {data.name} into {key} in {time.perf_counter() - t0:.1f} s", flush=True)
    return key


def _check(value: float, reference: float) -> dict:
    return {"value": value, "reference": reference, "ok": bool(abs(value - reference) <= TOLERANCE)}


def report(results: dict) -> str:
    """Each dataset's rows, ratio and per-class IoU as text tables."""
    out = []
    for d in results["datasets"]:
        r = d["rows"]
        table = [[row, v["images"], v["miou"], v["pixel_accuracy"], v["mean_class_accuracy"], v["classes_present"]]
                 for row, v in r.items()]
        ratio = r["pseudo_labels"]["miou"] / r["oracle_restricted"]["miou"] if r["oracle_restricted"]["miou"] else None
        per_class = [[name, iou, r["oracle_restricted"]["iou"][name]] for name, iou in r["pseudo_labels"]["iou"].items()]
        out += [f"{Path(d['dataset']).name}: {d['images']} images, {len(d['classes'])} classes"
                f"{'' if d['background'] else ' (no background class)'}, {d['proposals']['per_image']:.1f} proposals "
                f"per image covering {d['proposals']['coverage']:.1%} of counted pixels",
                format_table(["row", "images", "mIoU", "pixel acc", "mean class acc", "classes present"], table),
                f"pseudo_labels / oracle_restricted: {ratio:.3f}" if ratio is not None else "",
                format_table(["class", "pseudo-labels IoU", "oracle_restricted IoU"], per_class),
                "checks: " + ", ".join(f"{k} {v if isinstance(v, str) else ('ok' if v.get('ok', True) else 'MISMATCH')}"
                                       for k, v in d["checks"].items()),
                ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA, help="images/ + masks/ folders")
    parser.add_argument("--store", type=Path, default=Path("runs/scene-store"), help="maskbank store (created)")
    parser.add_argument("--out", type=Path, default=Path("runs/scenes.json"), help="results JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--params", type=Path, help="run parameters, a JSON file as `maskbank run --params` takes "
                        "(default: the defaults)")
    parser.add_argument("--proposals", help="proposals key the store holds (with --pooled: the flow is not run)")
    parser.add_argument("--pooled", help="pooled key the store holds")
    parser.add_argument("--features", help="features key the pooled key was made from (default: the one its group "
                        "records)")
    args = parser.parse_args(argv)
    origin = provenance("bench/scenes.py", argv)
    if args.pooled and not args.proposals:
        parser.error("--pooled goes with --proposals: give both stored keys, or neither to run the flow")
    if args.proposals and not (args.pooled or args.features):
        parser.error("--proposals needs --pooled, or --features to pool them with the pool stage")
    params = RunParams.model_validate_json(args.params.read_text()) if args.params else RunParams()
    results = {"params": params.model_dump(mode="json"), "datasets": []}
    for d in args.data:
        keys = None
        if args.proposals:
            pooled = args.pooled or pool_stored(args.store, d, args.proposals, args.features, params, args.device)
            keys = (args.proposals, pooled)
        results["datasets"].append(scene_rows(args.store, d, params, args.device, keys, args.features))
    publish(results, args.out, report(results), origin)
    return results


if __name__ == "__main__":
    main()
