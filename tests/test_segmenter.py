"""The second stage's head (tasks/segmenter.py) on synthetic worlds where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.segmenter import (
    SegmenterConfig, TokenSample, fill_uncovered, pixel_labels, proposal_votes, token_targets, train_head,
)

GRID, PATCH, CHANNELS, CLASSES = 8, 4, 32, 6


def _world(images: int = 40, wrong: float = 0.35, seed: int = 0):
    """Images of two or three classes (class 0 never), each class a region of the token grid whose tokens
    are the class's direction plus noise; the proposals are the regions (split in halves), and a share
    ``wrong`` of them carry a wrong label among the image's labels, with lower confidence."""
    directions = np.random.default_rng(99).normal(size=(CLASSES, CHANNELS))  # the same classes in every world
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        labels = sorted(rng.choice(np.arange(1, CLASSES), size=rng.integers(2, 4), replace=False).tolist())
        cuts = np.sort(rng.choice(np.arange(1, GRID), size=len(labels) - 1, replace=False))
        truth = np.zeros((GRID, GRID), np.int64)
        for c, lo, hi in zip(labels, [0, *cuts], [*cuts, GRID]):
            truth[:, lo:hi] = c
        features = directions[truth] + rng.normal(scale=1.2, size=(GRID, GRID, CHANNELS))
        regions = [(truth == c) & half for c in labels for half in (np.arange(GRID)[:, None] < GRID // 2,
                                                                      np.arange(GRID)[:, None] >= GRID // 2)]
        props, seeds, conf = [], [], []
        for r in regions:
            c = int(truth[r][0])
            bad = rng.random() < wrong
            props.append(r)
            seeds.append(int(rng.choice([x for x in labels if x != c])) if bad else c)
            conf.append(0.4 if bad else 0.8)
        out.append(dict(labels=labels, truth=truth, features=features.astype(np.float32),
                        cover=np.stack(props).reshape(len(props), -1).astype(np.float32),
                        seeds=np.array(seeds), conf=np.array(conf, np.float32)))
    return out


def _trained(world, config=SegmenterConfig(epochs=20, batch_tokens=256)):
    sample = TokenSample(100_000)
    for i, im in enumerate(world):
        labels, weights = token_targets(im["cover"], im["seeds"], im["conf"])
        sample.add(f"image-{i}", im["features"].reshape(-1, CHANNELS), labels, weights, im["labels"])
    return train_head(sample, CLASSES, config)


def test_the_head_corrects_noisy_seeds_by_a_clear_margin():
    world = _world()
    head, loss = _trained(world)
    assert np.isfinite(loss)
    test = _world(images=30, seed=1)
    geometry = PatchGeometry((GRID * PATCH, GRID * PATCH), (GRID * PATCH, GRID * PATCH), PATCH, (GRID, GRID))
    right = seeds_right = chance = total = 0
    for im in test:
        labels, prob = pixel_labels(head, im["features"], geometry, im["labels"])
        truth = np.kron(im["truth"], np.ones((PATCH, PATCH), np.int64))
        assert set(np.unique(labels)) <= set(im["labels"]) and (prob > 0).all() and (prob <= 1).all()
        right += int((labels == truth).sum())
        seeds_right += int(sum(((im["cover"][i] > 0) & (im["truth"].reshape(-1) == s)).sum() * PATCH * PATCH
                               for i, s in enumerate(im["seeds"])))
        chance += truth.size / len(im["labels"])
        total += truth.size
    accuracy, seeds_accuracy, chance_accuracy = right / total, seeds_right / total, chance / total
    assert accuracy > seeds_accuracy + 0.15, (accuracy, seeds_accuracy)
    assert accuracy > chance_accuracy + 0.4, (accuracy, chance_accuracy)


def test_proposal_votes_take_the_class_of_highest_mean_probability():
    world = _world()
    head, _ = _trained(world)
    im = _world(images=1, seed=2)[0]
    labels, scores = proposal_votes(head, im["features"], im["cover"], im["labels"])
    truth = [int(im["truth"].reshape(-1)[c > 0][0]) for c in im["cover"]]
    assert (labels == np.array(truth)).mean() >= 0.75
    assert ((scores > 0) & (scores <= 1)).all()
    everything, _ = proposal_votes(head, im["features"], im["cover"], None)
    assert set(everything.tolist()) <= set(range(CLASSES))
    empty = proposal_votes(head, im["features"], np.zeros((0, GRID * GRID), np.float32))
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_token_targets_take_the_most_confident_cover_and_skip_unlabelled_proposals():
    cover = np.array([[1.0, 0.5, 0.0, 0.0],
                      [0.0, 0.5, 0.2, 0.0],
                      [0.0, 0.0, 0.8, 0.0]], np.float32)
    labels, weights = token_targets(cover, np.array([2, 3, -1]), np.array([0.5, 0.9, 1.0], np.float32))
    assert labels.tolist()[:3] == [2, 3, 3]
    np.testing.assert_allclose(weights, [0.5, 0.45, 0.18, 0.0], rtol=1e-6)
    none = token_targets(cover, np.array([-1, -1, -1]), np.ones(3, np.float32))
    assert (none[1] == 0).all()


def test_the_token_sample_is_bounded_and_does_not_depend_on_the_order_of_images():
    rng = np.random.default_rng(0)
    images = [(f"k{i}", rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50),
               rng.random(50).astype(np.float32) * (rng.random(50) > 0.2), [0, 1, 2]) for i in range(30)]
    a, b = TokenSample(120), TokenSample(120)
    for im in images:
        a.add(*im)
        assert a._held <= 120 + 30 + 50  # the cap, a quarter more, and one image
    for im in reversed(images):
        b.add(*im)
    assert len(a) == len(b) == 120
    ta, tb = a.arrays()[0], b.arrays()[0]
    assert sorted(map(bytes, ta)) == sorted(map(bytes, tb))
    assert a.offered == sum(int((im[3] > 0).sum()) for im in images)
    with pytest.raises(ValueError):
        TokenSample(0)
    with pytest.raises(ValueError, match="no training tokens"):
        train_head(TokenSample(10), 3)


def test_fill_takes_only_the_pixels_no_proposal_covers():
    painted = np.array([[1, 0], [2, 0]], np.uint8)
    covered = np.array([[True, True], [True, False]])
    filled = fill_uncovered(painted, covered, np.array([[5, 5], [5, 5]]))
    assert filled.tolist() == [[1, 0], [2, 5]] and filled.dtype == np.uint8


def test_pixel_labels_cover_the_image_and_handle_many_classes(monkeypatch):
    import maskbank.tasks.segmenter as segmenter

    world = _world()
    head, _ = _trained(world)
    geometry = PatchGeometry((30, 27), (30, 27), PATCH, (8, 7))
    features = np.random.default_rng(3).normal(size=(8, 7, CHANNELS)).astype(np.float32)
    whole, p_whole = pixel_labels(head, features, geometry)
    monkeypatch.setattr(segmenter, "UPSAMPLE_CHANNELS", 2)  # classes upsampled a few at a time: same answer
    chunked, p_chunked = pixel_labels(head, features, geometry)
    assert whole.shape == (30, 27) and np.array_equal(whole, chunked)
    np.testing.assert_allclose(p_whole, p_chunked, rtol=1e-6)


def test_allowed_classes_and_proposal_cover():
    from maskbank.tasks.segmenter import allowed_classes, proposal_cover

    assert allowed_classes([3, 1], background=True) == [0, 1, 3]
    assert allowed_classes([3, 1], background=False) == [1, 3]
    assert allowed_classes(None, background=True) is None
    geometry = PatchGeometry((8, 12), (8, 12), 4, (2, 3))
    masks = np.zeros((2, 8, 12), bool)
    masks[0, :4, :4] = True  # the first cell whole
    masks[1, 4:, :2] = True  # half of the fourth
    cover = proposal_cover(geometry, masks)
    np.testing.assert_allclose(cover, [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0.5, 0, 0]])
    assert proposal_cover(geometry, masks[:0]).shape == (0, 6)
