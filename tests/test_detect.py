"""Open-vocabulary boxes and SAM masks in them, on tiny random Grounding DINO, OWLv2 and SAM models: prompt
splitting at the text limit, boxes mapped to classes by token positions, chunked queries, box prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_detectors import tiny_grounding_dino, tiny_owlv2

from maskbank.tasks.detect import SEPARATOR, BoxDetector, BoxProposer, Boxes, DetectConfig, box_masks, split_prompts

NAMES = ["cat", "dog", "traffic light", "car"]


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def grounding_dino(tmp_path_factory):
    return tiny_grounding_dino(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory):
    return tiny_owlv2(tmp_path_factory.mktemp("clip"))


def test_prompts_are_split_at_the_text_limit():
    words = lambda text: len(text.split()) + 2  # a word a token, and the two special tokens
    names = ["cat", "dog", "traffic light", "car", "potted plant", "tv"]
    groups = split_prompts(names, words, max_tokens=8)
    assert [j for g in groups for j in g] == list(range(len(names)))  # every name once, in order
    assert all(words(SEPARATOR.join(names[j] for j in g) + " .") <= 8 for g in groups) and len(groups) > 1
    assert split_prompts(names, words, max_tokens=100) == [list(range(len(names)))]
    with pytest.raises(ValueError, match="'traffic light' alone is longer"):
        split_prompts(names, words, max_tokens=4)


def test_grounding_dino_boxes_map_to_classes_by_token_positions(grounding_dino):
    model, processor = grounding_dino
    detector = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0,
                                                         device="cpu"))
    found = detector(_image(), NAMES)
    assert found.boxes.shape == (len(found), 4) and len(found) > 0
    assert (found.boxes[:, [0, 2]] >= 0).all() and (found.boxes[:, [0, 2]] <= 64).all()
    assert (found.boxes[:, [1, 3]] >= 0).all() and (found.boxes[:, [1, 3]] <= 48).all()
    assert set(found.labels.tolist()) <= set(range(len(NAMES)))
    # the ids built name by name are the tokenizer's own for the joined prompt
    tokenizer = processor.tokenizer
    ids = [tokenizer.cls_token_id]
    for name in NAMES:
        ids += tokenizer(name, add_special_tokens=False)["input_ids"] + tokenizer(".", add_special_tokens=False)["input_ids"]
    assert ids + [tokenizer.sep_token_id] == tokenizer(SEPARATOR.join(NAMES) + " .")["input_ids"]
    # split into several prompts, every class is still asked for
    small = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0,
                                                       max_text_tokens=6, device="cpu"))
    assert len(small(_image(), NAMES)) >= len(found)
    assert len(BoxDetector(model, processor, DetectConfig(box_threshold=1.0, device="cpu"))(_image(), NAMES)) == 0


def test_owlv2_queries_are_independent_of_how_they_are_batched(owlv2):
    model, processor = owlv2
    one = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, nms_iou=1.0, queries_per_pass=1, device="cpu"))
    all_ = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, nms_iou=1.0, device="cpu"))
    a, b = one(_image(), NAMES), all_(_image(), NAMES)
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-4)
    assert (a.boxes >= 0).all() and (a.boxes[:, [0, 2]] <= 64).all() and (a.boxes[:, [1, 3]] <= 48).all()


def test_class_wise_nms_keeps_the_best_box_of_a_class(owlv2):
    from torchvision.ops import box_iou

    model, processor = owlv2
    loose = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, nms_iou=1.0, device="cpu"))(_image(), NAMES)
    tight = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, nms_iou=0.3, device="cpu"))(_image(), NAMES)
    assert 0 < len(tight) <= len(loose)
    for c in set(loose.labels.tolist()):
        mine = torch.as_tensor(tight.boxes[tight.labels == c])
        assert tight.scores[tight.labels == c].max() == loose.scores[loose.labels == c].max()
        overlap = box_iou(mine, mine) - torch.eye(len(mine))
        assert (overlap <= 0.3).all()


def _sam_predictor():
    from segment_anything import SamPredictor

    from maskbank.tasks.models.sam import assemble_sam
    from maskbank.tasks.models.tiny_vit import tiny_vit

    torch.manual_seed(0)
    sam = assemble_sam(tiny_vit(64, embed_dims=(8, 16, 32, 320), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), 64)
    return SamPredictor(sam.eval())


def test_sam_gives_one_mask_per_box():
    predictor = _sam_predictor()
    boxes = np.array([[0, 0, 32, 24], [10, 5, 60, 40]], np.float32)
    masks, iou, stability = box_masks(predictor, _image(), boxes)
    assert masks.shape == (2, 48, 64) and masks.dtype == bool and iou.shape == stability.shape == (2,)
    assert ((stability >= 0) & (stability <= 1)).all()
    empty, none, _ = box_masks(predictor, _image(), np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 48, 64) and none.shape == (0,)


def test_other_models_and_settings_are_refused():
    from transformers import CLIPConfig, CLIPModel

    with pytest.raises(ValueError, match="Grounding DINO or OWLv2"):
        BoxDetector(CLIPModel(CLIPConfig()), None)
    with pytest.raises(ValueError, match="box_threshold"):
        DetectConfig(box_threshold=2.0)


class _Found:
    """A detector that finds the same boxes in every image."""

    def __init__(self, boxes: Boxes) -> None:
        self.boxes = boxes

    def __call__(self, image, names) -> Boxes:
        return self.boxes


def test_box_proposals_are_sams_masks_in_the_boxes_with_their_classes():
    """Non-overlapping regions of SAM's box masks, each with its box's class and score; a pixel two masks claim
    goes to the box of higher score; the rest of the image is one more region of class -1."""
    predictor = _sam_predictor()
    found = Boxes(np.array([[0, 0, 40, 30], [20, 10, 64, 48], [5, 5, 20, 20]], np.float32),
                  np.array([2, 0, 1], np.int32), np.array([0.5, 0.9, 0.4], np.float32))
    raw, _, _ = box_masks(predictor, _image(), found.boxes)
    assert (raw[0] & raw[1]).any() and (raw[0] & raw[2]).any() and not raw.any(axis=0).all()  # contested and free pixels
    props = BoxProposer(_Found(found), predictor, min_area=0.0, rest_region=True)(_image(), NAMES)
    masks = props.masks()
    assert (masks.sum(axis=0) == 1).all()  # disjoint, and with the rest region every pixel in one
    rest = props.box_class == -1
    assert rest.sum() == 1 and np.isnan(props.box_score[rest]).all() and np.isnan(props.predicted_iou[rest]).all()
    np.testing.assert_array_equal(masks[rest][0], ~raw.any(axis=0))
    best = np.where(raw.any(axis=0), np.argmax(raw * found.scores[:, None, None], axis=0), -1)
    for mask, cls, score in zip(masks[~rest], props.box_class[~rest], props.box_score[~rest]):
        j = int(np.flatnonzero(found.scores == score)[0])
        assert cls == found.labels[j] and (best[mask] == j).all()
    assert sorted(props.box_score[~rest]) == sorted(found.scores[j] for j in range(3) if (best == j).any())
    without = BoxProposer(_Found(found), predictor, min_area=0.0, rest_region=False)(_image(), NAMES)
    assert (without.box_class >= 0).all() and len(without) == len(props) - 1
    # regions under min_area are dropped, the rest region too
    small = BoxProposer(_Found(found), predictor, min_area=0.5, rest_region=True)(_image(), NAMES)
    assert all(a >= 0.5 * 48 * 64 for a in small.area)
    none = BoxProposer(_Found(Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))),
                       predictor, min_area=0.0, rest_region=True)(_image(), NAMES)
    assert len(none) == 1 and none.masks().all() and none.box_class.tolist() == [-1]


def test_grounding_dino_prompts_fit_the_model_s_own_text_limit(grounding_dino):
    """A class list longer than the model's text limit (32 tokens here, under the configured 256) is split."""
    model, processor = grounding_dino
    names = [f"{w} {v}" for w in ("cat", "dog", "car") for v in ("light", "traffic", "person", "dog", "cat")] * 2
    found = BoxDetector(model, processor, DetectConfig(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0,
                                                       device="cpu"))(_image(), names)
    assert len(found) > 0 and found.labels.max() < len(names)


@pytest.mark.parametrize("family", ["grounding_dino", "owlv2"])
def test_a_detector_checkpoint_folder_loads_as_the_flow_loads_it(family, tmp_path, monkeypatch):
    """A detector saved as a ``transformers`` folder (model, processor and tokenizer files, as the hub holds them)
    loads through the flow's loader, whichever the family, and finds boxes as the model it was saved from."""
    from maskbank.flows import runtime

    (tmp_path / "build").mkdir()
    model, processor = (tiny_grounding_dino if family == "grounding_dino" else tiny_owlv2)(tmp_path / "build")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    monkeypatch.setattr(runtime, "fetch", lambda name: folder)
    runtime.detector.cache_clear()
    try:
        loaded, loaded_processor = runtime.detector(f"{family}-folder")
    finally:
        runtime.detector.cache_clear()
    assert type(loaded) is type(model) and not loaded.training
    config = DetectConfig(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0, device="cpu")
    a = BoxDetector(model, processor, config)(_image(), NAMES)
    b = BoxDetector(loaded, loaded_processor, config)(_image(), NAMES)
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
