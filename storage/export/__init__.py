"""Label versions handed out of the store as files other tools read: PASCAL VOC, COCO or class-index PNGs.

An exported mask lines up pixel for pixel with the image file it names: label maps stored at a reduced
working size are scaled up to the image's full size (nearest neighbour), and those of datasets that apply
EXIF orientation (folder datasets) are turned back to the orientation the file stores its pixels in.

    plan = plan_export(store, "exports/seeds", None, ExportOptions(format="voc"))   # checks, writes nothing
    result = write_export(plan, progress)                                           # one image at a time

One module per format (:mod:`~maskbank.storage.export.registry`); files are written atomically
(:mod:`~maskbank.storage.export.files`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from maskbank.storage.export.options import ExportOptions
from maskbank.storage.export.registry import format_names

if TYPE_CHECKING:
    from maskbank.storage.export.plan import ExportPlan, ExportResult, plan_export, write_export
    from maskbank.storage.export.source import ExportError

__all__ = ["ExportError", "ExportOptions", "ExportPlan", "ExportResult", "format_names", "plan_export", "write_export"]

_LAZY = {"ExportPlan": "plan", "ExportResult": "plan", "plan_export": "plan", "write_export": "plan",
         "ExportError": "source"}
"""Names imported from their module when first asked for: those modules import the store (xarray, icechunk:
about a second), and every command of the command line imports this package for the export options."""


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
