"""A store's datasets, versions and stage keys described in words: a dataset's name, image counts and
classes; a version's datasets, the settings it was computed with, the stage keys it was computed from and,
for a bank, its prototypes per class; the settings a per-image stage key (proposals, features, pooled)
stands for. ``maskbank versions`` and ``maskbank inspect`` print these lines beside the ids.

The settings of a version are the parameters it records; those of a stage key are what the key hashes, as
its group records them (stores written before they were recorded have none: the versions that name the key
are then how it is traced).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from maskbank.storage.layout import (
    BANK, EVALUATION, FEATURES, POOLED, PREDICTIONS, PROPOSALS, PSEUDO_LABELS, SEGMENTER, SETTINGS_CHECKPOINT, SETTINGS_CODE,
)
from maskbank.storage.store import MissingItemError, Store
from maskbank.storage.versions import VersionInfo

SHOWN = 10
"""Names a list shows before "and N more"."""

STAGE_KEY_PARAMS = ("proposals", "features", "pooled")
"""Version parameters that name the stage key the version was computed from."""

HIDDEN_PARAMS = ("images",)
"""Version parameters that are bookkeeping (a hash of the images covered), not settings."""

STAGE_STEP = {PROPOSALS: "propose", FEATURES: "embed", POOLED: "pool"}
"""The step of the run that computes each per-image stage (as ``maskbank run`` reports it)."""

DATASET_ROLE = {PSEUDO_LABELS: "labelled images", SEGMENTER: "labelled images", BANK: "labelled images", PREDICTIONS: "images to label",
                EVALUATION: "scored on"}
"""What a version's datasets are to it, in the words of ``maskbank run``."""


def listed(names: Sequence[str], shown: int = SHOWN) -> str:
    """``a, b, c`` with at most ``shown`` names, then ``and N more``."""
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


@dataclass(frozen=True)
class DatasetSummary:
    """A dataset as its manifest in the store records it."""

    fingerprint: str
    name: str
    images: int
    labelled: int
    with_truth: int
    class_names: tuple[str, ...]

    def counts(self) -> str:
        """``'name': 6 images (6 labelled, 2 with truth)``."""
        return (f"{self.name!r}: {self.images} images ({self.labelled} labelled, {self.with_truth} with truth)")


def classes_line(names: Sequence[str]) -> str:
    """``81 classes: background, person, ... and 71 more``."""
    return f"{len(names)} classes: {listed(list(names))}" if names else "no classes"


class Datasets:
    """The dataset manifests of a store, each read once (they are large: a list per image)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._read: dict[str, DatasetSummary | None] = {}

    def get(self, fingerprint: str) -> DatasetSummary | None:
        """The dataset ``fingerprint``, None when the store holds no manifest of it."""
        if fingerprint not in self._read:
            try:
                a = self.store.read_attrs(self.store.manifest_path(fingerprint))
            except MissingItemError:  # no manifest of it at this commit
                self._read[fingerprint] = None
            else:
                self._read[fingerprint] = DatasetSummary(
                    fingerprint, a["name"], len(a["image_ids"]), sum(lab is not None for lab in a["labels"]),
                    sum(bool(t) for t in a["has_truth"]), tuple(a["class_names"]))
        return self._read[fingerprint]


def _value(value: object) -> str:
    """A parameter value as a user would type it: text bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def settings_lines(params: Mapping[str, object]) -> list[str]:
    """The settings a version records: ``stage: name=value, ...`` for each stage's parameters, then
    ``settings: name=value, ...`` for the loose ones. Stage keys and bookkeeping are left out."""
    lines, loose = [], []
    for name, value in sorted(params.items()):
        if name in STAGE_KEY_PARAMS or name in HIDDEN_PARAMS:
            continue
        if isinstance(value, Mapping):
            lines.append(f"{name}: " + ", ".join(f"{k}={_value(v)}" for k, v in value.items()))
        else:
            loose.append(f"{name}={_value(value)}")
    return lines + ([f"settings: {', '.join(loose)}"] if loose else [])


def _stage_keys(params: Mapping[str, object]) -> list[str]:
    """``proposals <key>``, ``pooled <key>``, ...: the stage keys ``params`` name."""
    return [f"{stage} {params[stage]}" for stage in STAGE_KEY_PARAMS if isinstance(params.get(stage), str)]


def computed_from(params: Mapping[str, object]) -> str | None:
    """``computed from: proposals <key>, pooled <key>``: the stage keys a version names, None if none."""
    keys = _stage_keys(params)
    return f"computed from: {', '.join(keys)}" if keys else None


def stage_settings_lines(stage: str, settings: Mapping[str, object], details: str = "") -> list[str]:
    """The settings a per-image stage key stands for, from what its group records: its parameters as a
    version's read (``propose: model=mobile_sam, ...``, then ``details`` after a ``;``), the stage keys it
    was computed from (after a ``;`` too: ``pool: mask_attention=false, ...; from proposals <key>, features
    <key>``), then the checkpoint and code version it also hashes (``computed with: checkpoint sha256 <16 hex>,
    code version <hex>``)."""
    params = {k: v for k, v in settings.items() if k not in (SETTINGS_CHECKPOINT, SETTINGS_CODE)}
    lines = settings_lines(params)
    step = f"{STAGE_STEP.get(stage, stage)}: "
    keys = _stage_keys(params)
    for text, first in ((details, True), (f"from {', '.join(keys)}" if keys else "", False)):
        if not text:
            continue
        own = next((i for i, line in enumerate(lines) if line.startswith(step)), None)
        if own is not None:
            lines[own] += f"; {text}"
        else:
            lines.insert(0 if first else len(lines), f"{step}{text}")
    pins = []
    checkpoints = settings.get(SETTINGS_CHECKPOINT)  # one, or a list (SAM's and the detector's)
    for checkpoint in [checkpoints] if isinstance(checkpoints, str) else checkpoints or []:
        if not isinstance(checkpoint, str):
            continue
        sha256 = len(checkpoint) == 64 and all(c in "0123456789abcdef" for c in checkpoint)
        pins.append(f"checkpoint sha256 {checkpoint[:16]}" if sha256 else f"checkpoint {checkpoint}")
    if isinstance(settings.get(SETTINGS_CODE), str):
        pins.append(f"code version {settings[SETTINGS_CODE]}")
    if pins:
        lines.append(f"computed with: {', '.join(pins)}")
    return lines


def prototype_lines(per_class: Sequence[int], class_names: Sequence[str]) -> list[str]:
    """A bank's ``prototypes per class: name: count, ...`` and the classes it has none of (which retrieval
    can never predict)."""
    def name(i: int) -> str:
        """Class ``i``'s name (its index where the names are fewer)."""
        return class_names[i] if i < len(class_names) else f"class {i}"

    counts = [(name(i), int(n)) for i, n in enumerate(per_class)]
    some = [f"{c}: {n}" for c, n in counts if n > 0]
    lines = [f"prototypes per class: {listed(some) if some else 'none'}"]
    none = [c for c, n in counts if n == 0] + [c for c in class_names[len(per_class):]]
    if none:
        lines.append(f"classes without prototypes (retrieval never predicts them): {listed(none)}")
    return lines


def version_lines(v: VersionInfo, datasets: Datasets) -> list[str]:
    """What a version is, beyond its id: its datasets and their classes, its settings, the stage keys it
    was computed from and, for a bank, its prototypes per class."""
    known = [d for d in (datasets.get(fp) for fp in v.datasets) if d is not None]
    lines = []
    if v.datasets:
        named = [d.counts() for d in known] + [f"{fp[:16]} (not recorded)" for fp in v.datasets
                                               if datasets.get(fp) is None]
        lines.append(f"{DATASET_ROLE.get(v.kind, 'datasets')}: {'; '.join(named)}")
    names = known[0].class_names if known else ()
    if names:
        lines.append(classes_line(names))
    lines += settings_lines(v.params)
    source = computed_from(v.params)
    if source:
        lines.append(source)
    per_class = (v.metrics or {}).get("per_class")
    if v.kind == BANK and isinstance(per_class, list):
        lines += prototype_lines(per_class, names)
    return lines
