"""Seeds from a detector's boxes: a proposal takes its box's class where its image is labelled with it; boxes
of other classes are left unlabelled, the rest region is background; and the settings of the boxes path act or
are refused."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from maskbank.tasks.box_seed import box_seed_labels
from maskbank.tasks.proposals import REST


def test_a_proposal_takes_its_box_s_class_among_the_image_s_labels():
    image_labels = np.zeros((2, 4), bool)
    image_labels[0, [1, 2]] = True
    image_labels[1, 3] = True
    box_class = np.array([1, 3, REST, 2, 3, REST])
    box_score = np.array([0.8, 0.7, np.nan, 0.6, 0.9, np.nan], np.float32)
    image = np.array([0, 0, 0, 1, 1, 1])
    labels, confidence = box_seed_labels(box_class, box_score, image, image_labels, background=True)
    assert labels.tolist() == [1, -1, 0, -1, 3, 0]  # class 3 is not image 0's, class 2 not image 1's
    np.testing.assert_allclose(confidence, [0.8, 0.0, 1.0, 0.0, 0.9, 1.0])
    labels, _ = box_seed_labels(box_class, box_score, image, image_labels, background=False)
    assert labels.tolist() == [1, -1, -1, -1, 3, -1]  # without a background class the rest region stays unlabelled
    empty = box_seed_labels(np.zeros(0, int), np.zeros(0), np.zeros(0, int), image_labels)
    assert empty[0].shape == empty[1].shape == (0,)
    with pytest.raises(ValueError, match="past the 4 classes"):
        box_seed_labels(np.array([4]), np.array([0.5]), np.array([0]), image_labels)


def test_the_boxes_settings_act_or_are_refused():
    from maskbank.flows.params import ProposeParams, RunParams, SeedParams

    boxes = ProposeParams(method="boxes", box_threshold=0.3)
    assert boxes.detect_config().box_threshold == 0.3
    assert "points_per_side" not in boxes.acting() and "detector" not in ProposeParams().acting()
    with pytest.raises(ValidationError, match="points_per_side, generator would have no effect: propose.method is 'boxes'"):
        ProposeParams(method="boxes", points_per_side=8, generator="stock")
    with pytest.raises(ValidationError, match="box_threshold would have no effect: propose.method is 'automatic'"):
        ProposeParams(box_threshold=0.3)
    with pytest.raises(ValidationError, match="text_threshold would have no effect: owlv2_b16 scores each class"):
        ProposeParams(method="boxes", detector="owlv2_b16", text_threshold=0.3)
    with pytest.raises(ValidationError, match="'clip_b16' is not a detector checkpoint"):
        ProposeParams(method="boxes", detector="clip_b16")
    with pytest.raises(ValidationError, match="rounds would have no effect: seed.method is 'boxes'"):
        SeedParams(method="boxes", rounds=2)
    with pytest.raises(ValidationError, match="seed.method 'boxes' labels each proposal .* set propose.method"):
        RunParams(seed=SeedParams(method="boxes"))
    RunParams(propose=boxes, seed=SeedParams(method="boxes"))  # either seed method may read box proposals
    RunParams(propose=boxes)


def test_box_proposals_keys_hash_the_class_names_asked_for():
    from maskbank.flows.params import ProposeParams
    from maskbank.flows.stages.propose import proposals_key, proposals_settings
    from maskbank.storage.layout import SETTINGS_CHECKPOINT, SETTINGS_CLASSES

    boxes = ProposeParams(method="boxes")
    names = ["background", "cat", "dog"]
    key = proposals_key(boxes, names, True)
    assert key != proposals_key(boxes, ["background", "cat", "cow"], True) != proposals_key(boxes, names, False)
    assert key == proposals_key(boxes, list(names), True) != proposals_key(ProposeParams(), names, True)
    assert proposals_key(ProposeParams(), names, True) == proposals_key(ProposeParams())  # automatic: no classes
    settings = proposals_settings(boxes, names, True)
    assert settings[SETTINGS_CLASSES] == {"names": names, "background": True} and len(settings[SETTINGS_CHECKPOINT]) == 2
    with pytest.raises(ValueError, match="give them"):
        proposals_key(boxes)
