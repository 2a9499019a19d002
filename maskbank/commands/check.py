"""``maskbank check`` (and ``maskbank run --dry-run``): read the datasets and say what a run would do before it
does it: images per dataset (labelled, unlabelled, skipped and why), the classes and how many images each has
(thin classes, classes in every image, names that look like typos of others), the parameters in effect, and,
against the store, how many images each per-image stage still has to compute and about how long that takes.
Nothing is written."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from maskbank.commands.helptext import PlainCommand

if TYPE_CHECKING:
    from maskbank.flows.params import RunParams
    from maskbank.flows.stages.ingest import DatasetInput
    from maskbank.storage.datasets import Dataset

SHOWN = 10
"""Items a list in the report shows before "and N more"."""


def describe_run(labelled: Sequence[DatasetInput], to_label: Sequence[DatasetInput], params: RunParams,
                 store: str | None, device: str) -> list[str]:
    """The lines of the report (see the module); exits with a one-line error where a run would fail."""
    from maskbank.commands.preflight import check_run

    checked = check_run(labelled, to_label, store)
    lab, tgt = checked.labelled, checked.to_label
    lines = ["datasets:"]
    for role, inputs, datasets in (("labelled", labelled, lab), ("to label", to_label, tgt)):
        for d, ds in zip(inputs, datasets):
            lines += _dataset_lines(role, d, ds)
    lines += _class_lines(lab)
    lines += ["parameters (maskbank params lists them all):"]
    for stage, values in params.model_dump(mode="json").items():
        shown = ", ".join(f"{k}={v}" for k, v in values.items()) if isinstance(values, dict) else values
        lines.append(f"  {stage}: {shown}")
    lines += _work_lines(lab + tgt, params, checked.location, checked.store_exists, device)
    return lines


def _dataset_lines(role: str, d: DatasetInput, ds: Dataset) -> list[str]:
    labelled = sum(r.labels is not None for r in ds.records)
    truth = sum(r.has_truth for r in ds.records)
    fmt = (ds.spec or {}).get("format", d.format)
    lines = [f"  {role}: {d.path} ({fmt}, {ds.name}): {len(ds.records)} images, {labelled} labelled, "
             f"{len(ds.records) - labelled} unlabelled, {truth} with pixel truth, {len(ds.skipped)} skipped"]
    lines += [f"    skipped {i}: {why}" for i, why in ds.skipped[:SHOWN]]
    if len(ds.skipped) > SHOWN:
        lines.append(f"    and {len(ds.skipped) - SHOWN} more skipped")
    lines += [f"    note: {n}" for n in ds.notes[:SHOWN]]
    if role == "labelled" and len(ds.records) > labelled:
        lines.append(f"    its {len(ds.records) - labelled} unlabelled images are labelled by retrieval only if "
                     "also given to label (--to-label)")
    return lines


def _class_lines(datasets: Sequence[Dataset]) -> list[str]:
    from maskbank.commands.describe import listed
    from maskbank.tasks.collection import (
        ENOUGH_CLASS_IMAGES, THIN_CLASS_IMAGES, class_image_counts, close_names, everywhere_classes, thin_classes,
    )

    names = datasets[0].class_names
    labels = [r.labels for ds in datasets for r in ds.records if r.labels is not None]
    counts = class_image_counts(labels, len(names))
    kind = "" if datasets[0].has_background else ", no background class"
    lines = [f"classes ({len(names) - 1}{kind}), labelled images with each:"]
    order = sorted(range(1, len(names)), key=lambda k: (-counts[k], names[k]))
    lines += [f"  {names[k]:<24} {counts[k]}" for k in order]
    thin = thin_classes(counts)
    if thin:
        lines.append(f"warning: thin classes, in fewer than {THIN_CLASS_IMAGES} labelled images (too few for reliable "
                     f"seeds; they improve up to about {ENOUGH_CLASS_IMAGES}): {listed([names[k] for k in thin])}")
    unused = [names[k] for k in order if counts[k] == 0]
    if unused:
        lines.append(f"note: classes no labelled image has (they get no seeds): {listed(unused)}")
    everywhere = everywhere_classes(counts, sum(1 for image_labels in labels if image_labels))
    if everywhere:
        lines.append(f"warning: classes in every labelled image (no image shows what they are not, so their "
                     f"seeds rest on the labels alone): {listed([names[k] for k in everywhere])}")
    for c in close_names(names, counts):
        lines.append(f"warning: class {names[c.rare]!r} ({_images(counts[c.rare])}) looks like {names[c.common]!r} "
                     f"({_images(counts[c.common])}); if it is a typo: --rename '{names[c.rare]}={names[c.common]}'")
    return lines


def _work_lines(datasets: Sequence[Dataset], params: RunParams, location: str | None, exists: bool,
                device: str) -> list[str]:
    from maskbank.flows.stages.embed import features_key
    from maskbank.flows.stages.ingest import content_keys
    from maskbank.flows.stages.pool import pooled_key
    from maskbank.flows.stages.propose import detector_vocabulary, proposals_key
    from maskbank.storage.datasets.hashing import default_hash_cache
    from maskbank.storage.layout import FEATURES, POOLED, PROPOSALS
    from maskbank.storage.store import Store
    from maskbank.tasks.collection import work_seconds
    from maskbank.tasks.models.device import MEASURED_SECONDS_PER_IMAGE, resolve_device

    keys = {k for ds in datasets for k in content_keys(ds, default_hash_cache(ds.root), save=False)}
    vocabulary = (detector_vocabulary(params.propose, datasets[0].class_names, datasets[0].has_background)
                  if datasets else {})  # the labelled datasets' classes
    pk, fk = proposals_key(params.propose, **vocabulary), features_key(params.embed)
    stages = {PROPOSALS: pk, FEATURES: fk, POOLED: pooled_key(pk, fk, params.pool)}
    done = {stage: set() for stage in stages}
    if exists:
        st = Store.open(location, create=False)
        done = {stage: keys & set(st.list_items(stage, key)) for stage, key in stages.items()}
        lines = [f"store {location}: exists"]
    else:
        lines = [f"store {location}: new, created by the run" if location else "store: none given (everything to compute)"]
    lines.append(f"work: {len(keys)} distinct images; still to compute: "
                 + ", ".join(f"{stage} {len(keys - done[stage])}" for stage in stages))
    todo = len(keys - done[PROPOSALS])
    kind = resolve_device(device).type
    measured = MEASURED_SECONDS_PER_IMAGE.get(kind)
    if todo and measured is not None:
        seconds, cores = measured
        eta = work_seconds(todo, seconds, os.cpu_count() or 1, cores)
        lines.append(f"time: about {_duration(eta)} on this machine's {os.cpu_count()} CPU cores at "
                     f"{seconds} s per image on {cores} cores measured at default parameters (other parameters "
                     "change it: more points per side or a larger input size cost more)")
    elif todo:
        lines.append(f"time: no measured figure for {kind}; a run's report gives seconds per stage")
    return lines


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check(
    datasets: list[str] = typer.Argument(..., metavar="DATASET...", help="Labelled images: COCO root or instances json, VOC root, images/ + masks/ folder, image folder or labels file."),
    split: str | None = typer.Option(None, metavar="SPLIT", help="Split of the labelled datasets (COCO train2017, VOC train)."),
    to_label: list[str] = typer.Option([], "--to-label", metavar="DATASET", help="Images to label by retrieval (repeatable).", show_default=False),
    to_label_split: str | None = typer.Option(None, metavar="SPLIT", help="Split of the datasets to label."),
    classes: str | None = typer.Option(None, metavar="CLASSES", help="Class list of the labelled datasets: a classes.txt/.json file or comma-separated names."),
    rename: list[str] = typer.Option([], metavar="OLD=NEW", help="Rename (or merge) a class (repeatable).", show_default=False),
    skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Drop labels that are not in the class list."),
    params_file: Path | None = typer.Option(None, "--params", metavar="FILE", help="JSON or YAML file of run parameters."),
    store: str | None = typer.Option(None, metavar="STORE", help="Store a run would use: counts what is already computed there."),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto (CUDA when present), cpu, cuda or cuda:N: the time estimate's device."),
) -> None:
    """Read the datasets and print what a run would do: images, classes, parameters, work left and time.

    Reads the labelled images (and the images to label) as maskbank run would, and writes nothing: how
    many images each dataset has and which are skipped, the classes with how many labelled images show each
    (thin classes, classes in every image, names that look like typos), the parameters, and against --store
    what is still to compute and about how long it takes.

    \b
    Example:
      # labelled images: photos/, with photos/labels.csv naming the classes in each; images to label: new/
      maskbank check photos/labels.csv --to-label new/ --store photos-store
    """
    from maskbank.commands.preflight import check_device, dataset_input, read_params

    check_device(device)
    params = read_params(params_file, {}, {})
    labelled = [dataset_input(p, split, classes, rename, skip_unknown) for p in datasets]
    for line in describe_run(labelled, [dataset_input(p, to_label_split) for p in to_label], params, store, device):
        typer.echo(line)


def params() -> None:
    """Print every run parameter with its default and what it does (for --params files and the UI's form).

    \b
    Example:
      maskbank params
      # run.yaml holds the parameters to change, e.g.  propose: {points_per_side: 16}
      maskbank run --store photos-store --labelled photos/labels.csv --params run.yaml
    """
    for line in parameter_lines():
        typer.echo(line)


def parameter_lines() -> list[str]:
    """``stage.name = default  description`` for every parameter of a run, stage by stage."""
    from pydantic import BaseModel

    from maskbank.flows.params import RunParams

    lines = []
    for stage, field in RunParams.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            lines.append(f"{stage}: {model.__doc__.strip().splitlines()[0] if model.__doc__ else ''}")
            for name, f in model.model_fields.items():
                lines.append(f"  {stage}.{name} = {f.default!r}  {f.description or ''}".rstrip())
        else:
            lines.append(f"{stage} = {field.default!r}  {field.description or ''}".rstrip())
    return lines


def register(app: typer.Typer) -> None:
    """Add the ``check`` and ``params`` commands to ``app``."""
    app.command("check", cls=PlainCommand)(check)
    app.command("params", cls=PlainCommand)(params)
