"""Export formats by name: one :class:`FormatWriter` per format, each in its own module of this package,
which registers it with :func:`register`. A new format is one new module."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from maskbank.storage.export.plan import ExportPlan
    from maskbank.storage.export.source import ExportedImage, ExportImage

_WRITERS: dict[str, type[FormatWriter]] = {}


class FormatWriter:
    """Writes one export in one format into the plan's folder: ``add`` each image, then ``finish``.

    A subclass names its format, says where each image's files go (:meth:`image_file`, :meth:`label_files`),
    which paths of a folder belong to an export of its format (:meth:`owned`), and may refuse a plan
    before any work (:meth:`problem`).
    """

    name: ClassVar[str]
    needs_painting: ClassVar[bool] = False
    """Whether the format needs each pixel's painting proposal (e.g. to show the labels' confidence)."""

    def __init__(self, plan: ExportPlan) -> None:
        self.plan = plan
        self.out = Path(plan.out)
        self.notes: list[str] = []
        """What the user should know about the export written (e.g. what a page could not show)."""

    @classmethod
    def problem(cls, plan: ExportPlan) -> str | None:
        """Why ``plan`` cannot be written in this format (None when it can)."""
        return None

    @classmethod
    def owned(cls, out: Path, record: Mapping) -> list[Path]:
        """The files and folders under ``out`` that the export ``record`` (its folder record) wrote."""
        raise NotImplementedError

    def image_file(self, image: ExportImage) -> Path:
        """Where the image file itself goes (linked or copied)."""
        raise NotImplementedError

    def label_files(self, image: ExportImage) -> list[Path]:
        """The files holding the image's labels, written by :meth:`add`; none when the labels go into a file
        of the whole export (then every image is labelled again by a rerun)."""
        return []

    def add(self, image: ExportImage, exported: ExportedImage) -> None:
        """Write (or keep, for :meth:`finish`) one image's exported labels."""
        raise NotImplementedError

    def finish(self, images: list[ExportImage]) -> None:
        """Write the files of the whole export (lists, class names, indexes) over ``images``, those exported."""
        raise NotImplementedError


def register(writer: type[FormatWriter]) -> type[FormatWriter]:
    """Class decorator: make ``writer`` the writer of its format."""
    _WRITERS[writer.name] = writer
    return writer


def writers() -> dict[str, type[FormatWriter]]:
    """Every format's writer by name (the modules of this package are imported, so each registers its own)."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")
    return dict(sorted(_WRITERS.items()))


def format_names() -> list[str]:
    return list(writers())
