import numpy as np
import pytest

from maskbank.tasks.paint import label_dtype, mask_nms, paint_by_score


def _rect(y0, y1, x0, x1, shape=(10, 10)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_higher_score_paints_first_and_wins_overlaps():
    masks = np.stack([_rect(0, 4, 0, 6), _rect(2, 6, 3, 9)])
    out = paint_by_score(masks, np.array([1, 2]), np.array([0.5, 0.9]), nms_iou=None)
    expected = np.zeros((10, 10), np.uint8)
    expected[0:4, 0:6] = 1
    expected[2:6, 3:9] = 2  # higher score took the overlap
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    swapped = paint_by_score(masks, np.array([1, 2]), np.array([0.9, 0.5]), nms_iou=None)
    assert swapped[3, 4] == 1 and swapped[5, 8] == 2


def test_background_masks_paint_nothing_and_block_nothing():
    masks = np.stack([_rect(0, 10, 0, 10), _rect(2, 5, 2, 5), _rect(7, 9, 7, 9)])
    labels = np.array([0, 3, -1])
    out = paint_by_score(masks, labels, np.array([0.99, 0.1, 0.5]))
    expected = np.zeros((10, 10), np.uint8)
    expected[2:5, 2:5] = 3
    np.testing.assert_array_equal(out, expected)


def test_per_label_nms_and_min_area():
    a = _rect(0, 5, 0, 10)  # 50 px
    b = _rect(0, 5, 0, 8)  # 40 px, IoU with a = 0.8
    c = _rect(0, 5, 0, 4)  # 20 px, IoU with a = 0.4 (not > 0.4)
    d = _rect(5, 6, 0, 3)  # 3 px
    masks = np.stack([a, b, c, d, b])
    labels = np.array([1, 1, 1, 1, 2])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    keep = mask_nms(masks, labels, scores, iou_threshold=0.4, min_area=5)
    np.testing.assert_array_equal(keep, [True, False, True, False, True])
    np.testing.assert_array_equal(mask_nms(masks, labels, scores, iou_threshold=None), [True] * 5)
    # label 2's mask b is kept (different label) but a, painted first, already owns its pixels
    out = paint_by_score(masks, labels, scores, min_area=5)
    assert (out[0:5, 0:10] == 1).all() and (out[5:] == 0).all()
    # a lower threshold also drops c (IoU 0.4 > 0.3)
    np.testing.assert_array_equal(mask_nms(masks, labels, scores, iou_threshold=0.3, min_area=5), [1, 0, 0, 0, 1])
    # scored highest, the label-2 copy of b paints first
    out = paint_by_score(masks, labels, np.array([0.9, 0.8, 0.7, 0.6, 0.95]), min_area=5)
    assert (out[0:5, 0:8] == 2).all() and (out[0:5, 8:10] == 1).all()


def test_dtype_follows_num_classes_and_background_fill():
    masks = np.stack([_rect(1, 3, 1, 3)])
    out = paint_by_score(masks, np.array([300]), np.array([1.0]), num_classes=400)
    assert out.dtype == np.uint16 and out[1, 1] == 300 and out[0, 0] == 0
    out = paint_by_score(masks, np.array([2]), np.array([1.0]), background=5, num_classes=6)
    assert out[0, 0] == 5 and out[1, 1] == 2
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16 and label_dtype(70000) == np.int32
    empty = paint_by_score(np.zeros((0, 4, 6), bool), np.zeros(0, np.int64), np.zeros(0), num_classes=21)
    assert empty.shape == (4, 6) and empty.dtype == np.uint8 and not empty.any()
    with pytest.raises(ValueError):
        paint_by_score(masks, np.array([21]), np.array([1.0]), num_classes=21)
    with pytest.raises(ValueError):
        paint_by_score(masks, np.array([1, 2]), np.array([1.0]))
