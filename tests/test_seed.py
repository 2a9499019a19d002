"""Seed labels on synthetic features where the right answer is known."""

import numpy as np
import pytest

from maskbank.tasks.seed import SeedConfig, best_match_per_image, class_contrast, seed_proposals

DIM = 16


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def world():
    """Six images over classes {1: dog, 2: cat}; every image has one sky (background) proposal.

    Images 0-1: dog; 2-3: cat; 4-5: dog and cat. Class directions are orthogonal; each proposal is its
    class direction plus small noise.
    """
    rng = np.random.default_rng(0)
    axes = np.eye(DIM)
    sky, dog, cat = axes[0], axes[1], axes[2]
    labels = np.zeros((6, 3), bool)
    labels[[0, 1, 4, 5], 1] = True
    labels[[2, 3, 4, 5], 2] = True
    feats, index, truth = [], [], []
    for i in range(6):
        parts = [(sky, 0)] + [(dog, 1)] * int(labels[i, 1]) + [(cat, 2)] * int(labels[i, 2])
        for direction, t in parts:
            feats.append(direction + 0.05 * rng.standard_normal(DIM))
            index.append(i)
            truth.append(t)
    return _unit(np.array(feats, np.float32)), np.array(index), labels, np.array(truth)


def test_best_match_excludes_own_image(world):
    feats, index, labels, _ = world
    best = best_match_per_image(feats, index, 6)
    assert best.shape == (len(feats), 6)
    assert np.all(np.isneginf(best[np.arange(len(feats)), index]))
    # the dog of image 0 best-matches a dog in image 1 (cosine near 1) and only sky/cat in image 2
    dog0 = np.flatnonzero((index == 0))[1]
    assert best[dog0, 1] > 0.95 and best[dog0, 2] < 0.2


def test_contrast_separates_objects_from_shared_background(world):
    feats, index, labels, truth = world
    best = best_match_per_image(feats, index, 6)
    e = class_contrast(best, labels, quantile=0.75)
    dogs, skies = truth == 1, truth == 0
    assert e[dogs, 1].min() > 0.5  # dogs match dog images far better than images without dogs
    assert np.abs(e[skies, 1]).max() < 0.2  # sky matches both groups alike


def test_seeds_recover_the_truth(world):
    feats, index, labels, truth = world
    res = seed_proposals(feats, index, labels, config=SeedConfig(rounds=2))
    np.testing.assert_array_equal(res.labels, truth)
    # classes outside an image's labels are never chosen
    assert np.all(np.isneginf(res.scores[index < 2, 2]))


def test_claimed_labels_and_saliency_moves_background():
    # one image labelled {1} whose only proposal looks like shared background: it is still claimed by 1
    feats = _unit(np.array([[1, 0, 0], [1, 0.01, 0], [1, 0, 0.01]], np.float32))
    index = np.array([0, 1, 2])
    labels = np.array([[0, 1], [0, 0], [0, 0]], bool)
    res = seed_proposals(feats, index, labels, config=SeedConfig(rounds=0, claim_labels=True))
    assert res.labels[0] == 1 and res.labels[1] == 0 and res.labels[2] == 0
    # with two proposals in the labelled image the salient one is the object
    feats2 = _unit(np.array([[1, 0, 0], [1, 0.02, 0], [1, 0.01, 0], [1, 0, 0.01]], np.float32))
    index2 = np.array([0, 0, 1, 2])
    labels2 = np.array([[0, 1], [0, 0], [0, 0]], bool)
    sal = np.array([0.1, 0.95, 0.5, 0.5], np.float32)
    res2 = seed_proposals(feats2, index2, labels2, saliency=sal, config=SeedConfig(rounds=0))
    np.testing.assert_array_equal(res2.labels[:2], [0, 1])


def test_empty_input():
    res = seed_proposals(np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros((2, 3), bool))
    assert res.labels.shape == (0,) and res.scores.shape == (0, 3)
