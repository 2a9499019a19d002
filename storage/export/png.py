"""A folder of images and class-index masks: ``masks/<name>.png`` (mode L, or I;16 past 255 classes; ignore
255, or 65535), the images in ``images/`` and ``classes.txt`` (one class name per line, line = index,
background first): the layout the masks dataset reader reads. The class names and the ignore value are
also in the folder's ``maskbank-export.json`` (a second class list file beside ``classes.txt`` would make
the folder ambiguous to that reader)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from maskbank.storage.export.files import write_png, write_text
from maskbank.storage.export.registry import FormatWriter, register

MASKS_DIR = "masks"
IMAGES_DIR = "images"
CLASSES_FILE = "classes.txt"


@register
class PngWriter(FormatWriter):
    name = "png"

    @classmethod
    def problem(cls, plan) -> str | None:
        if len(plan.class_names) > 65535:
            return f"16-bit PNGs hold at most 65535 classes, the version has {len(plan.class_names)}"
        return None

    @classmethod
    def owned(cls, out: Path, record: Mapping) -> list[Path]:
        return [out / MASKS_DIR, out / IMAGES_DIR, out / CLASSES_FILE]

    def image_file(self, image) -> Path:
        return self.out / IMAGES_DIR / (image.name + image.path.suffix)

    def label_files(self, image) -> list[Path]:
        return [self.out / MASKS_DIR / f"{image.name}.png"]

    def add(self, image, exported) -> None:
        write_png(self.label_files(image)[0], exported.labels)

    def finish(self, images) -> None:
        write_text(self.out / CLASSES_FILE, "".join(f"{c}\n" for c in self.plan.class_names))
