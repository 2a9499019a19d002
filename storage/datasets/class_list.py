"""Class lists of class-index masks: a mask value's class name, and which class (if any) is the background.

A class list is ``classes.txt`` (one name per line; line ``i`` names mask value ``i``) or ``classes.json``
(a JSON list of names, entry ``i`` for value ``i``). A class named ``background`` or ``_background_`` (any
case) is the background and maps to dataset index 0; a list without one (MSRC-21, CamVid) has every
value a named class, shifted to indices ``1..n`` behind the ``"background"`` placeholder that
:class:`ClassMap` keeps at 0. Masks hold 8-bit values; one value may mark ignored pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskbank.storage.datasets.classes import ClassMap, DatasetError

CLASS_LIST_FILES = ("classes.txt", "classes.json")
BACKGROUND_NAMES = frozenset({"background", "_background_"})
MASK_IGNORE_INDEX = 255
"""Mask value of ignored pixels unless a dataset says otherwise (VOC's, MSRC-21's and CamVid's void)."""

_MASK_VALUES = 256


def find_class_list(root: Path) -> Path | None:
    """``<root>/classes.txt`` or ``<root>/classes.json``, ``None`` when neither; both raise."""
    present = [root / n for n in CLASS_LIST_FILES if (root / n).is_file()]
    if len(present) > 1:
        raise DatasetError(f"{root}: both {CLASS_LIST_FILES[0]} and {CLASS_LIST_FILES[1]} exist; keep one")
    return present[0] if present else None


def read_class_list(path: Path) -> list[str]:
    """Names by mask value from a ``.txt`` or ``.json`` class list; trailing blank lines are dropped."""
    if not path.is_file():
        raise DatasetError(f"class list file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DatasetError(f"{path}: invalid JSON: {e}") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{path}: expected a JSON list of class names")
        names = [n.strip() for n in names]
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        while names and not names[-1]:
            names.pop()
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise DatasetError(f"{path}: empty class name at index {empty[:10]} (index i names mask value i)")
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


def is_background_name(name: str) -> bool:
    return name.strip().lower() in BACKGROUND_NAMES


def mask_classes_of(
    root: Path,
    classes: Sequence[str] | str | Path | None = None,
    rename: Mapping[str, str] | None = None,
    background: bool | None = None,
    ignore_value: int = MASK_IGNORE_INDEX,
) -> MaskClasses | None:
    """The :class:`MaskClasses` of ``classes`` (a list or a file), else of ``root``'s class list file;
    ``None`` when there is neither."""
    if classes is not None and not isinstance(classes, (str, Path)):
        return MaskClasses.build(list(classes), rename, background, ignore_value, "classes")
    path = Path(classes) if classes is not None else find_class_list(root)
    if path is None:
        return None
    return MaskClasses.build(read_class_list(path), rename, background, ignore_value, path)


@dataclass(frozen=True)
class MaskClasses:
    """Mask values -> dataset class indices.

    ``value_to_index[v]`` is the dataset index of mask value ``v`` (``v < len(value_to_index)``);
    ``ignore_value`` is the mask value of ignored pixels, read as ``classes.ignore_index``. Any other
    value is an error in the mask.
    """

    classes: ClassMap
    value_to_index: tuple[int, ...]
    ignore_value: int

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        rename: Mapping[str, str] | None = None,
        background: bool | None = None,
        ignore_value: int = MASK_IGNORE_INDEX,
        source: str | Path = "class list",
    ) -> MaskClasses:
        """The classes of ``names`` (index = mask value).

        ``background=None`` detects the background class by name; ``True`` takes the named one, else the
        first class (whatever its name); ``False`` says the list has none (a class named like one raises).
        """
        names = [str(n).strip() for n in names]
        if not names:
            raise DatasetError(f"{source}: no class names")
        if len(names) > _MASK_VALUES:
            raise DatasetError(f"{source}: {len(names)} classes do not fit 8-bit masks (at most {_MASK_VALUES})")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DatasetError(f"{source}: duplicate class names {dupes}")
        named = [i for i, n in enumerate(names) if is_background_name(n)]
        if len(named) > 1:
            raise DatasetError(f"{source}: several background classes {[names[i] for i in named]}; keep one")
        if background is False and named:
            raise DatasetError(f"{source}: class {names[named[0]]!r} is a background class but background=False")
        if not 0 <= ignore_value < _MASK_VALUES:
            raise DatasetError(f"{source}: ignore index {ignore_value} is not an 8-bit mask value")
        if ignore_value < len(names):
            raise DatasetError(f"{source}: ignore index {ignore_value} is also class {names[ignore_value]!r}")
        has_background = bool(named) if background is None else background
        bg = (named[0] if named else 0) if has_background else None
        classes = ClassMap.build([n for i, n in enumerate(names) if i != bg], rename, has_background)
        dataset_index = iter(classes.source_to_index)
        value_to_index = tuple(0 if v == bg else next(dataset_index) for v in range(len(names)))
        return cls(classes, value_to_index, ignore_value)

    def present(self, mask: np.ndarray, source: str | Path) -> np.ndarray:
        """The mask values ``mask`` holds, sorted; values that are neither a class nor ignore raise."""
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=_MASK_VALUES))
        bad = values[(values >= len(self.value_to_index)) & (values != self.ignore_value)]
        if bad.size:
            raise DatasetError(
                f"{source}: values {bad.tolist()} are neither classes 0..{len(self.value_to_index) - 1} "
                f"nor ignore {self.ignore_value}"
            )
        return values

    def labels(self, mask: np.ndarray, source: str | Path) -> tuple[int, ...]:
        """Dataset label indices (sorted, no background) of the classes ``mask`` holds."""
        values = self.present(mask, source)
        return tuple(sorted({self.value_to_index[v] for v in values if v != self.ignore_value} - {0}))

    def truth(self, mask: np.ndarray, source: str | Path) -> np.ndarray:
        """``mask`` as dataset class indices (``classes.truth_dtype``), ignore at ``classes.ignore_index``."""
        self.present(mask, source)
        return self._lut[mask]

    def digest_key(self) -> list:
        """What about the value mapping belongs in a fingerprint (the class list file itself is not hashed)."""
        return [list(self.value_to_index), self.ignore_value]

    @property
    def _lut(self) -> np.ndarray:
        lut = np.zeros(_MASK_VALUES, np.int64)
        lut[: len(self.value_to_index)] = self.value_to_index
        lut[self.ignore_value] = self.classes.ignore_index
        return lut.astype(self.classes.truth_dtype)
