"""Small references that tasks return instead of arrays: where an output is and what identifies it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Ref(BaseModel):
    model_config = ConfigDict(frozen=True)


class DatasetRef(_Ref):
    """A dataset written to the store's manifest."""

    store: str
    fingerprint: str
    name: str
    class_names: list[str]
    image_ids: list[str]
    image_keys: list[str]
    """Content key of each image (file hash): per-image outputs are stored under it, shared across datasets."""
    paths: list[str]
    exif_transpose: list[bool]
    """Whether each image is read with its EXIF orientation applied (a property of the dataset it came from)."""
    labels: list[list[int] | None]
    """Class indices of each image (no background); None for unlabelled images."""
    has_truth: list[bool]
    has_background: bool = True
    """Whether the class list has a background class; without one (scene datasets) seeding never assigns
    background to a labelled image's proposals, the bank has no background prototypes and evaluation leaves
    background out of the mean."""
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    parts: list[str] = []
    """Fingerprints of the datasets a combined collection was made of."""

    @property
    def fingerprints(self) -> list[str]:
        """The stored manifests this reference stands for."""
        return self.parts or [self.fingerprint]

    def labelled_indices(self) -> list[int]:
        return [i for i, lab in enumerate(self.labels) if lab is not None]

    def unlabelled_indices(self) -> list[int]:
        return [i for i, lab in enumerate(self.labels) if lab is None]


class ShardRef(_Ref):
    """A per-image stage's outputs for a shard of images."""

    store: str
    stage: str
    key: str
    image_keys: list[str]
    computed: list[str]
    """Image keys this task computed (the others were already complete in the store)."""
    skipped: list[tuple[str, str]] = []
    """``(image_key, reason)`` for images that could not be processed."""
    seconds: float = 0.0


class VersionRef(_Ref):
    """A published version."""

    store: str
    id: str
    kind: str
    metrics: dict | None = None
