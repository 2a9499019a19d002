"""Per-image label maps of a version (pseudo-labels, predictions), stored as ``labels/<version>/<image>``."""

from __future__ import annotations

import numpy as np

from maskbank.storage.store import Store

LABELS = "labels"


def write_label_map(store: Store, version_id: str, image_key: str, label_map: np.ndarray, image_id: str) -> None:
    store.write_image_item(LABELS, version_id, image_key, {"labels": label_map}, {"source_image_id": image_id},
                           {"labels": ("y", "x")})


def read_label_map(store: Store, version_id: str, image_key: str) -> np.ndarray:
    return store.read_image_item(LABELS, version_id, image_key).arrays["labels"]


def label_maps_complete(store: Store, version_id: str, image_keys: list[str]) -> bool:
    return not store.missing(LABELS, version_id, image_keys)
