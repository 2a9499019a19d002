"""The ``maskbank`` command line: a thin layer over the flows and the store."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from maskbank.commands import inspect as inspect_commands
from maskbank.commands import server as server_commands
from maskbank.commands import versions as versions_commands
from maskbank.commands.weights import weights_app

# A local run's temporary Prefect server has no business phoning home (and offline it logs an error trying).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(help="maskbank: pixel-level labels from image-level labels, without training.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
inspect_commands.register(app)
server_commands.register(app)
versions_commands.register(app)


def sample_root() -> Path:
    """The bundled sample: redistributable COCO images with their annotations (see its ATTRIBUTION.md)."""
    return Path(str(resources.files("maskbank") / "sample" / "coco"))


def _params(params_file: Optional[Path], overrides: dict) -> "RunParams":
    from maskbank.flows.params import RunParams

    base = json.loads(params_file.read_text()) if params_file else {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = base
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return RunParams.model_validate(base)


def _dataset(path: str, split: Optional[str]) -> "DatasetInput":
    from maskbank.flows.stages.ingest import DatasetInput

    return DatasetInput(path=path, split=split)


def _print_summary(summary) -> None:
    typer.echo(f"store:          {summary.store}")
    typer.echo(f"pseudo-labels:  version {summary.pseudo_labels}  (labels/{summary.pseudo_labels}/<image>)")
    typer.echo(f"prototype bank: version {summary.bank}")
    if summary.predictions:
        typer.echo(f"retrieval:      version {summary.predictions}  (labels/{summary.predictions}/<image>)")
    for name, m in (("pseudo-labels", summary.pseudo_label_metrics), ("retrieval", summary.prediction_metrics)):
        if m:
            line = f"{name} mIoU: {m['classes']['miou']:.4f} ({m['classes']['classes_present']} classes present)"
            if "voc21" in m:
                line += f", VOC-21 mIoU: {m['voc21']['miou']:.4f}"
            typer.echo(f"{line} over {m['images']} images")
    typer.echo(f"computed: {summary.computed}")
    for key, why in summary.skipped:
        typer.echo(f"skipped {key}: {why}", err=True)


@app.command()
def run(
    store: Path = typer.Option(..., help="Zarr store path (created if missing)."),
    bank: list[str] = typer.Option(..., help="Labelled dataset (repeatable): COCO root or instances json, VOC root, folder or labels file."),
    bank_split: Optional[str] = typer.Option(None, help="Split of the labelled datasets (COCO train2017, VOC train)."),
    target: list[str] = typer.Option([], help="Images to label by retrieval (repeatable)."),
    target_split: Optional[str] = typer.Option(None, help="Split of the target datasets."),
    params_file: Optional[Path] = typer.Option(None, "--params", help="JSON file of run parameters (see flows/params.py)."),
    points_per_side: Optional[int] = typer.Option(None, help="SAM point prompts per side."),
    input_size: Optional[int] = typer.Option(None, help="SAM encoder input size (512 or 1024)."),
    rule: Optional[str] = typer.Option(None, help="Retrieval rule: class_balanced, majority, knn_weighted."),
    k: Optional[int] = typer.Option(None, help="k of the majority / knn_weighted rules."),
    shard_size: Optional[int] = typer.Option(None, help="Images per cached task."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    verify: bool = typer.Option(False, help="Check every stored output used against its content hash; recompute damaged ones."),
) -> None:
    """Pseudo-label the labelled datasets and label the targets by retrieval (runs the flow locally)."""
    from maskbank.flows.label import label_images
    from maskbank.storage.datasets import DatasetError
    from maskbank.flows.stages.common import DamagedStoreError
    from maskbank.storage.store import NotAStoreError

    params = _params(params_file, {"propose.points_per_side": points_per_side, "propose.input_size": input_size,
                                   "retrieve.rule": rule, "retrieve.k": k, "shard_size": shard_size})
    try:
        summary = label_images(
            datasets=[_dataset(p, bank_split) for p in bank], store=str(store),
            targets=[_dataset(p, target_split) for p in target] or None, params=params, device=device,
            verify=verify,
        )
    except (DatasetError, NotAStoreError, DamagedStoreError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    _print_summary(summary)


@app.command()
def demo(
    store: Path = typer.Option(Path("maskbank-demo.zarr"), help="Zarr store path."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
) -> None:
    """Run the whole flow on the bundled sample with the default models and print the mIoU."""
    from maskbank.flows.label import label_images
    from maskbank.flows.params import RunParams

    root = sample_root()
    summary = label_images(
        datasets=[_dataset(str(root), "train2017")], store=str(store),
        targets=[_dataset(str(root), "val2017")], params=RunParams(), device=device,
    )
    _print_summary(summary)
    typer.echo(f"\nInspect: python -c \"import xarray; print(xarray.open_zarr('{store}', "
               f"group='labels/{summary.pseudo_labels}/<image key>'))\"")
    typer.echo(f"        maskbank inspect {store}    maskbank versions {store}    "
               f"maskbank show {store} <image id> --layer seeds")


if __name__ == "__main__":
    app()
