"""Open-vocabulary boxes and SAM masks in them, on tiny random Grounding DINO, OWLv2 and SAM models: prompt
splitting at the text limit, boxes mapped to classes by token positions, chunked queries, box prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_tokenizer import write_clip_tokenizer

from maskbank.tasks.detect import SEPARATOR, BoxDetector, DetectConfig, box_masks, split_prompts

NAMES = ["cat", "dog", "traffic light", "car"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "cat", "dog", "car", "traffic", "light"]


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def grounding_dino(tmp_path_factory):
    from transformers import (
        BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
        GroundingDinoProcessor, SwinConfig,
    )

    vocab = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=4, image_size=64,
                                   out_features=["stage1", "stage2"]),
        text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                               vocab_size=len(WORDS)),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12, num_feature_levels=2, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, use_timm_backbone=False, use_pretrained_backbone=False)
    torch.manual_seed(0)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizer(str(vocab)))
    return GroundingDinoForObjectDetection(config).eval(), processor


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory):
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("clip")), model_max_length=16)
    config = Owlv2Config(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 16},
        projection_dim=16)
    torch.manual_seed(0)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    return Owlv2ForObjectDetection(config).eval(), processor


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


def test_sam_gives_one_mask_per_box():
    from segment_anything import SamPredictor

    from maskbank.tasks.models.sam import assemble_sam
    from maskbank.tasks.models.tiny_vit import tiny_vit

    torch.manual_seed(0)
    sam = assemble_sam(tiny_vit(64, embed_dims=(8, 16, 32, 320), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), 64)
    predictor = SamPredictor(sam.eval())
    boxes = np.array([[0, 0, 32, 24], [10, 5, 60, 40]], np.float32)
    masks, iou = box_masks(predictor, _image(), boxes)
    assert masks.shape == (2, 48, 64) and masks.dtype == bool and iou.shape == (2,)
    empty, none = box_masks(predictor, _image(), np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 48, 64) and none.shape == (0,)


def test_other_models_and_settings_are_refused():
    from transformers import CLIPConfig, CLIPModel

    with pytest.raises(ValueError, match="Grounding DINO or OWLv2"):
        BoxDetector(CLIPModel(CLIPConfig()), None)
    with pytest.raises(ValueError, match="box_threshold"):
        DetectConfig(box_threshold=2.0)
