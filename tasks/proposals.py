"""One image's mask proposals: COCO RLEs with SAM's scores, boxes and areas (numpy only, no model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskbank.tasks import rle

REST = -1
"""``box_class`` of the rest region of proposals made from boxes: the pixels in no box's mask."""


@dataclass
class Proposals:
    """Masks of one image as COCO RLEs, with SAM's scores and per-mask box (xywh, pixels) and area.

    Proposals made from a detector's boxes also carry each mask's ``box_class`` (the class the detector gave
    its box, as an index into a list of class names: those it was asked for, or in a store the dataset's class
    names; :data:`REST` for the pixels in no box's mask) and ``box_score`` (the detector's score; NaN where
    there is no box); automatic proposals have neither (None)."""

    rles: list[dict]
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    image_hw: tuple[int, int]
    box_class: np.ndarray | None = None
    box_score: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image_hw = (int(self.image_hw[0]), int(self.image_hw[1]))
        self.predicted_iou = np.asarray(self.predicted_iou, dtype=np.float32).reshape(-1)
        self.stability_score = np.asarray(self.stability_score, dtype=np.float32).reshape(-1)
        self.bbox = np.asarray(self.bbox, dtype=np.int32).reshape(-1, 4)
        self.area = np.asarray(self.area, dtype=np.int64).reshape(-1)
        if (self.box_class is None) != (self.box_score is None):
            raise ValueError("box_class and box_score come together")
        if self.box_class is not None:
            self.box_class = np.asarray(self.box_class, dtype=np.int32).reshape(-1)
            self.box_score = np.asarray(self.box_score, dtype=np.float32).reshape(-1)
        n = len(self.rles)
        lengths = {len(self.predicted_iou), len(self.stability_score), len(self.bbox), len(self.area),
                   *((len(self.box_class), len(self.box_score)) if self.box_class is not None else ())}
        if lengths != {n}:
            raise ValueError(f"proposal arrays are not aligned with {n} masks: lengths {sorted(lengths)}")
        for r in self.rles:
            if tuple(r["size"]) != self.image_hw:
                raise ValueError(f"RLE size {r['size']} != image size {list(self.image_hw)}")

    @classmethod
    def from_rles(
        cls,
        rles: list[dict],
        predicted_iou: np.ndarray,
        stability_score: np.ndarray,
        image_hw: tuple[int, int],
    ) -> Proposals:
        """Proposals whose boxes and areas are measured from the RLEs."""
        return cls(rles, predicted_iou, stability_score, rle.bbox(rles), rle.area(rles), image_hw)

    @classmethod
    def empty(cls, image_hw: tuple[int, int]) -> Proposals:
        """No proposals for an ``image_hw`` image."""
        return cls.from_rles([], np.zeros(0), np.zeros(0), image_hw)

    @property
    def score(self) -> np.ndarray:
        """Ranking score ``predicted_iou * stability_score``, ``float32[N]``."""
        return self.predicted_iou * self.stability_score

    def masks(self) -> np.ndarray:
        """Decoded masks, ``bool[N, H, W]``."""
        return rle.decode(self.rles, self.image_hw)

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, idx: np.ndarray | list[int] | slice) -> Proposals:
        """The proposals at ``idx`` (integer indices, a boolean mask of length N, or a slice), in that order."""
        picked = np.arange(len(self))[idx]
        return Proposals(
            [self.rles[i] for i in picked],
            self.predicted_iou[picked],
            self.stability_score[picked],
            self.bbox[picked],
            self.area[picked],
            self.image_hw,
            None if self.box_class is None else self.box_class[picked],
            None if self.box_score is None else self.box_score[picked],
        )
