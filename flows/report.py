"""Run reports for the Prefect UI: a markdown artifact of what a run read, produced and scored, and a table
artifact of per-class IoU.

Building the text is pure formatting of a run's summary and its evaluation metrics (``{"images": n,
"classes": {"miou", "classes_present", "iou": {class: IoU or None}}, "voc21": {...}}``) and of thumbnails of
its pseudo-labels (JPEG ``data:`` URIs, which the Prefect UI's markdown renderer shows as images);
``read_thumbnails`` reads those from the store and ``publish_*`` hands the text to Prefect.
``summary_warnings`` says in one line each what looks wrong in a run's label maps (images all background,
labels without a pixel; see :mod:`maskbank.tasks.coverage`), for the report and the terminal.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from maskbank.flows.params import RunParams
from maskbank.flows.stages.ingest import DatasetInput
from maskbank.tasks.thumbnails import SHOWN_IMAGES, SIDE, Thumbnail, choose_images, labels_thumbnail

if TYPE_CHECKING:
    from maskbank.flows.label import RunSummary

REPORT_KEY = "maskbank-report"
IOU_TABLE_KEY = "maskbank-class-iou"
EVALUATION_KEY = "maskbank-evaluation"
PER_IMAGE_STAGES = ("propose", "embed", "pool")
STAGES = ("ingest", *PER_IMAGE_STAGES, "clip", "seed", "segment", "evaluate", "bank", "retrieve")
SHOWN_NAMES = 10
"""Images or classes a warning names before "and N more"."""
_MARKDOWN_SPECIAL = "\\`*_[]<>#|"


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


def named(names: Sequence[str], total: int | None = None, shown: int = SHOWN_NAMES) -> str:
    """The first ``shown`` of ``names`` joined by commas, then "and N more" for the rest of ``total`` (by
    default, of ``names``)."""
    total = len(names) if total is None else total
    head = list(names[:shown])
    more = total - len(head)
    return ", ".join(head) + (f" and {more} more" if more > 0 else "")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def coverage_warnings(output: str, coverage: Mapping | None, shown: int = SHOWN_NAMES) -> list[str]:
    """One line per check of a label version's looks-wrong counts (:meth:`CoverageTally.summary`) that found
    something, prefixed with ``output`` (the version's role); empty when nothing looks wrong."""
    if not coverage:
        return []
    lines = []
    empty = coverage["all_background"]
    if empty["count"]:
        verb = "is" if empty["count"] == 1 else "are"
        lines.append(f"{output}: {empty['count']} of {_count(coverage['images'], 'labelled image', 'labelled images')} "
                     f"{verb} all background (no pixel of any class): {named(empty['images'], empty['count'], shown)}")
    missing = coverage["labels_missing"]
    if missing["count"]:
        images = [f"{m['image']} ({', '.join(m['classes'])})" for m in missing["images"]]
        lines.append(f"{output}: {_count(missing['count'], 'labelled image has', 'labelled images have')} labels "
                     f"with no pixel: {named(images, missing['count'], shown)}")
    never = coverage["classes_never_painted"]
    if never:
        classes = [f"{c['class']} (labels {_count(c['images'], 'image', 'images')})" for c in never]
        lines.append(f"{output}: {_count(len(never), 'class', 'classes')} got no pixel in any image labelled with "
                     f"{'it' if len(never) == 1 else 'them'}: {named(classes, shown=shown)}")
    return lines


def evidence_warnings(evidence: Mapping | None, shown: int = SHOWN_NAMES) -> list[str]:
    """One line per class group whose image labels give seeding too little to go on
    (:func:`maskbank.tasks.collection.label_evidence`): classes in too few labelled images, with how many more
    would help, and classes in every labelled image; empty when there are none."""
    if not evidence:
        return []
    lines = []
    thin, below, enough = evidence["thin"], evidence["thin_below"], evidence["enough"]
    if thin:
        classes = [f"{c['class']} ({_count(c['images'], 'image', 'images')}: label {below - c['images']} more)"
                   for c in thin]
        lines.append(f"pseudo-labels: {_count(len(thin), 'class is', 'classes are')} in fewer than {below} labelled "
                     f"images, too few for reliable seeds: {named(classes, shown=shown)}; seeds improve up to about "
                     f"{enough} labelled images per class")
    everywhere = evidence["everywhere"]
    if everywhere:
        lines.append(f"pseudo-labels: {named(everywhere, shown=shown)} {'is' if len(everywhere) == 1 else 'are'} in "
                     "every labelled image, so no image shows what they are not: their seeds rest on the labels "
                     "alone and may be poor; labelled images without them would help")
    return lines


def summary_warnings(summary: RunSummary, shown: int = SHOWN_NAMES) -> list[str]:
    """One line per thing that looks wrong in a run's label maps against the image labels (pseudo-labels,
    then predictions), after what the image labels gave seeding too little of; each names at most ``shown``
    images or classes; empty when nothing does."""
    return (evidence_warnings(summary.pseudo_label_evidence, shown)
            + coverage_warnings("pseudo-labels", summary.pseudo_label_coverage, shown)
            + coverage_warnings("predictions", summary.prediction_coverage, shown))


def check_section(warnings: Sequence[str], galleries: Sequence[str] = ()) -> str:
    """The report's "Check these" section (markdown): the ``warnings`` and the commands (``galleries``) that
    show every image of the versions concerned; empty without warnings."""
    if not warnings:
        return ""
    escape = lambda text: "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)
    lines = ["## Check these", ""] + [f"- {escape(w)}" for w in warnings]
    lines += ["", "Counted over the images with image labels, as their label maps were painted."]
    if galleries:
        lines += ["", "Every image, in an HTML gallery:", "", "```", *galleries, "```"]
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


def gallery_command(store: str, version: str) -> str:
    """The command that writes the HTML gallery of every image of a label version (shell-quoted)."""
    return f"maskbank export {shlex.quote(store)} {version} --format html --out gallery-{version[:8]}"


def image_markdown(thumbnail: Thumbnail) -> str:
    """A thumbnail as a markdown image, its alt text naming the image."""
    alt = "".join(c for c in thumbnail.image_id if c not in "[]\\")
    return f"![{alt} with its pseudo-labels]({thumbnail.data_uri})"


def thumbnails_section(store: str, version: str, thumbnails: Sequence[Thumbnail],
                       not_shown: Sequence[tuple[str, str]] = ()) -> str:
    """The report's pictures of a pseudo-label version (markdown): one row per thumbnail with its image id
    and the classes it shows, the images that could not be shown and why, and the gallery command."""
    lines = ["## Pseudo-labels", ""]
    if thumbnails:
        rows = [[f"`{t.image_id}`", ", ".join(t.classes) or "background only", image_markdown(t)] for t in thumbnails]
        lines += [markdown_table(["image", "classes", "pseudo-labels"], rows), "",
                  f"The first {len(thumbnails) + len(not_shown)} labelled images by id, each class's colour laid "
                  "over the photo (background shows the photo).", ""]
    if not_shown:
        lines += [markdown_table(["image not shown", "reason"], [[f"`{i}`", why] for i, why in not_shown]), ""]
    lines += ["Every image, in an HTML gallery:", "", "```", gallery_command(store, version), "```"]
    return "\n".join(lines)


def run_report(
    summary: RunSummary,
    datasets: Sequence[DatasetInput],
    targets: Sequence[DatasetInput] | None,
    params: RunParams,
    device: str,
    thumbnails: Sequence[Thumbnail] = (),
    not_shown: Sequence[tuple[str, str]] = (),
) -> str:
    """The markdown report of one run of the main flow, with ``thumbnails`` of its pseudo-labels and the
    images ``not_shown`` (``(image id, reason)``) of those chosen for them."""
    store = store_location(summary.store)
    images = summary.images
    versions = [("pseudo-labels", summary.pseudo_labels), ("seeds (before the head filled them)",
                summary.seeds if summary.segmenter else None), ("segmentation head", summary.segmenter),
                ("prototype bank", summary.bank), ("predictions", summary.predictions)]
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
        *([checks, ""] if (checks := _checks(summary, store)) else []),
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
        thumbnails_section(store, summary.pseudo_labels, thumbnails, not_shown),
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


def _checks(summary: RunSummary, store: str) -> str:
    """The run report's "Check these" section, with the gallery commands of the versions it warns about."""
    pseudo = (evidence_warnings(summary.pseudo_label_evidence)
              + coverage_warnings("pseudo-labels", summary.pseudo_label_coverage))
    predicted = coverage_warnings("predictions", summary.prediction_coverage)
    galleries = [gallery_command(store, v) for v, w in ((summary.pseudo_labels, pseudo), (summary.predictions, predicted))
                 if w and v]
    return check_section(pseudo + predicted, galleries)


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
    """Attach the run report (markdown, with thumbnails of the pseudo-labels) and, when anything was scored,
    the per-class IoU table to the current flow run."""
    thumbnails, not_shown = read_thumbnails(summary.store, summary.pseudo_labels)
    create_markdown_artifact(run_report(summary, datasets, targets, params, device, thumbnails, not_shown),
                             key=REPORT_KEY, description="What this run read, produced and scored.")
    rows = class_iou_rows({"pseudo-labels": summary.pseudo_label_metrics, "retrieval": summary.prediction_metrics})
    if rows:
        create_table_artifact(rows, key=IOU_TABLE_KEY, description="Per-class IoU against the ground truth.")


def read_thumbnails(store: str, version: str, n: int = SHOWN_IMAGES,
                    side: int = SIDE) -> tuple[list[Thumbnail], list[tuple[str, str]]]:
    """Thumbnails of the first ``n`` images by id that the label version ``version`` labelled, read as of
    its commit: each photo (as its dataset shows it, at its working size) with its label map, at a longer
    side of ``side``. Returns the thumbnails and ``(image id, reason)`` of the chosen images that could not
    be read, which are left out; a store or version that cannot be read gives neither."""
    from maskbank.storage.datasets import ImageError, load_rgb
    from maskbank.storage.layout import LABELS
    from maskbank.storage.store import MissingItemError, Store
    from maskbank.storage.versions import get_version

    try:
        st = Store.open(store, create=False, version=version)
        info = get_version(st, version)
        manifests = [st.read_manifest(fp) for fp in info.datasets]
        images = {}
        for fp, m in zip(info.datasets, manifests):
            keys = st.read_attrs(st.manifest_path(fp))["image_keys"]
            for record, key in zip(m.records, keys, strict=True):
                images.setdefault((record.image_id, str(key)), (record, m))
        chosen = choose_images(images, st.list_items(LABELS, version), n)
    except Exception as e:  # the report goes out without pictures rather than not at all
        _log().warning("run report without thumbnails: cannot read version %s of %s: %s", version, store, e)
        return [], []
    thumbnails, not_shown = [], []
    for image_id, key in chosen:
        record, m = images[image_id, key]
        try:
            photo = load_rgb(record.path, exif_transpose=m.exif_transpose)
            label_map = st.read_label_map(version, key)
            thumbnails.append(labels_thumbnail(image_id, photo, label_map, manifests[0].class_names, side))
        except (ImageError, MissingItemError, OSError, ValueError) as e:
            not_shown.append((image_id, str(e)))
    return thumbnails, not_shown


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


def _log() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger inside a flow run, else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)
