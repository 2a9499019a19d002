import json

import numpy as np
import pytest
import torch

from maskbank.tasks import rle
from maskbank.tasks.models.sam import assemble_sam
from maskbank.tasks.models.tiny_vit import tiny_vit
from maskbank.tasks.propose import DEFAULT_MIN_AREA, MaskProposer, ProposerConfig, Proposals, non_overlapping

SIZE = 64
TINY = dict(embed_dims=(8, 16, 32, 320), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
# Random weights predict low IoU and image-wide boxes: keep every mask (no score filter, no box NMS)
# so the plumbing has many distinct masks to carry.
LOOSE = dict(input_size=SIZE, points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0,
             stability_score_thresh=0.0, box_nms_thresh=1.0, device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    sam = assemble_sam(tiny_vit(SIZE, **TINY), SIZE)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return sam.eval()


def _two_rectangles(h=64, w=64):
    img = np.full((h, w, 3), 30, np.uint8)
    img[5:30, 5:40] = (220, 40, 40)
    img[35:60, 20:60] = (40, 200, 60)
    return img


def _check_well_formed(props: Proposals, hw):
    n = len(props)
    assert props.image_hw == hw
    assert props.predicted_iou.shape == props.stability_score.shape == props.area.shape == (n,)
    assert props.bbox.shape == (n, 4)
    assert props.predicted_iou.dtype == props.stability_score.dtype == np.float32
    assert props.bbox.dtype == np.int32 and props.area.dtype == np.int64
    masks = props.masks()
    assert masks.shape == (n, *hw) and masks.dtype == bool
    np.testing.assert_array_equal(props.area, masks.sum(axis=(1, 2)))
    for m, (x, y, w, h) in zip(masks, props.bbox):
        if m.any():
            ys, xs = np.nonzero(m)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert all(isinstance(r["counts"], str) and r["size"] == list(hw) for r in props.rles)
    json.dumps(props.rles)
    assert np.all(np.diff(props.predicted_iou) <= 0)
    assert len({r["counts"] for r in props.rles}) == n


@pytest.mark.parametrize("bf16", [False, True])
def test_proposer_on_synthetic_image(tiny_sam, bf16):
    props = MaskProposer(tiny_sam, ProposerConfig(bf16=bf16, **LOOSE))(_two_rectangles())
    assert len(props) > 100
    _check_well_formed(props, (64, 64))


@pytest.mark.parametrize("hw", [(40, 64), (64, 23), (2, 2), (300, 17)])
def test_proposer_any_size(tiny_sam, hw):
    props = MaskProposer(tiny_sam, ProposerConfig(bf16=False, **LOOSE))(_two_rectangles(*hw))
    _check_well_formed(props, hw)


@pytest.mark.parametrize("generator", ["fast", "stock"])
def test_a_batch_gives_each_image_its_own_proposals(tiny_sam, generator):
    """One encoder pass over images of different sizes (and a one-pixel-wide one) gives the proposals that
    each image gets alone, to float rounding: the same masks but for a rare pixel at a mask's threshold."""
    proposer = MaskProposer(tiny_sam, ProposerConfig(bf16=False, generator=generator, **LOOSE))
    images = [_two_rectangles(), _two_rectangles(40, 64)[::-1].copy(), np.zeros((1, 9, 3), np.uint8),
              _two_rectangles(64, 23)]
    batched = proposer.batch(images)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        alone = proposer(image)
        _check_well_formed(got, image.shape[:2])
        assert len(got) == len(alone)
        assert (got.masks() != alone.masks()).sum() <= max(1, got.masks().size // 10_000)
        np.testing.assert_allclose(got.predicted_iou, alone.predicted_iou, atol=1e-5)
        np.testing.assert_allclose(got.stability_score, alone.stability_score, atol=1e-5)
    assert len(batched[2]) == 0 and len(batched[0]) > 100


def test_encoder_batch_equals_one_image_at_a_time(tiny_sam):
    from maskbank.tasks.fast_amg import FastMaskGenerator

    gen = MaskProposer(tiny_sam, ProposerConfig(bf16=False, **LOOSE)).generator
    assert isinstance(gen, FastMaskGenerator)
    images = [_two_rectangles(), _two_rectangles(40, 64)]
    batch = gen.encode(images)
    for image, features in zip(images, batch):
        gen.predictor.set_image(image)
        torch.testing.assert_close(features[None], gen.predictor.features, atol=1e-5, rtol=1e-4)
    gen.predictor.reset_image()


def test_points_per_batch_follows_the_device_unless_set(tiny_sam):
    from maskbank.tasks.propose import POINTS_PER_BATCH

    unset = {**LOOSE, "points_per_batch": None}
    assert MaskProposer(tiny_sam, ProposerConfig(**unset)).generator.points_per_batch == POINTS_PER_BATCH["cpu"]
    assert MaskProposer(tiny_sam, ProposerConfig(**{**unset, "points_per_batch": 7})).generator.points_per_batch == 7
    with pytest.raises(ValueError, match="points_per_batch"):
        ProposerConfig(points_per_batch=0)


def test_proposer_thresholds_filter(tiny_sam):
    img = _two_rectangles()
    loose = MaskProposer(tiny_sam, ProposerConfig(bf16=False, **LOOSE))(img)
    cut = float(np.median(loose.predicted_iou))
    strict = MaskProposer(tiny_sam, ProposerConfig(bf16=False, **{**LOOSE, "pred_iou_thresh": cut}))(img)
    assert 0 < len(strict) < len(loose)
    assert strict.predicted_iou.min() > cut
    nms = MaskProposer(tiny_sam, ProposerConfig(bf16=False, **{**LOOSE, "box_nms_thresh": 0.7}))(img)
    assert 0 < len(nms) < len(loose)


@pytest.mark.parametrize("hw", [(1, 1), (1, 50), (50, 1)])
def test_one_pixel_wide_images_give_no_proposals(tiny_sam, hw):
    props = MaskProposer(tiny_sam, ProposerConfig(**LOOSE))(np.zeros((*hw, 3), np.uint8))
    assert len(props) == 0
    assert props.masks().shape == (0, *hw)


def test_proposer_rejects_bad_input(tiny_sam):
    proposer = MaskProposer(tiny_sam, ProposerConfig(**LOOSE))
    for bad in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), [1]):
        with pytest.raises(ValueError, match="uint8"):
            proposer(bad)
    with pytest.raises(ValueError, match="input_size"):
        MaskProposer(tiny_sam, ProposerConfig(input_size=512, device="cpu"))


def test_config_validation_and_min_area():
    cfg = ProposerConfig()
    assert (cfg.input_size, cfg.points_per_side, cfg.bf16) == (1024, 16, True)
    assert cfg.min_area == pytest.approx(0.0016)
    assert cfg.min_area_pixels((375, 500)) == 300
    assert cfg.min_area_pixels((1, 1)) == 1
    assert DEFAULT_MIN_AREA == cfg.min_area
    for bad in (dict(input_size=500), dict(min_area=1.5), dict(points_per_side=0), dict(min_mask_region_area=-1)):
        with pytest.raises(ValueError):
            ProposerConfig(**bad)


def test_flow_defaults_are_the_proposer_defaults():
    from maskbank.flows.params import ProposeParams
    from maskbank.flows.runtime import proposer_config

    assert proposer_config(ProposeParams()) == ProposerConfig()


def _props(masks, iou, stab):
    return Proposals.from_rles(rle.encode(np.asarray(masks, bool)), np.asarray(iou), np.asarray(stab), masks[0].shape)


def _box(hw, y0, y1, x0, x1):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_non_overlapping_exact_pixels():
    hw = (6, 6)
    a = _box(hw, 0, 4, 0, 4)  # score 0.9
    b = _box(hw, 2, 6, 2, 6)  # score 0.8: loses the overlap with a and the corner to e
    c = _box(hw, 5, 6, 0, 2)  # score 0.5: 2 px, under min_area
    d = _box(hw, 0, 2, 0, 2)  # score 0.7: hidden under a
    e = _box(hw, 4, 6, 4, 6)  # score 0.95 (0.95 * 1.0)
    props = _props([a, b, c, d, e], [0.9, 0.8, 1.0, 0.7, 0.95], [1.0, 1.0, 0.5, 1.0, 1.0])
    out = non_overlapping(props, min_area=3)
    assert len(out) == 3
    np.testing.assert_allclose(out.predicted_iou, [0.9, 0.8, 0.95])
    np.testing.assert_allclose(out.stability_score, [1.0, 1.0, 1.0])
    masks = out.masks()
    np.testing.assert_array_equal(masks[0], a)
    np.testing.assert_array_equal(masks[1], b & ~a & ~e)
    np.testing.assert_array_equal(masks[2], e)
    np.testing.assert_array_equal(out.area, [16, 8, 4])
    np.testing.assert_array_equal(out.bbox, [[0, 0, 4, 4], [2, 2, 4, 4], [4, 4, 2, 2]])
    assert masks.sum(axis=0).max() == 1
    # min_area 0 still drops fully hidden masks, keeps the 2 px leftover
    np.testing.assert_array_equal(non_overlapping(props, min_area=0).area, [16, 8, 2, 4])


def test_non_overlapping_ties_go_to_the_earlier_mask():
    hw = (3, 4)
    left, right = _box(hw, 0, 3, 0, 3), _box(hw, 0, 3, 1, 4)
    out = non_overlapping(_props([left, right], [0.9, 0.9], [1.0, 1.0]), min_area=1)
    np.testing.assert_array_equal(out.masks(), [left, right & ~left])


def test_non_overlapping_bbox_shrinks_when_split():
    hw = (5, 5)
    low = _box(hw, 0, 5, 0, 5)
    high = _box(hw, 0, 5, 1, 4)  # cuts low into two side columns
    out = non_overlapping(_props([low, high], [0.5, 0.9], [1.0, 1.0]), min_area=1)
    np.testing.assert_array_equal(out.area, [10, 15])
    np.testing.assert_array_equal(out.bbox, [[0, 0, 5, 5], [1, 0, 3, 5]])
    out = non_overlapping(_props([low, high], [0.9, 0.5], [1.0, 1.0]), min_area=1)
    np.testing.assert_array_equal(out.area, [25])


def test_non_overlapping_random_is_disjoint_and_a_subset():
    rng = np.random.default_rng(0)
    masks = rng.random((12, 20, 30)) < 0.3
    props = _props(masks, rng.random(12), rng.random(12))
    out = non_overlapping(props, min_area=5)
    m = out.masks()
    assert m.sum(axis=0).max() <= 1
    assert (out.area >= 5).all()
    kept = [int(np.flatnonzero(np.isclose(props.predicted_iou, v))[0]) for v in out.predicted_iou]
    assert kept == sorted(kept)
    for region, i in zip(m, kept):
        assert not (region & ~masks[i]).any()
    assert len(non_overlapping(Proposals.empty((4, 4)), 3)) == 0
    with pytest.raises(ValueError):
        non_overlapping(props, -1)


def test_proposals_select_and_alignment():
    hw = (4, 4)
    props = _props([_box(hw, 0, 1, 0, 1), _box(hw, 0, 2, 0, 2), _box(hw, 0, 3, 0, 3)], [0.1, 0.2, 0.3], [1, 1, 1])
    np.testing.assert_array_equal(props.select([2, 0]).area, [9, 1])
    np.testing.assert_array_equal(props.select(np.array([False, True, True])).area, [4, 9])
    np.testing.assert_allclose(props.select(slice(1, None)).score, [0.2, 0.3])
    assert len(props.select([])) == 0 and props.select([]).masks().shape == (0, 4, 4)
    with pytest.raises(ValueError, match="aligned"):
        Proposals(props.rles, props.predicted_iou[:2], props.stability_score, props.bbox, props.area, hw)
    with pytest.raises(ValueError, match="RLE size"):
        Proposals(props.rles, props.predicted_iou, props.stability_score, props.bbox, props.area, (5, 4))
