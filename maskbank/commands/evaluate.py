"""``maskbank evaluate``: score a stored label version against the pixel truth of datasets.

Runs the ``maskbank-reevaluate`` flow (so the evaluation is published as a version of the store and shown in
the Prefect UI, as a deployment run of it would be) and prints mIoU, pixel accuracy and the IoU of each class.
What is wrong with the store, the version or the datasets is a one-line error before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from maskbank.commands.helptext import PlainCommand
from maskbank.commands.stores import StoreArg, fail, open_store


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""
    app.command("evaluate", cls=PlainCommand)(evaluate_version)


def evaluate_version(
    store: StoreArg,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="A pseudo_labels or predictions version: id or unique prefix (`maskbank versions STORE`).", show_default=False)],
    truth: Annotated[list[str], typer.Option(metavar="DATASET", help="Dataset with pixel truth, among the images the version labelled (repeatable): COCO, VOC, masks folder.", show_default=False)],
    truth_split: Annotated[Optional[str], typer.Option(metavar="SPLIT", help="Split of the truth datasets (COCO val2017, VOC val).")] = None,
    out: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Also write the metrics as JSON to this file.")] = None,
) -> None:
    """Score a stored label version against datasets' pixel truth: mIoU, pixel accuracy, IoU per class.

    The version is a pseudo_labels version (the labels of the labelled images) or a predictions version
    (the labels of the images to label); --truth names the datasets whose pixel truth scores it. The score
    is stored as an evaluation version too.

    \b
    Example:
      # the labels of the images to label (predictions version 3f2a) against their COCO pixel truth
      maskbank evaluate photos-store 3f2a --truth data/coco --truth-split val2017
    """
    from maskbank.commands.lookup import NotInStoreError, resolve_version
    from maskbank.flows.stages.ingest import DatasetInput
    from maskbank.storage.datasets import DatasetError, open_dataset
    from maskbank.storage.layout import LABEL_MAP_KINDS

    st = open_store(store)
    try:
        info = resolve_version(st, version, tuple(sorted(LABEL_MAP_KINDS)))
    except NotInStoreError as e:
        fail(str(e))
    datasets = [DatasetInput(path=p, split=truth_split) for p in truth]
    version_classes = {tuple(st.read_manifest(fp).class_names) for fp in info.datasets}
    for d in datasets:
        try:
            ds = open_dataset(d.spec())
        except DatasetError as e:
            fail(str(e))
        if not any(r.has_truth for r in ds.records):
            fail(f"{d.path}: no image has pixel truth to score against")
        if tuple(ds.class_names) not in version_classes:
            fail(f"{d.path}: its classes differ from those version {info.id} was labelled with; rename classes to match")
    if out is not None and out.parent and not out.parent.is_dir():
        fail(f"--out: folder {out.parent} does not exist")

    from maskbank.flows.reevaluate import reevaluate

    try:
        metrics = reevaluate(store=st.url, version=info.id, datasets=datasets)
    except (DatasetError, ValueError) as e:
        fail(str(e))
    typer.echo(report(info.id, info.kind, metrics))
    if out is not None:
        out.write_text(json.dumps({"version": info.id, "kind": info.kind, **metrics}, indent=2) + "\n")


def report(version: str, kind: str, metrics: dict) -> str:
    """The metrics as text: the summary line, then each class's IoU (``-`` where the class is absent)."""
    m = metrics["classes"]
    lines = [f"{kind} {version}: mIoU {m['miou']:.4f} ({m['classes_present']} classes present), "
             f"pixel accuracy {m['pixel_accuracy']:.4f}, "
             + (f"mean class accuracy {m['mean_class_accuracy']:.4f}, " if "mean_class_accuracy" in m else "")
             + f"over {metrics['images']} images"]
    if "voc21" in metrics:
        lines.append(f"VOC-21 mIoU {metrics['voc21']['miou']:.4f}")
    width = max(len(n) for n in m["iou"])
    lines += [f"  {name:<{width}}  {'-' if iou is None else f'{iou:.4f}'}" for name, iou in m["iou"].items()]
    lines += [f"skipped {image_id}: {why}" for image_id, why in metrics.get("skipped", [])]
    return "\n".join(lines)
