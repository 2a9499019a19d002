"""``maskbank export``: write a label version as PASCAL VOC, COCO or class-index PNG files, or as a page.

Everything that can be wrong (the store, the version, the options, the output folder) is a one-line
``error: ...`` and exit code 2 before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from maskbank.commands.helptext import PlainCommand
from maskbank.commands.stores import StoreArg, fail, open_store
from maskbank.storage.export.options import ExportOptions, default

EXPORT_HELP = """Write a label version as PASCAL VOC, COCO or class-index PNG files, or as a page to review.

The version is a pseudo_labels version (the labels of the labelled images) or a predictions version (the
labels of the images to label); default: the store's newest pseudo_labels version. Files go into --out:

\b
voc:  SegmentationClass/<id>.png (VOC colour map), ImageSets/Segmentation/<split>.txt, classes.txt, JPEGImages/
coco: annotations/instances_<split>.json (RLE masks; a COCO dataset keeps its image and category ids), <split>/
png:  masks/<id>.png (class indices, 16-bit past 255 classes), classes.txt, images/
html: index.html, a page to review the labels offline: photo, overlay, truth, legend, confidence; sortable

Masks are at each image's full size (label maps of images over the working-size bound are scaled up,
nearest neighbour) and in the pixel orientation its file stores: the EXIF orientation that folder datasets
apply is undone (COCO and VOC never apply it), so each mask lines up with the image file it names. Ignored
pixels are 255 (65535 past 255 classes). --out is created if missing; a folder holding an export of the
same format is completed when it is the same export (a rerun finishes a killed one) and replaced otherwise;
any other non-empty folder is refused.

\b
Example:
  # the pseudo-labels of the labelled images, as a PASCAL VOC folder
  maskbank export photos-store --format voc --out voc/
  # the labels of the images to label (a predictions version: maskbank versions photos-store), as COCO
  maskbank export photos-store 3f2a --format coco --out coco/ --instances --min-score 0.2
  # a page to review them in a browser
  maskbank export photos-store 3f2a --format html --out review/"""


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""
    app.command("export", help=EXPORT_HELP, cls=PlainCommand)(export)


def export(
    store: StoreArg,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="voc, coco, png or html.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", metavar="FOLDER", help="Folder to write.", show_default=False)],
    version: Annotated[Optional[str], typer.Argument(help="pseudo_labels or predictions version (id or unique prefix); default: the newest pseudo_labels version.", metavar="VERSION", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option(metavar="SPLIT", help="Split name of the lists and files (VOC ImageSets, COCO json and image folder); default: the version's kind.", show_default=False)] = default("split"),
    images: Annotated[str, typer.Option(metavar="MODE", help="Images beside the labels: link (symbolic links, copies where links cannot be made), copy or none.")] = default("images"),
    min_score: Annotated[Optional[float], typer.Option(metavar="SCORE", help="Write pixels whose painting proposal scored below this as ignore.", show_default=False)] = default("min_score"),
    unlabelled: Annotated[Optional[str], typer.Option(metavar="MODE", help="Pixels no proposal covers: background or ignore; default: background where the classes have one, else ignore.", show_default=False)] = default("unlabelled"),
    instances: Annotated[bool, typer.Option("--instances", help="coco: one annotation per painted proposal (its visible pixels) with its score.")] = default("instances"),
) -> None:
    from maskbank.commands.lookup import LABEL_KINDS, NotInStoreError, resolve_version
    from maskbank.flows.progress import StageProgress
    from maskbank.storage.export import ExportError, plan_export, write_export

    options = _options(format=fmt, split=split, images=images, min_score=min_score, unlabelled=unlabelled,
                       instances=instances)
    st = open_store(store)
    try:
        vid = None if version is None else resolve_version(st, version, LABEL_KINDS).id
        plan = plan_export(st, out, vid, options)
    except (NotInStoreError, ExportError) as e:
        fail(str(e))
    with StageProgress("export", len(plan.images), what="images exported") as progress:
        result = write_export(plan, progress.advance)
    typer.echo(f"exported {result.images} images of {result.kind} version {result.version} as {result.format} "
               f"(split {result.split}) into {result.out}")
    for image_id, why in result.skipped:
        typer.echo(f"skipped {image_id}: {why}", err=True)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)


def _options(**given) -> ExportOptions:
    """The options, or a one-line error naming the first that is wrong."""
    from pydantic import ValidationError

    try:
        return ExportOptions(**given)
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        fail(f"--{str(first['loc'][0]).replace('_', '-')}: {message}" if first["loc"] else message)
