"""An export from start to end: :func:`plan_export` checks everything that can be checked before any work
(the version, its classes, the format, the folder) and lists the images; :func:`write_export` writes them,
one image at a time, then the files of the whole export.

Labels are read as the version published them, whatever was written to the store since. An image that
cannot be exported (its file gone or changed since it was labelled, its label map damaged) is skipped with
the reason; the others are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maskbank.storage.export.files import FolderError, check_folder, claim_folder, exist, place_image
from maskbank.storage.export.options import ExportOptions
from maskbank.storage.export.registry import writers
from maskbank.storage.export.source import (
    ExportError, ExportImage, LabelReader, SkipImage, export_images, label_version, painting_nms, proposals_key,
    version_background, version_classes,
)
from maskbank.storage.store import Store
from maskbank.storage.versions import read_version
from maskbank.tasks.export import ignore_index


@dataclass(frozen=True)
class ExportPlan:
    """What one export writes: the version, its classes and images, the options and the folder.

    ``class_names`` are the exported classes, by exported value; for a class list without background
    (``background`` False) the stored placeholder 0 is not one of them, so class ``k`` of the store is
    exported as ``k - 1`` and pixels no class was painted on are ignored.
    """

    store: str
    version: str
    kind: str
    out: Path
    options: ExportOptions
    class_names: tuple[str, ...]
    images: tuple[ExportImage, ...]
    proposals: str | None = None
    """Stage key of the version's proposals, when the options need each pixel's proposal."""
    nms_iou: float | None = None
    background: bool = True

    @property
    def offset(self) -> int:
        """The store's class index of exported value 0: 0, or 1 (past the placeholder) without background."""
        return 0 if self.background else 1

    @property
    def first_class(self) -> int:
        """The first exported value that is a class: 1 past background, else 0."""
        return 1 - self.offset

    @property
    def stored_classes(self) -> int:
        """Number of classes of the stored label maps (the exported ones and, without background, the placeholder)."""
        return len(self.class_names) + self.offset

    def class_name(self, stored_index: int) -> str:
        """Name of a class by its index in the store (as image labels give it)."""
        return self.class_names[stored_index - self.offset]

    @property
    def unlabelled(self) -> str:
        """How pixels no proposal covers are exported: the option, else background where there is one."""
        return self.options.unlabelled or ("background" if self.background else "ignore")

    @property
    def split(self) -> str:
        """The split name of the export's lists and files: the option, else the version's kind."""
        return self.options.split or self.kind

    @property
    def ignore(self) -> int:
        return ignore_index(len(self.class_names))

    @property
    def record(self) -> dict:
        """What the folder records of this export (see :func:`maskbank.storage.export.files.claim_folder`)."""
        return {"format": self.options.format, "store": self.store, "version": self.version, "kind": self.kind,
                "split": self.split, "options": self.options.model_dump(), "classes": list(self.class_names),
                "background": self.background, "ignore_index": self.ignore}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: images exported, and the images skipped with the reason."""

    out: str
    format: str
    version: str
    kind: str
    split: str
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_export(st: Store, out: str | Path, version: str | None, options: ExportOptions) -> ExportPlan:
    """The export of ``version`` (an id; None: the newest ``pseudo_labels`` version) of ``st`` into the
    folder ``out``; raises :class:`ExportError` when it cannot be made. Nothing is written."""
    info = label_version(st, version)
    at = st if st.version_id == info.id else st.at_version(info.id)
    arrays = read_version(at, info.id).arrays
    classes = version_classes(at, info)
    top = int(arrays["proposal_label"].max(initial=0))
    if top >= len(classes):
        raise ExportError(f"version {info.id} labels class {top} but its class list has {len(classes)} classes")
    background = version_background(at, info)
    if not background and options.unlabelled == "background":
        raise ExportError(f"version {info.id} labels classes without a background class, so pixels no class covers "
                          "can only be exported as ignore; leave unlabelled unset or set it to ignore")
    images = export_images(at, info, {str(k) for k in arrays["image_key"]})
    out = Path(out).absolute()
    try:
        check_folder(out, options.format)
    except FolderError as e:
        raise ExportError(str(e)) from None
    writer = writers()[options.format]
    # Without background, unlabelled pixels are those labelled 0: no painting is needed to find them.
    needs_painting = (options.min_score is not None or options.instances or writer.needs_painting
                      or (background and options.unlabelled == "ignore"))
    exported = tuple(classes) if background else tuple(classes[1:])
    plan = ExportPlan(st.url, info.id, info.kind, out, options, exported, tuple(images),
                      proposals_key(at, info) if needs_painting else None, painting_nms(info), background)
    problem = writer.problem(plan)
    if problem is not None:
        raise ExportError(problem)
    return plan


def write_export(plan: ExportPlan, progress: Callable[[int], None] | None = None) -> ExportResult:
    """Write ``plan``'s export, calling ``progress(1)`` after each image.

    Into a folder that already records this very export, only what is missing is written (so a rerun
    completes a killed export); any other export of the format in the folder is replaced.
    """
    advance = progress or (lambda n: None)
    writer_class = writers()[plan.options.format]
    kept = claim_folder(plan.out, plan.record, lambda record: writer_class.owned(plan.out, record))
    writer = writer_class(plan)
    st = Store.open(plan.store, create=False, version=plan.version)
    reader = LabelReader(st, plan.version, plan.stored_classes, plan.proposals, plan.nms_iou,
                         read_version(st, plan.version).arrays, plan.background)
    unlabelled_ignore = plan.background and plan.unlabelled == "ignore"
    o = plan.options
    written, skipped = [], []
    for image in plan.images:
        labels = writer.label_files(image)
        placed = [writer.image_file(image)] if o.images != "none" else []
        if not (kept and labels and exist(labels + placed)):  # else an earlier run of this export wrote them
            try:
                exported = reader.read(image, o.min_score, unlabelled_ignore, o.instances)
            except SkipImage as e:
                skipped.append((image.image_id, str(e)))
                advance(1)
                continue
            for dest in placed:
                place_image(image.path, dest, o.images)
            writer.add(image, exported)
        written.append(image)
        advance(1)
    writer.finish(written)
    return ExportResult(str(plan.out), o.format, plan.version, plan.kind, plan.split, len(written), skipped,
                        writer.notes)
