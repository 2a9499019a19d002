"""The ``maskbank`` command line: a thin layer over the flows and the store."""

from __future__ import annotations

import os
from importlib import metadata, resources
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Optional

import typer

from maskbank.commands import evaluate as evaluate_commands
from maskbank.commands import export as export_commands
from maskbank.commands import inspect as inspect_commands
from maskbank.commands import server as server_commands
from maskbank.commands import versions as versions_commands
from maskbank.commands import check as check_commands
from maskbank.commands.helptext import MaskbankGroup, lazy_defaults, module_constant
from maskbank.commands.preflight import check_device, check_run, dataset_input
from maskbank.commands.stores import STORE_HELP, fail, set_debug
from maskbank.commands.weights import weights_app

# A local run's temporary Prefect server has no business phoning home (and offline it logs an error trying).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

HELP = """maskbank: pixel-level labels from image-level labels, without training.

Give it labelled images (each image with the names of the classes it shows) and, optionally, images to
label; it paints every pixel of both with a class and keeps every result as a version in a store.

\b
Example:
  # the bundled sample, end to end
  maskbank demo
  # labelled images: photos/, with photos/labels.csv naming the classes in each; images to label: new/
  maskbank check photos/labels.csv --to-label new/
  maskbank run --store photos-store --labelled photos/labels.csv --to-label new/
  maskbank export photos-store --format voc --out voc/"""

app = typer.Typer(cls=MaskbankGroup, help=HELP, no_args_is_help=True)


def _print_version(show: bool) -> None:
    """``--version``: print ``maskbank <version>`` and exit."""
    if show:
        typer.echo(f"maskbank {metadata.version('maskbank')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print maskbank's version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="On an error, show the exception and its traceback instead of one line.")] = False,
) -> None:
    """The options of ``maskbank`` itself, before any command: ``--version`` and ``--debug`` (for this
    invocation only)."""
    set_debug(debug)
    ctx.call_on_close(lambda: set_debug(False))


app.add_typer(weights_app, name="weights")
check_commands.register(app)
evaluate_commands.register(app)
export_commands.register(app)
inspect_commands.register(app)
server_commands.register(app)
versions_commands.register(app)


def sample_root() -> Path:
    """The bundled sample: redistributable COCO images with their annotations (see its ATTRIBUTION.md)."""
    return Path(str(resources.files("maskbank") / "sample" / "coco"))


def _print_summary(summary) -> None:
    typer.echo(f"store:          {summary.store}")
    typer.echo(f"pseudo-labels:  version {summary.pseudo_labels}  (label maps: labels/{summary.pseudo_labels})")
    if summary.segmenter:
        typer.echo(f"head:           version {summary.segmenter}  (trained on the seeds, version {summary.seeds})")
    typer.echo(f"prototype bank: version {summary.bank}")
    if summary.predictions:
        typer.echo(f"retrieval:      version {summary.predictions}  (label maps: labels/{summary.predictions})")
    for name, m in (("pseudo-labels", summary.pseudo_label_metrics), ("retrieval", summary.prediction_metrics)):
        if m:
            line = f"{name} mIoU: {m['classes']['miou']:.4f} ({m['classes']['classes_present']} classes present)"
            if "voc21" in m:
                line += f", VOC-21 mIoU: {m['voc21']['miou']:.4f}"
            typer.echo(f"{line} over {m['images']} images")
    typer.echo(f"computed: {summary.computed}")
    for key, why in summary.skipped:
        typer.echo(f"skipped {key}: {why}", err=True)
    from maskbank.flows.report import summary_warnings

    for line in summary_warnings(summary):
        typer.echo(f"warning: {line}", err=True)


WORKERS_HELP = "Shards of the per-image stages run at once in this many threads (cores are shared out among them)."
DASK_HELP = "Run the per-image shards on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786) instead."
BATCH_HELP = ("Images per forward pass of SAM's encoder and the embed stage's backbone (the pool stage's "
              "mask-attention pass takes one image at a time).")
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."


OPTIONS_OF_PARAMS = {"propose.points_per_side": "points-per-side", "propose.input_size": "input-size",
                     "retrieve.rule": "rule", "shard_size": "shard-size", "retrieve.k": "k", "retrieve.k_per_class": "k"}
"""The parameter each of ``run``'s options sets, so an error names the option the user typed."""


def execution_defaults() -> dict[str, str]:
    """The defaults of ``--workers`` and ``--batch``, as their help shows them, read from the modules that
    define them (flows.execution, tasks.models.device)."""
    workers = module_constant("maskbank.flows.execution", "DEFAULT_WORKERS")
    per_batch = module_constant("maskbank.tasks.models.device", "IMAGES_PER_BATCH")
    batch = ", ".join(f"{n} on {'a CPU' if kind == 'cpu' else kind.upper()}" for kind, n in per_batch.items())
    return {"workers": str(workers), "batch": batch}


def run_defaults() -> dict[str, str]:
    """The defaults of ``run``'s parameter options, read from :class:`RunParams` (which imports torch: call
    it only to render a help page)."""
    from maskbank.flows.params import RunParams

    defaults = RunParams()
    shown = {option.replace("-", "_"): str(attrgetter(path)(defaults))
             for path, option in OPTIONS_OF_PARAMS.items() if option != "k"}
    shown["k"] = (f"{defaults.retrieve.k_per_class} per class with class_balanced, "
                  f"{defaults.retrieve.k} with majority or knn_weighted")
    return {**shown, **execution_defaults()}


@app.command(cls=lazy_defaults(run_defaults))
def run(
    store: str = typer.Option(..., metavar="STORE", help=f"{STORE_HELP} (created if missing)."),
    bank: list[str] = typer.Option(..., "--labelled", "--bank", metavar="DATASET", help="Labelled images (repeatable): COCO root or instances json, VOC root, images/ + masks/ folder, image folder or labels file (.csv/.json)."),
    bank_split: Optional[str] = typer.Option(None, "--labelled-split", "--bank-split", metavar="SPLIT", help="Split of the labelled datasets (COCO train2017, VOC train)."),
    target: list[str] = typer.Option([], "--to-label", "--target", metavar="DATASET", help="Images to label by retrieval against the labelled ones (repeatable); their labels, if any, are not used.", show_default=False),
    target_split: Optional[str] = typer.Option(None, "--to-label-split", "--target-split", metavar="SPLIT", help="Split of the datasets to label."),
    classes: Optional[str] = typer.Option(None, metavar="CLASSES", help="Class list of the labelled datasets: a classes.txt/.json file or comma-separated names; a label outside it is an error (or dropped, --skip-unknown)."),
    rename: list[str] = typer.Option([], metavar="OLD=NEW", help="Rename (or merge) a class of the labelled datasets (repeatable); NEW 'background' folds it into background.", show_default=False),
    skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Drop labels that are not in the class list instead of stopping."),
    params_file: Optional[Path] = typer.Option(None, "--params", metavar="FILE", help="JSON or YAML file of run parameters (maskbank params lists them); the options below override it."),
    points_per_side: Optional[int] = typer.Option(None, metavar="N", help="SAM point prompts per side."),
    input_size: Optional[int] = typer.Option(None, metavar="N", help="SAM encoder input size (512 or 1024)."),
    rule: Optional[str] = typer.Option(None, metavar="RULE", help="Retrieval rule: class_balanced, majority, knn_weighted."),
    k: Optional[int] = typer.Option(None, metavar="N", help="k of the retrieval rule in use: neighbours of majority / knn_weighted, prototypes averaged per class of class_balanced."),
    shard_size: Optional[int] = typer.Option(None, metavar="N", help="Images per cached task."),
    device: str = typer.Option("auto", metavar="DEVICE", help=DEVICE_HELP),
    verify: bool = typer.Option(False, help="Check every stored output used against its content hash; recompute damaged ones."),
    workers: Optional[str] = typer.Option(None, metavar="N", help=WORKERS_HELP),
    dask: Optional[str] = typer.Option(None, metavar="ADDRESS", help=DASK_HELP),
    batch: Optional[str] = typer.Option(None, metavar="N", help=BATCH_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read the datasets and print what the run would do (as maskbank check), then stop."),
) -> None:
    """Label every pixel of the labelled images, and of the images to label, and store the labels.

    The labelled images (--labelled: each image with the names of the classes it shows) get pseudo-labels
    from SAM proposals and DINOv2 features; their labelled pixels make a bank of class prototypes, against
    which the images to label (--to-label) are labelled by retrieval. Every result is a version in the store
    (maskbank versions); a rerun computes only what changed. The flow runs on this machine.

    \b
    Example:
      # labelled images: photos/, with photos/labels.csv naming the classes in each; images to label: new/
      maskbank run --store photos-store --labelled photos/labels.csv --to-label new/
      maskbank run --store photos-store --labelled photos/labels.csv --points-per-side 16 --dry-run
    """
    from maskbank.commands.preflight import read_params

    check_device(device)
    execution = _execution(workers, dask, batch)
    overrides = {"propose.points_per_side": points_per_side, "propose.input_size": input_size,
                 "retrieve.rule": rule, "shard_size": shard_size}
    params = read_params(params_file, overrides, OPTIONS_OF_PARAMS)
    if k is not None:  # the k of the rule that will run
        field = "k_per_class" if params.retrieve.rule == "class_balanced" else "k"
        params = read_params(params_file, {**overrides, f"retrieve.{field}": k}, OPTIONS_OF_PARAMS)
    labelled = [dataset_input(p, bank_split, classes, rename, skip_unknown) for p in bank]
    to_label = [dataset_input(p, target_split) for p in target]
    if dry_run:
        from maskbank.commands.check import describe_run

        for line in describe_run(labelled, to_label, params, store, device):
            typer.echo(line)
        return
    location = check_run(labelled, to_label, store).location
    summary = _label(datasets=labelled, store=location, targets=to_label or None, params=params, device=device,
                     verify=verify, **execution)
    _print_summary(summary)


def _execution(workers: Optional[str], dask: Optional[str], batch: Optional[str] = None) -> dict:
    """The flow's ``workers``, ``dask`` and ``batch`` parameters, checked before any work: a one-line error,
    exit code 2. Without ``--workers`` the flow's default applies."""
    from maskbank.flows.execution import ClusterError, WorkersError, check_scheduler, check_workers

    out = {}
    if workers is not None:
        try:
            out["workers"] = check_workers(int(workers))
        except (ValueError, WorkersError):
            fail(f"--workers must be a whole number of at least 1, got {workers!r}")
    if batch is not None:
        if not batch.isdigit() or int(batch) < 1:
            fail(f"--batch must be a whole number of at least 1, got {batch!r}")
        out["batch"] = int(batch)
    if dask is None:
        return out
    try:
        address, _ = check_scheduler(dask)
    except ClusterError as e:
        fail(f"--dask: {e}")
    return {**out, "dask": address}


def _label(**kwargs):
    """Run the main flow; what is wrong with the datasets or the store is a one-line error, exit code 2.
    Ctrl-C or SIGTERM stops the run at once, exit code 130 or 143 (see :mod:`maskbank.commands.interrupt`)."""
    from maskbank.commands.interrupt import LocalRun

    with LocalRun() as run:
        from maskbank.flows.execution import ClusterError
        from maskbank.flows.label import label_images
        from maskbank.flows.stages.common import DamagedStoreError
        from maskbank.storage.datasets import DatasetError
        from maskbank.storage.location import LocationError
        from maskbank.storage.store import NotAStoreError

        from icechunk import IcechunkError

        try:
            return run(label_images, **kwargs)
        except (DatasetError, NotAStoreError, LocationError, DamagedStoreError, ClusterError) as e:
            fail(str(e))
        except IcechunkError as e:  # the store's storage refused (unreachable, no permission, no bucket)
            fail(f"store {kwargs['store']}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")


@app.command(cls=lazy_defaults(execution_defaults))
def demo(
    store: str = typer.Option("maskbank-demo-store", metavar="STORE", help=f"{STORE_HELP} (created if missing)."),
    device: str = typer.Option("auto", metavar="DEVICE", help=DEVICE_HELP),
    workers: Optional[str] = typer.Option(None, metavar="N", help=WORKERS_HELP),
    dask: Optional[str] = typer.Option(None, metavar="ADDRESS", help=DASK_HELP),
    batch: Optional[str] = typer.Option(None, metavar="N", help=BATCH_HELP),
) -> None:
    """Run the whole flow on the bundled sample with the default models and print the mIoU.

    The sample's COCO train2017 photos are the labelled images (their image-level labels only), its
    val2017 photos the images to label; both have pixel truth, so the labels are scored.

    \b
    Example:
      maskbank demo
      maskbank inspect maskbank-demo-store
    """
    from maskbank.flows.params import RunParams

    check_device(device)
    execution = _execution(workers, dask, batch)
    root = sample_root()
    labelled, to_label = [dataset_input(str(root), "train2017")], [dataset_input(str(root), "val2017")]
    location = check_run(labelled, to_label, store).location
    summary = _label(datasets=labelled, store=location, targets=to_label, params=RunParams(), device=device,
                     **execution)
    _print_summary(summary)
    typer.echo(f"\nInspect: maskbank inspect {store}    maskbank versions {store}    "
               f"maskbank show {store} <image id> --layer seeds")
    typer.echo(f"         python -c \"from maskbank.storage.store import open_stage; "
               f"print(open_stage('{location}', 'labels', '{summary.pseudo_labels}'))\"")


if __name__ == "__main__":
    app()
