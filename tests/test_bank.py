import numpy as np
import pytest

from maskbank.tasks.bank import BankBuilder, PrototypeBank, filter_outliers, prototypes_for_image
from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.purify import PurifyParams


def _unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_filter_drops_floor_n_ratio_farthest_per_foreground_class():
    # class 1: five vectors, the last two far from the others; class 0 (background) has an outlier too.
    vectors = np.array([[1, 0], [1, 0.05], [1, -0.05], [0, 1], [-1, 0], [1, 0], [1, 0], [1, 0], [-1, 0]], np.float64)
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    keep = filter_outliers(vectors, labels, drop_ratio=0.25)
    # floor(5 * 0.25) = 1 dropped from class 1: row 4 ([-1, 0]) is farthest from the mean [0.6, 0.2]
    np.testing.assert_array_equal(keep, [1, 1, 1, 1, 0, 1, 1, 1, 1])
    keep = filter_outliers(vectors, labels, drop_ratio=0.4)  # floor(2.0) = 2 -> rows 3 and 4
    np.testing.assert_array_equal(keep, [1, 1, 1, 0, 0, 1, 1, 1, 1])
    keep = filter_outliers(vectors, labels, drop_ratio=0.4, background_drop_ratio=0.25)  # bg: floor(1) = 1
    np.testing.assert_array_equal(keep, [1, 1, 1, 0, 0, 1, 1, 1, 0])


def test_filter_small_classes_and_counts():
    rng = np.random.default_rng(1)
    labels = np.repeat([1, 2, 3], [3, 8, 13])
    vectors = rng.normal(size=(labels.size, 4))
    keep = filter_outliers(vectors, labels, drop_ratio=0.25)
    assert [int((~keep[labels == c]).sum()) for c in (1, 2, 3)] == [0, 2, 3]
    # the dropped rows of class 3 are exactly the 3 largest distances to the class mean
    members = vectors[labels == 3]
    distance = np.linalg.norm(members - members.mean(0), axis=1)
    np.testing.assert_array_equal(~keep[labels == 3], distance >= np.sort(distance)[-3])
    with pytest.raises(ValueError):
        filter_outliers(vectors, labels, drop_ratio=1.5)


def test_prototype_bank_validates():
    vectors = _unit([[1, 0], [0, 1]])
    bank = PrototypeBank(vectors, np.array([0, 2]), np.array([0, 0]), ["bg", "a", "b"])
    assert len(bank) == 2 and bank.dim == 2 and bank.num_classes == 3
    np.testing.assert_array_equal(bank.class_counts(), [1, 0, 1])
    assert bank.labels.dtype == np.int32 and bank.image_index.dtype == np.int32
    sub = bank.subset(np.array([False, True]))
    np.testing.assert_array_equal(sub.labels, [2])
    with pytest.raises(ValueError):
        PrototypeBank(vectors, np.array([0, 3]), np.array([0, 0]), ["bg", "a", "b"])
    with pytest.raises(ValueError):
        PrototypeBank(vectors * 2, np.array([0, 1]), np.array([0, 0]), ["bg", "a", "b"])
    with pytest.raises(ValueError):
        PrototypeBank(vectors, np.array([0]), np.array([0, 0]), ["bg", "a", "b"])


def test_prototypes_for_image_pools_purified_regions():
    # 16x16 image, patch 4 -> 4x4 grid; tokens: left half [1, 0, 0], right half [0, 1, 0], bottom row [0, 0, 1]
    geometry = PatchGeometry.for_image((16, 16), long_side=16, patch_size=4)
    features = np.zeros((4, 4, 3), np.float16)
    features[:, :2] = [1, 0, 0]
    features[:, 2:] = [0, 1, 0]
    label_map = np.zeros((16, 16), np.int32)
    label_map[:, 8:] = 1  # right half -> class 1
    label_map[0:2, 0:2] = 2  # 4 pixels of class 2: below min_area
    params = PurifyParams(iterations=1, min_area=10, fallback=False)
    vectors, labels = prototypes_for_image(features, geometry, label_map, [1, 2], params)
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(vectors[0], [0, 1, 0], atol=1e-6)
    # background (left half minus the class-2 corner, eroded by 1 px) lies only on left tokens
    np.testing.assert_allclose(vectors[1], [1, 0, 0], atol=1e-6)
    assert vectors.dtype == np.float32 and labels.dtype == np.int32


def test_prototypes_for_image_without_regions():
    geometry = PatchGeometry.for_image((8, 8), long_side=8, patch_size=4)
    vectors, labels = prototypes_for_image(
        np.ones((2, 2, 5), np.float16), geometry, np.zeros((8, 8), np.int32), [1], PurifyParams(min_area=100)
    )
    assert vectors.shape == (0, 5) and labels.shape == (0,)


def test_builder_concatenates_and_filters():
    builder = BankBuilder(["background", "cat"])
    builder.add(0, _unit([[1, 0], [0, 1]]), [1, 0])
    builder.add(3, _unit([[1, 0.1], [0, 1]]), [1, 0])
    builder.add(5, np.zeros((0, 2)), np.zeros(0, np.int32))
    builder.add(7, _unit([[-1, 0.2], [1, -0.1], [0.1, 1]]), [1, 1, 0])
    bank = builder.build(drop_ratio=0.25)  # cat has 4 -> drop 1 ([-1, 0.2] from image 7)
    np.testing.assert_array_equal(bank.labels, [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(bank.image_index, [0, 0, 3, 3, 7, 7])
    np.testing.assert_array_equal(bank.class_counts(), [3, 3])
    with pytest.raises(ValueError):
        builder.add(8, np.zeros((1, 3), np.float32), [0])
    with pytest.raises(ValueError):
        BankBuilder(["background"]).build()
    assert len(BankBuilder(["background"], dim=4).build()) == 0
