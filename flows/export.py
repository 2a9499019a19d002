"""Hand a label version out of the store as VOC, COCO or class-index PNG files, or as a page to review
(``maskbank export`` as a flow).

Run it after a labelling run, from the UI: by default it exports the store's newest ``pseudo_labels``
version. The export checks everything before any work, shows its progress per image, and a rerun into the
same folder completes a killed one (see :mod:`maskbank.storage.export`).
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maskbank.flows.credentials import load_credentials
from maskbank.flows.progress import StageProgress
from maskbank.storage.export import ExportOptions, ExportPlan, ExportResult, plan_export, write_export
from maskbank.storage.store import Store


@task(name="plan-export", cache_policy=NO_CACHE, persist_result=False)
def plan(store: str, out: str, version: str | None, options: ExportOptions) -> ExportPlan:
    """Check the export and list its images; writes nothing."""
    return plan_export(Store.open(store, create=False), out, version, options)


@task(name="write-export", cache_policy=NO_CACHE, persist_result=False)
def write(export: ExportPlan) -> ExportResult:
    """Write every image's labels, then the export's lists and class files."""
    with StageProgress("export", len(export.images), what="images exported") as progress:
        return write_export(export, progress.advance)


@flow(name="maskbank-export", log_prints=True)
def export_labels(store: str, out: str, options: ExportOptions, version: str | None = None,
                  credentials: str | None = None) -> dict:
    """Export the label maps of a ``pseudo_labels`` or ``predictions`` version into the folder ``out``.

    Masks are at each image's full size and in its file's stored pixel orientation (EXIF orientation,
    which folder datasets apply, is undone), so each lines up with the image file it names.

    Args:
        store: path or URL of the maskbank store that holds the version.
        out: folder to write (created if missing; an empty folder, or one holding an export of the same
            format, which is completed when it is this export and replaced otherwise).
        options: format (voc, coco, png, html), split name, images (link, copy, none), min_score, unlabelled,
            instances.
        version: id of a pseudo_labels or predictions version; unset: the newest pseudo_labels version.
        credentials: name of a Prefect Secret block holding the environment variables that reach an
            object-storage store (see ``maskbank.flows.credentials``).

    Returns:
        What was written: the folder, format, version, split, images exported and images skipped.
    """
    load_credentials(credentials)
    export = plan(store, out, version, options)
    logger = get_run_logger()
    logger.info("exporting %d images of %s version %s as %s into %s", len(export.images), export.kind,
                export.version, options.format, export.out)
    result = write(export)
    for image_id, why in result.skipped:
        logger.warning("skipped %s: %s", image_id, why)
    for note in result.notes:
        logger.warning("%s", note)
    logger.info("exported %d images into %s", result.images, result.out)
    return asdict(result)
