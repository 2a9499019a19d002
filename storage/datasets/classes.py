"""Class lists: a format's source classes, renamed and merged into the dataset's class indices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BACKGROUND = "background"


class DatasetError(ValueError):
    """A dataset cannot be read as given: the message says what is wrong and where."""


@dataclass(frozen=True)
class ClassMap:
    """Source classes (a format's own, in its stable order) -> dataset class indices.

    ``class_names[0]`` is ``"background"``; ``class_names[1:]`` are the renamed classes in order of first
    appearance. ``source_to_index[i]`` is the dataset index of source class ``i``; two sources renamed to
    one name share an index (a merge), and a source renamed to ``"background"`` maps to 0.

    ``has_background`` records whether index 0 stands for pixels the source calls background: true for
    COCO, VOC and folders, and for any class list with a background class or a class renamed to
    ``"background"``. False for a class list without one (MSRC-21, CamVid): there every labelled pixel
    belongs to a named class and index 0 is a placeholder that no label or truth pixel uses. It is
    recorded for later stages to consult (what background means there is theirs to decide).
    """

    source_names: tuple[str, ...]
    class_names: tuple[str, ...]
    source_to_index: tuple[int, ...]
    has_background: bool = True

    @classmethod
    def build(
        cls, source_names: Sequence[str], rename: Mapping[str, str] | None = None, has_background: bool = True
    ) -> ClassMap:
        """The map of ``source_names`` (background excluded) renamed by ``rename``; ``has_background``: whether
        the source has a background class (a rename into background makes it so)."""
        names = [str(n) for n in source_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DatasetError(f"duplicate class names: {dupes}")
        if BACKGROUND in names:
            raise DatasetError(f"{BACKGROUND!r} is reserved for index 0 and cannot be a dataset class")
        rename = dict(rename or {})
        unknown = sorted(set(rename) - set(names))
        if unknown:
            raise DatasetError(f"rename names unknown classes {unknown}; known classes: {names}")
        final = [BACKGROUND]
        to_index = []
        for n in names:
            target = str(rename.get(n, n))
            if target not in final:
                final.append(target)
            to_index.append(final.index(target))
        return cls(tuple(names), tuple(final), tuple(to_index), has_background or 0 in to_index)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        """Truth value of ignored pixels: 255, or 65535 when 255 is itself a class index."""
        return 255 if self.num_classes <= 255 else 65535

    @property
    def truth_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.num_classes <= 255 else np.uint16)

    def labels(self, source_positions: Iterable[int]) -> tuple[int, ...]:
        """Dataset label indices (sorted, unique, no background) of 0-based source class positions."""
        return tuple(sorted({self.source_to_index[p] for p in source_positions} - {0}))

    def lookup(self, names: Iterable[str]) -> tuple[list[int], list[str]]:
        """0-based source positions of ``names`` and the names that are not source classes."""
        index = {n: i for i, n in enumerate(self.source_names)}
        found, unknown = [], []
        for n in names:
            if n == BACKGROUND:
                continue
            if n in index:
                found.append(index[n])
            else:
                unknown.append(n)
        return found, unknown

    def digest_key(self) -> list:
        """What about the mapping belongs in a fingerprint."""
        return [list(self.source_names), list(self.source_to_index)]
