"""A static page to review labels in a browser, offline: ``index.html`` with one card per image (photo, label
overlay, pixel truth when the dataset has it, legend, the image's labels, mean confidence, disagreement with
the truth), sortable and filterable by class, a page of cards at a time.

Files: ``index.html`` (the page; no network), ``gallery.js`` (the cards' data, read by the page),
``thumbs/``, ``overlays/`` and ``truth/`` (JPEG thumbnails, in the pixel orientation the image file stores,
as the other formats' masks are), ``cards/<name>.json`` (each image's card, so a rerun only adds what is
missing) and the images in ``images/``. Confidence is the mean score of the proposals that painted the
labels over their pixels; disagreement is the share of the pixels labelled in both the export and the truth
where they differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

from maskbank.storage.datasets import Dataset, DatasetError, ImageError, load_rgb, reopen_dataset
from maskbank.storage.export.files import write_atomic, write_json, write_text
from maskbank.storage.export.registry import FormatWriter, register
from maskbank.storage.store import Store
from maskbank.tasks.gallery import class_shares, colour_values, disagreement, truth_as_exported
from maskbank.tasks.thumbnails import JPEG_QUALITY
from maskbank.tasks.render import THUMBNAIL_SIDE, label_palette, overlay_labels, thumbnail, thumbnail_size

PAGE = "index.html"
DATA = "gallery.js"
THUMBS_DIR, OVERLAYS_DIR, TRUTH_DIR, CARDS_DIR, IMAGES_DIR = "thumbs", "overlays", "truth", "cards", "images"
DATA_VARIABLE = "MASKBANK_GALLERY"
"""The global the page reads the cards from (``gallery.js`` sets it; a script, so no server is needed)."""


@register
class GalleryWriter(FormatWriter):
    name = "html"
    needs_painting = True

    def __init__(self, plan) -> None:
        super().__init__(plan)
        self.truth: dict[str, Dataset | None] = {}
        self._store: Store | None = None

    @classmethod
    def owned(cls, out: Path, record: Mapping) -> list[Path]:
        return [out / PAGE, out / DATA, *(out / d for d in (THUMBS_DIR, OVERLAYS_DIR, TRUTH_DIR, CARDS_DIR, IMAGES_DIR))]

    def image_file(self, image) -> Path:
        return self.out / IMAGES_DIR / (image.name + image.path.suffix)

    def label_files(self, image) -> list[Path]:
        # The card is written last: where it is, so are the thumbnails.
        return [self.out / d / f"{image.name}.jpg" for d in (THUMBS_DIR, OVERLAYS_DIR)] + [self._card(image)]

    def _card(self, image) -> Path:
        return self.out / CARDS_DIR / f"{image.name}.json"

    def add(self, image, exported) -> None:
        labels, ignore = exported.labels, self.plan.ignore
        try:
            photo = thumbnail(load_rgb(image.path, exif_transpose=False, max_pixels=THUMBNAIL_SIDE**2))
        except ImageError as e:
            self.notes.append(f"{image.image_id}: no thumbnail ({e})")
            photo = np.full((*thumbnail_size(labels.shape, THUMBNAIL_SIDE), 3), 128, np.uint8)
        self._jpeg(THUMBS_DIR, image, photo)
        self._jpeg(OVERLAYS_DIR, image, overlay_labels(photo, colour_values(labels, ignore, self.plan.background),
                                                       unlabelled=0))
        card = {
            "name": image.name,
            "id": image.image_id,
            "ext": image.path.suffix,
            "labels": None if image.labels is None else [self.plan.class_name(k) for k in image.labels],
            "classes": [[v, round(share, 4)] for v, share in class_shares(labels, ignore)
                        if v >= self.plan.first_class],
            "confidence": None if exported.confidence is None else round(exported.confidence, 4),
            "disagreement": None,
            "truth": False,
            "size": [int(labels.shape[0]), int(labels.shape[1])],
        }
        truth = self._truth(image, labels.shape)
        if truth is not None:
            t, t_ignore = truth
            n = len(self.plan.class_names)
            card["disagreement"] = _rounded(disagreement(labels, truth_as_exported(t, t_ignore, self.plan.background,
                                                                                  ignore, n), ignore))
            self._jpeg(TRUTH_DIR, image, overlay_labels(photo, t, ignore_index=t_ignore, unlabelled=0))
            card["truth"] = True
        write_json(self._card(image), card)

    def _jpeg(self, folder: str, image, rgb: np.ndarray) -> None:
        write_atomic(self.out / folder / f"{image.name}.jpg",
                     lambda tmp: Image.fromarray(rgb).save(tmp, format="JPEG", quality=JPEG_QUALITY))

    def _truth(self, image, shape: tuple[int, int]) -> tuple[np.ndarray, int] | None:
        """The image's pixel truth and its ignore value, None when its dataset has none for it (a dataset
        that cannot be read again, or truth of another size, is noted)."""
        if not image.has_truth:
            return None
        if image.dataset not in self.truth:
            self.truth[image.dataset] = self._reopen(image)
        dataset = self.truth[image.dataset]
        if dataset is None or image.image_id not in dataset:
            return None
        try:
            t = dataset.truth(image.image_id)
        except (LookupError, DatasetError, ImageError) as e:
            self.notes.append(f"{image.image_id}: truth not shown ({e})")
            return None
        if t.shape != tuple(shape):
            self.notes.append(f"{image.image_id}: truth not shown (it is {t.shape[0]}x{t.shape[1]}, the image "
                              f"{shape[0]}x{shape[1]})")
            return None
        return t, dataset.ignore_index

    def _reopen(self, image) -> Dataset | None:
        if self._store is None:
            self._store = Store.open(self.plan.store, create=False, version=self.plan.version)
        m = self._store.read_manifest(image.dataset)
        try:
            return reopen_dataset(m.spec, m.root, m.name, m.class_names)
        except (DatasetError, ImageError) as e:
            self.notes.append(f"dataset {m.name!r}: truth not shown, it cannot be read again ({e})")
            return None

    def finish(self, images) -> None:
        p = self.plan
        palette = label_palette(p.stored_classes)  # colours follow the store's class indices
        cards = []
        for image in images:
            try:
                cards.append(json.loads(self._card(image).read_text(encoding="utf-8")))
            except (OSError, ValueError):
                self.notes.append(f"{image.image_id}: its card cannot be read; rerun the export")
        data = {
            "version": p.version, "kind": p.kind, "store": p.store, "split": p.split,
            "images_linked": p.options.images != "none",
            "classes": [{"value": v, "name": name, "color": "#%02x%02x%02x" % tuple(int(c) for c in palette[v + p.offset])}
                        for v, name in enumerate(p.class_names) if v >= p.first_class],
            "background": p.background,
            "notes": list(self.notes),
            "cards": cards,
        }
        payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        write_text(self.out / DATA, f"window.{DATA_VARIABLE} = {payload};\n")
        write_text(self.out / PAGE, files(__package__).joinpath("gallery.html").read_text(encoding="utf-8"))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
