"""The PASCAL VOC segmentation layout: ``SegmentationClass/<name>.png`` palette PNGs with the VOC colour map
(0 background, 255 ignore), ``ImageSets/Segmentation/<split>.txt`` listing the images, ``classes.txt``
(one class name per line, line = index, background first) and the images in ``JPEGImages/``.

Palette PNGs hold at most 256 values, so up to 255 classes; VOC lists plain file names, so images in
subfolders need another format. The images keep their own file type (maskbank's VOC reader reads any).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from maskbank.storage.export.files import write_png, write_text
from maskbank.storage.export.registry import FormatWriter, register
from maskbank.tasks.render import label_palette

LABELS_DIR = "SegmentationClass"
LISTS_DIR = Path("ImageSets") / "Segmentation"
IMAGES_DIR = "JPEGImages"
CLASSES_FILE = "classes.txt"


@register
class VocWriter(FormatWriter):
    name = "voc"

    @classmethod
    def problem(cls, plan) -> str | None:
        if len(plan.class_names) > 255:
            return f"voc palette PNGs hold at most 255 classes, the version has {len(plan.class_names)}; use --format png"
        nested = [i.image_id for i in plan.images if "/" in i.name]
        if nested:
            return f"voc lists plain file names, but image {nested[0]!r} is in a subfolder; use --format png or coco"
        return None

    @classmethod
    def owned(cls, out: Path, record: Mapping) -> list[Path]:
        return [out / LABELS_DIR, out / LISTS_DIR / f"{record['split']}.txt", out / IMAGES_DIR, out / CLASSES_FILE]

    def image_file(self, image) -> Path:
        return self.out / IMAGES_DIR / (image.name + image.path.suffix)

    def label_files(self, image) -> list[Path]:
        return [self.out / LABELS_DIR / f"{image.name}.png"]

    def add(self, image, exported) -> None:
        write_png(self.label_files(image)[0], exported.labels, palette=label_palette(256))

    def finish(self, images) -> None:
        write_text(self.out / LISTS_DIR / f"{self.plan.split}.txt", "".join(f"{i.name}\n" for i in images))
        write_text(self.out / CLASSES_FILE, "".join(f"{c}\n" for c in self.plan.class_names))
