import numpy as np
import pytest

from maskbank.tasks.purify import PurifyParams, erode_region, purify_regions, scaled_iterations


def _square(size=60, top=15, left=15, side=30):
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_erode_square_by_five_leaves_twenty_by_twenty():
    eroded = erode_region(_square(), 5)
    ys, xs = np.nonzero(eroded)
    assert eroded.dtype == bool
    assert eroded.sum() == 400
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 39, 20, 39)


def test_square_touching_frame_keeps_its_frame_sides():
    eroded = erode_region(_square(top=0, left=0), 5)
    ys, xs = np.nonzero(eroded)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 24, 0, 24)
    assert eroded.sum() == 25 * 25


def test_erode_zero_iterations_and_bigger_kernel():
    mask = _square()
    assert np.array_equal(erode_region(mask, 0), mask)
    assert erode_region(mask, 2, kernel=5).sum() == 22 * 22  # each 5x5 pass removes 2 px
    with pytest.raises(ValueError):
        erode_region(mask, 1, kernel=4)
    with pytest.raises(ValueError):
        erode_region(mask, -1)


def test_scaled_iterations():
    mask = _square()  # area 900 -> r = 16.93
    assert scaled_iterations(mask, 0.25, 20) == 4
    assert scaled_iterations(mask, 0.25, 3) == 3
    assert scaled_iterations(np.ones((400, 400), bool), 0.25, 20) == 20
    assert scaled_iterations(np.zeros((5, 5), bool), 0.25, 20) == 0


def _label_map():
    lm = np.zeros((100, 100), np.int32)
    lm[10:40, 10:40] = 1  # 30x30 object
    lm[60:66, 60:66] = 2  # 6x6 object
    return lm


def test_moduseg_rule_fixed_iterations_drops_small_regions():
    regions = PurifyParams(iterations=5, min_area=300, fallback=False).apply(_label_map(), [1, 2])
    assert list(regions) == [1, 0]  # class 2 (6x6) is erased; background comes last
    assert regions[1].sum() == 400  # 30x30 -> 20x20
    # background: 100x100 minus both objects grown by 5 px; frame sides are not eroded
    expected = 10000 - 40 * 40 - 16 * 16
    assert regions[0].sum() == expected
    assert not regions[0][5:45, 5:45].any() and regions[0][4, 4]


def test_moduseg_preset_drops_30px_square():
    lm = _label_map()
    regions = PurifyParams.moduseg().apply(lm, [1, 2])
    assert list(regions) == [0]  # 20 iterations erase the 30x30 square


def test_scaled_rule_with_fallback_keeps_lighter_erosion():
    lm = _label_map()
    regions = purify_regions(lm, [1, 2], iterations="scaled", fraction=0.25, min_area=20)
    # class 1: 4 iterations -> 22x22; class 2 (area 36, r=3.39): round(0.85)=1 iteration -> 4x4=16 < 20,
    # raw 36 >= 20 so it falls back to 0 iterations.
    assert regions[1].sum() == 22 * 22
    assert regions[2].sum() == 36
    assert 0 in regions
    no_fallback = purify_regions(lm, [1, 2], iterations="scaled", min_area=20, fallback=False)
    assert 2 not in no_fallback


def test_fallback_picks_strongest_erosion_meeting_min_area():
    mask_map = _square().astype(np.int32)  # 30x30, erosions: 28^2=784, 26^2=676, 24^2=576, 22^2=484
    regions = purify_regions(mask_map, [1], iterations=10, min_area=500, background=None)
    assert list(regions) == [1]
    assert regions[1].sum() == 576


def test_regions_below_min_area_before_erosion_are_dropped_and_background_listed_once():
    lm = _label_map()
    regions = purify_regions(lm, [0, 2, 7], iterations=0, min_area=37)
    assert list(regions) == [0]
    with pytest.raises(ValueError):
        purify_regions(lm.astype(np.float32), [1])
    with pytest.raises(ValueError):
        purify_regions(lm, [1], iterations="big")


def test_fallback_path_matches_single_erosion_when_area_suffices():
    lm = _label_map()
    with_fallback = purify_regions(lm, [1], iterations=5, min_area=300)
    assert list(with_fallback) == [1, 0]
    for cls, region in with_fallback.items():
        assert np.array_equal(region, erode_region(lm == cls, 5))


def test_flow_bank_default_is_the_purify_default():
    from maskbank.flows.params import BankParams
    from maskbank.flows.stages.bank import purify_params

    assert purify_params(BankParams(), (375, 500)).min_area == PurifyParams().min_area == 300
