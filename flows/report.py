"""Run reports for the Prefect UI: a markdown artifact of what a run read, produced and scored, and a table
artifact of per-class IoU.

Building the text is pure formatting of a run's summary and its evaluation metrics (``{"images": n,
"classes": {"miou", "classes_present", "iou": {class: IoU or None}}, "voc21": {...}}``); ``publish_*`` hands
it to Prefect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from maskbank.flows.params import RunParams
from maskbank.flows.stages.ingest import DatasetInput

if TYPE_CHECKING:
    from maskbank.flows.label import RunSummary

REPORT_KEY = "maskbank-report"
IOU_TABLE_KEY = "maskbank-class-iou"
EVALUATION_KEY = "maskbank-evaluation"
PER_IMAGE_STAGES = ("propose", "embed", "pool")
STAGES = ("ingest", *PER_IMAGE_STAGES, "seed", "evaluate", "bank", "retrieve")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` and newlines inside cells are escaped."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def score(value: float | None) -> str:
    """An IoU for display: four decimals, ``-`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def class_iou_rows(evaluations: Mapping[str, dict | None], subset: str = "classes") -> list[dict]:
    """One row per class scored by any of ``evaluations`` (name -> metrics): ``{"class": name, <evaluation>:
    IoU}``, IoU rounded to 4 decimals and None where the class is absent from that evaluation's truth and
    prediction. Classes absent everywhere are left out."""
    ious = {name: m[subset]["iou"] for name, m in evaluations.items() if m and subset in m}
    classes = list(dict.fromkeys(c for iou in ious.values() for c in iou))
    rows = []
    for c in classes:
        values = {name: _rounded(iou.get(c)) for name, iou in ious.items()}
        if any(v is not None for v in values.values()):
            rows.append({"class": c, **values})
    return rows


def scores_section(evaluations: Mapping[str, dict | None]) -> str:
    """mIoU of each evaluation, then the per-class IoU table (markdown); empty without evaluations."""
    named = {name: m for name, m in evaluations.items() if m}
    if not named:
        return ""
    voc = any("voc21" in m for m in named.values())
    header = ["evaluation", "images", "mIoU", "classes present"] + (["VOC-21 mIoU"] if voc else [])
    rows = []
    for name, m in named.items():
        row = [name, m["images"], score(m["classes"]["miou"]), m["classes"]["classes_present"]]
        rows.append(row + ([score(m["voc21"]["miou"]) if "voc21" in m else "-"] if voc else []))
    per_class = class_iou_rows(named)
    lines = ["## Scores", "", markdown_table(header, rows), "", "### Per-class IoU", ""]
    lines.append(markdown_table(["class", *named], [[r["class"], *(score(r[n]) for n in named)] for r in per_class]))
    return "\n".join(lines)


def store_location(store: str) -> str:
    """A store's location as reports name it: the canonical form (an absolute path for a local store)."""
    from maskbank.storage.location import LocationError, parse_location

    try:
        return str(parse_location(store))
    except LocationError:
        return store


def datasets_table(labelled: Sequence[DatasetInput], targets: Sequence[DatasetInput] = ()) -> str:
    rows = [[role, f"`{d.path}`", d.split or "-", d.format] for role, ds in (("labelled", labelled), ("target", targets))
            for d in ds]
    return markdown_table(["role", "path", "split", "format"], rows)


def run_report(
    summary: RunSummary,
    datasets: Sequence[DatasetInput],
    targets: Sequence[DatasetInput] | None,
    params: RunParams,
    device: str,
) -> str:
    """The markdown report of one run of the main flow."""
    store = store_location(summary.store)
    images = summary.images
    versions = [("pseudo-labels", summary.pseudo_labels), ("prototype bank", summary.bank),
                ("predictions (retrieval)", summary.predictions)]
    stages = []
    for stage in STAGES:
        if stage not in summary.seconds:
            continue
        done = "-"
        if stage in PER_IMAGE_STAGES and stage in summary.computed:
            done = f"{summary.computed[stage]} of {images.get('distinct', '?')}"
        stages.append([stage, done, f"{summary.seconds[stage]:.1f}"])
    parts = [
        "# maskbank run report",
        "",
        f"Store: `{store}` (list its versions: `maskbank versions {store}`)",
        "",
        "## Datasets",
        "",
        datasets_table(datasets, targets or ()),
        "",
        f"Images: {images.get('labelled', '?')} labelled (collection `{summary.labelled}`), "
        f"{images.get('targets', 0)} target, {images.get('distinct', '?')} distinct processed.",
        "",
        "## Versions",
        "",
        markdown_table(["output", "version"], [[name, f"`{vid}`"] for name, vid in versions if vid]),
        "",
        "Label maps: `labels/<version>` in the store (`[image, y, x]`, one row per image key).",
        "",
        "## Stages",
        "",
        markdown_table(["stage", "images computed", "seconds"], stages),
        "",
        "Images computed: work done in this run; the rest were already in the store. Seconds include cache hits.",
        "",
    ]
    scores = scores_section({"pseudo-labels": summary.pseudo_label_metrics,
                             "retrieval": summary.prediction_metrics})
    parts += [scores or "## Scores\n\nNo ground truth: nothing to score.", "", "## Skipped images", ""]
    if summary.skipped:
        parts.append(markdown_table(["image", "reason"], [[f"`{k}`", why] for k, why in summary.skipped]))
    else:
        parts.append("None.")
    parts += ["", "## Parameters", "", parameters_table(params, device)]
    return "\n".join(parts) + "\n"


def parameters_table(params: RunParams, device: str) -> str:
    rows = []
    for name, value in params.model_dump(mode="json").items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        rows.append([name, value])
    return markdown_table(["stage", "parameters"], rows + [["device", device]])


def evaluation_report(store: str, version: str, kind: str, datasets: Sequence[DatasetInput], metrics: dict) -> str:
    """The markdown report of a stored label version scored on ``datasets``."""
    parts = [
        "# maskbank evaluation",
        "",
        f"Version `{version}` ({kind}) of store `{store_location(store)}`.",
        "",
        "## Datasets",
        "",
        datasets_table(datasets),
        "",
        scores_section({kind: metrics}),
    ]
    if metrics.get("skipped"):
        parts += ["", "## Images not scored", "",
                  markdown_table(["image", "reason"], [[f"`{i}`", why] for i, why in metrics["skipped"]])]
    return "\n".join(parts) + "\n"


def publish_run_report(
    summary: RunSummary,
    datasets: Sequence[DatasetInput],
    targets: Sequence[DatasetInput] | None,
    params: RunParams,
    device: str,
) -> None:
    """Attach the run report (markdown) and, when anything was scored, the per-class IoU table to the
    current flow run."""
    create_markdown_artifact(run_report(summary, datasets, targets, params, device), key=REPORT_KEY,
                             description="What this run read, produced and scored.")
    rows = class_iou_rows({"pseudo-labels": summary.pseudo_label_metrics, "retrieval": summary.prediction_metrics})
    if rows:
        create_table_artifact(rows, key=IOU_TABLE_KEY, description="Per-class IoU against the ground truth.")


def publish_evaluation_report(
    store: str, version: str, kind: str, datasets: Sequence[DatasetInput], metrics: dict
) -> None:
    """Attach a stored version's evaluation (markdown) and its per-class IoU table to the current flow run."""
    create_markdown_artifact(evaluation_report(store, version, kind, datasets, metrics), key=EVALUATION_KEY,
                             description=f"Version {version} scored against the ground truth.")
    rows = class_iou_rows({kind: metrics})
    if rows:
        create_table_artifact(rows, key=IOU_TABLE_KEY, description="Per-class IoU against the ground truth.")


def _rounded(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(float(value), 4)
