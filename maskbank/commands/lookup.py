"""Finding things in a store by the names people use: a dataset image id, a version id prefix, the stage
key that holds an image, and the pixel truth of the dataset an image came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskbank.storage.datasets import Dataset, DatasetError, ImageError, ImageRecord, reopen_dataset
from maskbank.storage.layout import FEATURES, IMAGE_STAGES, LABEL_MAP_KINDS, LABELS, POOLED, PROPOSALS
from maskbank.storage.store import Manifest, Store
from maskbank.storage.versions import VersionInfo, list_versions

LABEL_KINDS = tuple(sorted(LABEL_MAP_KINDS))
# Version params that name the stage key a version was computed from, per stage.
STAGE_PARAMS = {PROPOSALS: "proposals", POOLED: "pooled", FEATURES: "features"}


class NotInStoreError(LookupError):
    """What was asked for is not in the store (the message says what is)."""


@dataclass(frozen=True)
class ImageRef:
    """A dataset image and the content key its per-image outputs are stored under."""

    key: str
    record: ImageRecord
    manifest: Manifest

    @property
    def image_id(self) -> str:
        return self.record.image_id

    @property
    def path(self) -> Path:
        return self.record.path


def image_keys(store: Store, fingerprint: str) -> list[str]:
    """Content keys of a recorded dataset's images, in the manifest's order."""
    return list(store.read_attrs(store.manifest_path(fingerprint))["image_keys"])


def find_image(store: Store, image_id: str) -> ImageRef:
    """The image ``image_id`` of a dataset recorded in ``store``; when datasets list it with different
    files, the first whose content key has outputs in the store."""
    refs: dict[str, ImageRef] = {}
    for fp in store.list_manifests():
        manifest = store.read_manifest(fp)
        for rec, key in zip(manifest.records, image_keys(store, fp), strict=True):
            if rec.image_id == image_id:
                refs.setdefault(key, ImageRef(key, rec, manifest))
    if not refs:
        raise NotInStoreError(f"no dataset in {store.url} lists an image {image_id!r}")
    with_outputs = [r for r in refs.values() if any(keys_holding(store, s, r.key) for s in (*IMAGE_STAGES, LABELS))]
    return (with_outputs or list(refs.values()))[0]


def keys_holding(store: Store, stage: str, image_key: str) -> list[str]:
    """The keys of ``stage`` with an output for ``image_key``."""
    return [k for k in store.list_keys(stage) if store.has_item(stage, k, image_key)]


def resolve_version(store: Store, ref: str, kinds: tuple[str, ...] | None = None) -> VersionInfo:
    """The version whose id is ``ref`` or starts with it (of one of ``kinds``)."""
    matches = [v for v in list_versions(store) if v.id.startswith(ref)]
    if len(matches) != 1:
        known = ", ".join(f"{v.id} ({v.kind})" for v in list_versions(store)) or "none"
        what = "no version" if not matches else f"{len(matches)} versions"
        raise NotInStoreError(f"{what} matching {ref!r} in {store.url}; versions: {known}")
    v = matches[0]
    if kinds is not None and v.kind not in kinds:
        raise NotInStoreError(f"version {v.id} is a {v.kind} version; expected {' or '.join(kinds)}")
    return v


def as_published(store: Store, version: VersionInfo) -> Store:
    """``store`` read-only as of the commit that published ``version``: what the version shows, whatever
    was written since."""
    return store if store.version_id == version.id else store.at_version(version.id)


def latest_labels_version(store: Store, kind: str, image: ImageRef) -> VersionInfo:
    """The newest ``kind`` version with a label map of ``image``."""
    found = [v for v in list_versions(store, kind) if as_published(store, v).has_item(LABELS, v.id, image.key)]
    if not found:
        raise NotInStoreError(
            f"no {kind} version in {store.url} holds a label map of image {image.image_id!r} (key {image.key})"
        )
    return found[-1]


def stage_key(store: Store, stage: str, image_key: str, key: str | None = None,
              having: Callable[[str], bool] | None = None, what: str | None = None) -> str:
    """The ``stage`` key holding ``image_key``'s output: ``key`` (a key or a unique prefix) when given, else
    the only one, else the one named by the newest version that used one. With ``having``, only keys for
    which it is true count (``what`` names them in messages, e.g. "features keys with saliency")."""
    keys = [k for k in store.list_keys(stage) if having is None or having(k)]
    what = what or f"{stage} keys"
    holding = [k for k in keys if store.has_item(stage, k, image_key)]
    if key is not None:
        matches = [k for k in keys if k.startswith(key)]
        if len(matches) != 1:
            raise NotInStoreError(f"{len(matches)} {what} match {key!r}; keys: {keys}")
        if matches[0] not in holding:
            raise NotInStoreError(f"{stage}/{matches[0]} has no output for image key {image_key}")
        return matches[0]
    if len(holding) == 1:
        return holding[0]
    if not holding:
        raise NotInStoreError(f"no {what} hold image key {image_key} in {store.url}")
    param = STAGE_PARAMS.get(stage)
    for v in reversed(list_versions(store)):
        if v.params.get(param) in holding:
            return v.params[param]
    raise NotInStoreError(f"several {what} hold image key {image_key}: {holding}; choose one with --key")


def class_names_of(store: Store, version: VersionInfo, fallback: Manifest) -> list[str]:
    """Class names of a version's datasets (they share one class list), else ``fallback``'s."""
    for fp in version.datasets:
        if fp in store.list_manifests():
            return store.read_manifest(fp).class_names
    return fallback.class_names


def open_truth(ref: ImageRef) -> tuple[np.ndarray, int]:
    """``(truth [H, W], ignore index)`` of the image, from its dataset reopened at the manifest's root."""
    m = ref.manifest
    if not ref.record.has_truth:
        raise NotInStoreError(f"image {ref.image_id!r} of dataset {m.name!r} has no pixel truth")
    dataset = _reopen(m)
    if ref.image_id not in dataset:
        raise NotInStoreError(f"dataset {m.name!r} at {m.root} no longer lists image {ref.image_id!r}")
    return dataset.truth(ref.image_id), dataset.ignore_index


def _reopen(m: Manifest) -> Dataset:
    """The manifest's dataset read again (see :func:`reopen_dataset`)."""
    try:
        return reopen_dataset(m.spec, m.root, m.name, m.class_names)
    except (DatasetError, ImageError) as e:
        raise NotInStoreError(f"cannot reopen dataset {m.name!r} at {m.root} for its truth: {e}") from e
