"""What an export writes: the format, the split name, where images come from, and which pixels are ignored.

The one place the export's defaults are defined; ``maskbank export`` and the ``maskbank-export`` flow take
theirs from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPLIT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ExportOptions(BaseModel):
    """How a label version is exported (see ``maskbank export --help``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = Field(description="voc (palette PNGs, split list, classes.txt), coco (instances json with RLE masks), png (class-index PNGs, classes.txt) or html (a page to review the labels in a browser).")
    split: str | None = Field(None, pattern=SPLIT_PATTERN, description="Split name of the export's lists and files (VOC ImageSets, COCO instances_<split>.json and image folder); unset: the version's kind.")
    images: Literal["link", "copy", "none"] = Field("link", description="Images beside the labels: symbolic links to the dataset's files (a copy where links cannot be made), copies, or none.")
    min_score: float | None = Field(None, allow_inf_nan=False, description="Pixels whose painting proposal scored below this are written as ignore (255; 65535 past 255 classes); unset: none.")
    unlabelled: Literal["background", "ignore"] | None = Field(None, description="Pixels no proposal covers: background (0) or ignore; unset: background where the classes have one, else ignore (the only choice there).")
    instances: bool = Field(False, description="coco: one annotation per painted proposal (its visible pixels) with its score, instead of one per image and class.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from maskbank.storage.export.registry import format_names

        if value not in format_names():
            raise ValueError(f"unknown export format {value!r}; formats are {', '.join(format_names())}")
        return value

    @model_validator(mode="after")
    def _instances_are_coco(self) -> ExportOptions:
        if self.instances and self.format != "coco":
            raise ValueError("instances are annotations of the coco format; use it with format coco")
        return self


def default(field: str) -> object:
    """The default of an option, for the command line's and the flow's signatures."""
    return ExportOptions.model_fields[field].default
