import json

import numpy as np
import pytest

from maskbank.tasks import rle


def test_round_trip_random_and_edge_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 7, 11)) < 0.4
    masks[3] = False
    masks[4] = True
    rles = rle.encode(masks)
    assert len(rles) == 5
    assert all(r["size"] == [7, 11] and isinstance(r["counts"], str) for r in rles)
    json.loads(json.dumps(rles))
    np.testing.assert_array_equal(rle.decode(rles, (7, 11)), masks)
    np.testing.assert_array_equal(rle.area(rles), masks.sum(axis=(1, 2)))


def test_known_values():
    m = np.zeros((1, 5, 7), bool)
    m[0, 1:3, 2:6] = True
    (r,) = rle.encode(m)
    assert r == {"size": [5, 7], "counts": ";23000004"}
    np.testing.assert_array_equal(rle.bbox([r]), [[2, 1, 4, 2]])
    assert rle.bbox([r]).dtype == np.int32 and rle.area([r]).dtype == np.int64
    np.testing.assert_array_equal(rle.area([r]), [8])


def test_empty_inputs():
    assert rle.encode(np.zeros((0, 3, 4), bool)) == []
    assert rle.decode([], (3, 4)).shape == (0, 3, 4)
    assert rle.area([]).shape == (0,) and rle.bbox([]).shape == (0, 4)
    np.testing.assert_array_equal(rle.bbox(rle.encode(np.zeros((1, 3, 4), bool))), [[0, 0, 0, 0]])


def test_errors():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        rle.encode(np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="RLE size"):
        rle.decode(rle.encode(np.zeros((1, 3, 4), bool)), (4, 3))
