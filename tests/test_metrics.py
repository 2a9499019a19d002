import numpy as np
import pytest

from maskbank.tasks.classes import COCO_TO_VOC, VOC_CLASSES, subset_lookup
from maskbank.tasks.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    covers_voc,
    fit_to_truth,
    iou_per_class,
    miou,
    summarise,
)

TRUTH = np.array([[0, 0, 1, 1], [2, 2, 1, 255], [0, 1, 2, 2]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 1, 2], [0, 1, 1, 2]])
EXPECTED = np.array([[2, 1, 0], [0, 4, 0], [1, 1, 2]])  # rows truth, columns prediction


def test_confusion_matrix_by_hand_with_ignore():
    cm = confusion_matrix(PRED, TRUTH, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, EXPECTED)
    np.testing.assert_allclose(iou_per_class(cm), [2 / 4, 4 / 6, 2 / 4])
    assert miou(cm) == pytest.approx((0.5 + 4 / 6 + 0.5) / 3)
    assert miou(cm, classes=[1, 2]) == pytest.approx((4 / 6 + 0.5) / 2)


def test_absent_class_is_nan_and_both_miou_conventions():
    cm = confusion_matrix(PRED, TRUTH, num_classes=4)
    iou = iou_per_class(cm)
    assert np.isnan(iou[3])
    assert miou(cm) == pytest.approx((0.5 + 4 / 6 + 0.5) / 3)
    assert miou(cm, absent_as_zero=True) == pytest.approx((0.5 + 4 / 6 + 0.5) / 4)
    assert np.isnan(miou(np.zeros((2, 2), np.int64)))


def test_accumulation_and_addition():
    total = ConfusionMatrix(3).update(PRED[:2], TRUTH[:2]) + ConfusionMatrix(3).update(PRED[2:], TRUTH[2:])
    np.testing.assert_array_equal(total.matrix, EXPECTED)
    running = ConfusionMatrix(3)
    for p, t in zip(PRED, TRUTH, strict=True):
        running.update(p[None], t[None])
    np.testing.assert_array_equal(running.matrix, EXPECTED)
    summed = sum([ConfusionMatrix(3).update(PRED, TRUTH), ConfusionMatrix(3).update(PRED, TRUTH)])
    np.testing.assert_array_equal(summed.matrix, 2 * EXPECTED)
    assert summed.miou() == pytest.approx(miou(EXPECTED))
    with pytest.raises(ValueError):
        ConfusionMatrix(3) + ConfusionMatrix(4)


def test_bad_inputs():
    with pytest.raises(ValueError):
        confusion_matrix(PRED, TRUTH[:2], 3)
    with pytest.raises(ValueError):
        confusion_matrix(PRED, np.where(TRUTH == 2, 7, TRUTH), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.where(PRED == 2, 255, PRED), TRUTH, 3)  # 255 predicted on a counted pixel
    with pytest.raises(ValueError):
        confusion_matrix(PRED.astype(float), TRUTH, 3)


def test_subset_lookup_by_name():
    source = [
        "background",
        "person",
        "bicycle",
        "car",
        "motorcycle",
        "airplane",
        "truck",
        "dining_table",
        "TV",
        "couch",
    ]
    lookup = subset_lookup(source)
    np.testing.assert_array_equal(lookup, [0, 15, 2, 7, 14, 1, 255, 11, 20, 18])
    np.testing.assert_array_equal(subset_lookup(source, unmatched=0)[6], 0)
    assert len(COCO_TO_VOC) == 21 and len(VOC_CLASSES) == 21
    assert sorted(subset_lookup(list(COCO_TO_VOC))) == list(range(21))
    # names already in the target list match as they are
    np.testing.assert_array_equal(subset_lookup(["dog", "zebra"], ["background", "dog"], {}), [1, 255])


def test_remap_to_subset_ignores_other_truth_classes_and_scores_other_predictions_as_background():
    source = ["background", "person", "truck", "car"]  # -> VOC 0, 15, (none), 7
    truth = np.array([[1, 2, 0, 255, 1, 3]])
    pred = np.array([[1, 1, 2, 3, 2, 3]])
    cm = ConfusionMatrix.for_subset(source).update(pred, truth)
    assert cm.num_classes == 21
    expected = np.zeros((21, 21), np.int64)
    expected[15, 15] = 1  # person / person
    expected[0, 0] = 1  # truck predicted on background counts as background
    expected[15, 0] = 1  # truck predicted on a person: a miss for person
    expected[7, 7] = 1  # car / car
    np.testing.assert_array_equal(cm.matrix, expected)  # truth truck and truth 255 ignored
    iou = cm.iou()
    assert iou[15] == pytest.approx(0.5) and iou[0] == pytest.approx(0.5) and iou[7] == 1.0
    assert np.isnan(iou[1])
    # the same lookup for both: predicting an ignored class on a counted pixel is an error
    remap = subset_lookup(source)
    with pytest.raises(ValueError, match="pred_remap"):
        confusion_matrix(pred, truth, 21, remap=remap)
    np.testing.assert_array_equal(
        confusion_matrix(pred, truth, 21, remap=remap, pred_remap=subset_lookup(source, unmatched=0)), expected
    )


def test_summarise_names_each_class_iou():
    cm = ConfusionMatrix(4).update(PRED, TRUTH)  # class 3 absent
    out = summarise(cm, ["a", "b", "c", "d"])
    assert out["miou"] == pytest.approx((0.5 + 4 / 6 + 0.5) / 3)
    assert out["miou_absent_as_zero"] == pytest.approx((0.5 + 4 / 6 + 0.5) / 4)
    assert out["classes_present"] == 3 and out["pixel_accuracy"] == pytest.approx(8 / 11)
    assert out["iou"] == {"a": 0.5, "b": pytest.approx(4 / 6), "c": 0.5, "d": None}
    assert out["mean_class_accuracy"] == pytest.approx((2 / 3 + 4 / 4 + 2 / 4) / 3)  # d has no truth pixel


def test_summarise_without_background_leaves_class_0_out_of_the_means():
    cm = ConfusionMatrix(4).update(PRED, TRUTH)
    out = summarise(cm, ["background", "b", "c", "d"], background=False)
    assert out["miou"] == pytest.approx((4 / 6 + 0.5) / 2)
    assert out["miou_absent_as_zero"] == pytest.approx((4 / 6 + 0.5) / 3)
    assert out["classes_present"] == 2 and "background" not in out["iou"]
    assert out["mean_class_accuracy"] == pytest.approx((4 / 4 + 2 / 4) / 2)
    assert out["pixel_accuracy"] == summarise(cm, ["background", "b", "c", "d"])["pixel_accuracy"]


def test_covers_voc_by_voc_or_coco_names():
    assert covers_voc(list(VOC_CLASSES))
    assert covers_voc(list(COCO_TO_VOC) + ["truck"])
    assert not covers_voc(list(VOC_CLASSES)[:-1])


def test_fit_to_truth_scales_a_working_size_map_and_names_misfits():
    truth = np.zeros((4, 6), np.uint8)
    pred = np.arange(6).reshape(2, 3)
    same, why = fit_to_truth(truth + 1, truth, (4, 6), (2, 3))
    assert why == "" and np.array_equal(same, truth + 1)
    up, why = fit_to_truth(pred, truth, (None, None), (2, 3))
    assert why == "" and up.shape == (4, 6)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(pred, 2, axis=0), 2, axis=1))
    assert fit_to_truth(pred, truth, (5, 6), (2, 3)) == (None, "truth is 4x6 but the image is 5x6")
    assert fit_to_truth(pred, truth, (4, 6), (4, 6)) == (None, "label map is 2x3 but the truth is 4x6")
