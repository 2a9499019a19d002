"""Seeds from a detector's boxes (the SAM-in-boxes pipeline): each proposal made from a box takes the box's class
where the image is labelled with it.

A box of a class the image is not labelled with is left unlabelled (-1): the image label says the detector
mistook something, not what it is, so it is neither that class nor background (the second stage's head labels
its pixels). The rest region (the pixels in no box, class -1 in the proposals, made where the classes have a
background) is background. A seed's confidence is its box's score, and 1 for the rest region.
"""

from __future__ import annotations

import numpy as np

from maskbank.tasks.proposals import REST


def box_seed_labels(box_class: np.ndarray, box_score: np.ndarray, image_index: np.ndarray, image_labels: np.ndarray,
                    background: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(label int32 [P], confidence float32 [P])`` of ``P`` proposals of a set of images: ``box_class`` ``[P]``
    (class index, :data:`REST` for the rest region), ``box_score`` ``[P]``, ``image_index`` ``[P]`` (each one's
    image) and ``image_labels`` ``bool[I, K]`` (each image's labels as a multi-hot row over the class list).
    ``background``: whether class 0 is background (else the rest region, if any, is left unlabelled too)."""
    box_class = np.asarray(box_class, np.int64)
    labelled = np.zeros(len(box_class), bool)
    boxed = box_class >= 0
    if boxed.any():
        if box_class[boxed].max() >= image_labels.shape[1]:
            raise ValueError(f"box classes reach {box_class[boxed].max()}, past the {image_labels.shape[1]} classes")
        labelled[boxed] = image_labels[np.asarray(image_index)[boxed], box_class[boxed]]
    labels = np.where(labelled, box_class, -1)
    confidence = np.where(labelled, np.asarray(box_score, np.float32), 0.0)
    rest = box_class == REST
    if background:
        labels[rest], confidence[rest] = 0, 1.0
    return labels.astype(np.int32), confidence.astype(np.float32)
