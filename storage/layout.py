"""The store's vocabulary: stage names, version kinds, group paths, tag names and image content keys.

Every path inside a maskbank repository is built here; nothing else builds one. The hierarchy (a Zarr 3
hierarchy inside an icechunk repository; every array carries ``dimension_names``)::

    /                                 root group, attrs {"maskbank_store": 2}
    datasets/<fingerprint>            one dataset's manifest (image ids, classes, labels, sizes)
    proposals/<stage key>             the proposals of every image under that key (ragged, per proposal)
    features/<stage key>              patch features [image, y, x, channel] and saliency [image, y, x]
    pooled/<stage key>                one pooled feature per proposal (ragged, per proposal)
                                      (each of the three: attrs {"settings": what its key hashes})
    labels/<version id>               the label maps of a pseudo_labels or predictions version [image, y, x]
    versions/<version id>             a published version's arrays and attrs (kind, params, parents, ...)

A version is also an immutable tag ``<kind>.<version id>`` on the commit that published it.
"""

from __future__ import annotations

import re

STORE_FORMAT = 2
"""Format of the repositories this code reads and writes (1 was the per-item folder layout)."""

BRANCH = "main"

DATASETS = "datasets"
PROPOSALS = "proposals"
FEATURES = "features"
POOLED = "pooled"
LABELS = "labels"
VERSIONS = "versions"

IMAGE_STAGES = (PROPOSALS, FEATURES, POOLED)
"""Per-image stages: one group per stage key holding every image computed under that key."""

SETTINGS_ATTR = "settings"
"""Attr of a per-image stage's group: the settings its stage key hashes, written with the group. Proposals
and features: ``{"propose"|"embed": {parameter: value}, "checkpoint": <checkpoint id>, "code": <code
version>}``; pooled: ``{"proposals": <key>, "features": <key>, "code": <code version>}``. Groups written
before it was recorded have none."""
SETTINGS_CHECKPOINT = "checkpoint"
"""In :data:`SETTINGS_ATTR`: what pins the content of the checkpoint the stage ran (its sha256); a list where it
ran two (proposals from a detector's boxes: SAM's, then the detector's)."""
SETTINGS_CODE = "code"
"""In :data:`SETTINGS_ATTR`: the version of the code that computes the stage."""
SETTINGS_CLASSES = "classes"
"""In :data:`SETTINGS_ATTR` of proposals made from a detector's boxes: ``{"names": [...], "background": bool}``,
the class names whose positions their ``box_class`` holds (position 0, background or its placeholder, is
never asked for) and whether the pixels in no box are a region of their own (class -1)."""

PSEUDO_LABELS = "pseudo_labels"
BANK = "bank"
PREDICTIONS = "predictions"
EVALUATION = "evaluation"
SEGMENTER = "segmenter"
"""Version kind of a segmentation head trained on pseudo-labels: its weights are the version's arrays."""
VERSION_KINDS = (PSEUDO_LABELS, SEGMENTER, BANK, PREDICTIONS, EVALUATION)
LABEL_MAP_KINDS = frozenset({PSEUDO_LABELS, PREDICTIONS})
"""Version kinds whose label maps (``labels/<version id>``) belong to the version."""

_STAGE = re.compile(r"^[a-z][a-z0-9_-]*$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_ID = re.compile(r"^[0-9a-f]{16}$")


def checked_key(key: str) -> str:
    """A stage key, fingerprint or image key: one path segment of ``[A-Za-z0-9._-]``."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"key must match {_KEY.pattern}, got {key!r}")
    return key


def checked_stage(stage: str) -> str:
    if not _STAGE.match(stage):
        raise ValueError(f"stage name must match {_STAGE.pattern}, got {stage!r}")
    return stage


def checked_version_id(version_id: str) -> str:
    if not isinstance(version_id, str) or not _VERSION_ID.match(version_id):
        raise ValueError(f"not a version id: {version_id!r}")
    return version_id


def stage_group(stage: str, key: str) -> str:
    """Group of a per-image stage's outputs under one stage key (or of a version's label maps)."""
    return f"{checked_stage(stage)}/{checked_key(key)}"


def manifest_group(fingerprint: str) -> str:
    return f"{DATASETS}/{checked_key(fingerprint)}"


def version_group(version_id: str) -> str:
    return f"{VERSIONS}/{checked_version_id(version_id)}"


def labels_group(version_id: str) -> str:
    """Group of the label maps of a ``pseudo_labels`` or ``predictions`` version."""
    return f"{LABELS}/{checked_version_id(version_id)}"


def version_tag(kind: str, version_id: str, publication: int = 1) -> str:
    """The immutable tag of a published version: ``<kind>.<version id>``, and ``.<n>`` after it for the n-th
    publication of a version that was deleted before (a deleted tag's name is never reused)."""
    base = f"{checked_stage(kind)}.{checked_version_id(version_id)}"
    return base if publication == 1 else f"{base}.{publication}"


def parse_version_tag(tag: str) -> tuple[str, str] | None:
    """``(kind, version id)`` of a version tag, None for any other tag."""
    parts = tag.split(".")
    if len(parts) == 3 and parts[2].isdigit():
        parts = parts[:2]
    if len(parts) != 2 or not _STAGE.match(parts[0]) or not _VERSION_ID.match(parts[1]):
        return None
    return parts[0], parts[1]


def image_key(file_sha256: str, exif_transpose: bool, image_hw: tuple[int, int] | None = None) -> str:
    """Content key of an image: its file hash, how its pixels are oriented and, for an image over the
    working-size bound, the size it is processed at. Per-image outputs are stored under it, so the same
    photo in two datasets is processed and stored once."""
    from maskbank.storage.datasets.images import working_size

    key = file_sha256[:32] + ("" if exif_transpose else "-raw")
    if image_hw is not None and working_size(image_hw) != tuple(image_hw):
        h, w = working_size(image_hw)
        key += f"-{h}x{w}"
    return checked_key(key)
