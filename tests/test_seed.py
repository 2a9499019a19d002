"""Seed labels on synthetic features where the right answer is known, and the streamed, capped seeding
against the dense reference."""

import numpy as np
import pytest

import seed_reference as reference
from seed_reference import best_match_per_image, class_contrast
from maskbank.tasks.seed import SeedConfig, evidence_images, seed_images, seed_proposals

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
    assert np.all(np.isfinite(res.scores))


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


def test_without_background_every_proposal_takes_one_of_its_image_labels():
    """A scene collection (sky, grass, cow; no background class): every proposal of a labelled image gets one
    of its labels, the right one, in every round, whatever the foreground prior says; an image labelled with
    nothing keeps background."""
    rng = np.random.default_rng(1)
    axes = np.eye(DIM)
    scenes = [(1, 2), (1, 2, 3), (2, 3), (1, 3), (1, 2), (2, 3), (1, 2, 3), ()]
    labels = np.zeros((len(scenes), 4), bool)
    feats, index, truth = [], [], []
    for i, classes in enumerate(scenes):
        labels[i, list(classes)] = True
        for c in classes or (0,):
            for _ in range(2):
                feats.append(axes[c] + 0.05 * rng.standard_normal(DIM))
                index.append(i)
                truth.append(c)
    feats, index, truth = _unit(np.array(feats, np.float32)), np.array(index), np.array(truth)
    for rounds in (0, 2):
        config = SeedConfig(rounds=rounds, background=False)
        res = seed_proposals(feats, index, labels, config=config)
        np.testing.assert_array_equal(res.labels, truth)
        assert np.all(np.isfinite(res.scores))
        salient = seed_proposals(feats, index, labels, saliency=rng.uniform(0, 1, len(feats)).astype(np.float32),
                                 config=config)
        np.testing.assert_array_equal(salient.labels, truth)


def test_classes_in_every_labelled_image_are_named():
    from maskbank.tasks.collection import label_evidence

    names = ["background", "a", "b", "c", "d"]
    labels = np.zeros((4, 5), bool)
    labels[:3, 1] = True  # in every labelled image
    labels[:3, 2] = [True, False, True]
    labels[:3, 4] = True
    assert label_evidence(labels, names)["everywhere"] == ["a", "d"]  # image 3 has no labels and does not count
    assert label_evidence(labels[:1], names)["everywhere"] == []  # one image: nothing to contrast anyway
    assert label_evidence(np.zeros((3, 5), bool), names)["everywhere"] == []


def test_empty_input():
    res = seed_proposals(np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros((2, 3), bool))
    assert res.labels.shape == (0,) and res.scores.shape == (0,)


def _random_world(rng, n_img, n_cls, dim=24, max_props=12):
    labels = np.zeros((n_img, n_cls), bool)
    for i in range(n_img):
        labels[i, rng.choice(np.arange(1, n_cls), rng.integers(1, min(4, n_cls)), replace=False)] = True
    centers = rng.standard_normal((n_cls, dim))
    feats, index = [], []
    for i in range(n_img):
        for _ in range(rng.integers(0, max_props) if i % 7 else 0):  # every 7th image has no proposal
            c = rng.choice(np.flatnonzero(labels[i])) if rng.random() < 0.5 else 0
            feats.append(centers[c] + rng.standard_normal(dim))
            index.append(i)
    f = np.array(feats, np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    perm = rng.permutation(len(f))
    return f[perm], np.array(index)[perm], labels, rng.random(len(f)).astype(np.float32)


@pytest.mark.parametrize("change", [{}, {"rounds": 0}, {"claim_labels": False}, {"rounds": 3, "top_per_class": 2},
                                    {"quantile": 0.5, "background_bias": 0.0}])
@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_seeding_equals_the_dense_reference_below_the_cap(change, seed):
    feats, index, labels, sal = _random_world(np.random.default_rng(seed), 40 + 10 * seed, 7 + 4 * seed)
    for saliency in (None, sal):
        want = reference.seed_proposals(feats, index, labels, saliency=saliency, config=reference.SeedConfig(**change))
        got = seed_proposals(feats, index, labels, saliency=saliency, config=SeedConfig(block=37, **change))
        np.testing.assert_array_equal(got.labels, want.labels)
        chosen = np.take_along_axis(want.scores, want.labels[:, None].astype(np.int64), 1)[:, 0]
        np.testing.assert_allclose(got.scores, chosen, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.confidence, want.confidence, rtol=0, atol=1e-5)
        assert ((got.confidence > 0) & (got.confidence <= 1)).all()


def test_evidence_groups_are_capped_in_priority_order():
    labels = np.zeros((6, 3), bool)
    labels[[0, 2, 3, 5], 1] = True
    labels[[1, 4], 2] = True
    counts = np.array([3, 0, 2, 2, 1, 4])
    priority = np.array([5, 0, 4, 3, 2, 1])  # image 1 first, then 5, 4, 3, 2, 0
    ref, pos = evidence_images(labels, counts, per_class=2, reference=2, priority=priority)
    np.testing.assert_array_equal(ref, [5, 4])  # image 1 has no proposal
    np.testing.assert_array_equal(pos[1], [5, 3])
    np.testing.assert_array_equal(pos[2], [4])


def test_memory_is_bounded_by_the_cap_and_the_block():
    """Above the cap no read asks for more than the cap's images or a block's proposals, and every
    proposal still gets one of its image's labels or background."""
    rng = np.random.default_rng(3)
    feats, index, labels, _ = _random_world(rng, 300, 6, max_props=8)
    order = np.argsort(index, kind="stable")
    counts = np.bincount(index, minlength=len(labels))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    sorted_feats = feats[order]
    asked = []

    def read(images, saliency):
        asked.append((len(images), int(counts[images].sum())))
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in images])
        return sorted_feats[rows], None

    cap, block = 20, 64
    res = seed_images(read, counts, labels, config=SeedConfig(evidence_per_class=cap, reference_images=cap, block=block))
    assert max(n for n, p in asked if p > block) <= cap
    assert all(n <= cap or p <= block for n, p in asked)
    owner = np.repeat(np.arange(len(labels)), counts)
    assert np.all((res.labels == 0) | labels[owner, res.labels])
    # a cap at the collection's size is no cap
    full = seed_images(read, counts, labels, config=SeedConfig(evidence_per_class=len(labels), reference_images=len(labels), block=block))
    dense = reference.seed_proposals(sorted_feats, owner, labels)
    np.testing.assert_array_equal(full.labels, dense.labels)


def test_confidence_ranks_right_seeds_above_wrong_ones():
    """On a noisy world where some seeds go wrong, the more confident half of the proposals is right more
    often than the less confident half, by a clear margin; a proposal that may take one class only is certain."""
    rng = np.random.default_rng(7)
    n_img, n_cls, dim = 60, 6, 24
    centers = _unit(rng.standard_normal((n_cls, dim)))
    labels = np.zeros((n_img, n_cls), bool)
    feats, index, truth = [], [], []
    for i in range(n_img):
        labels[i, rng.choice(np.arange(1, n_cls), 2, replace=False)] = True
        for c in [0, *np.flatnonzero(labels[i])]:
            feats.append(centers[c] + 1.5 * rng.standard_normal(dim) / np.sqrt(dim))
            index.append(i)
            truth.append(c)
    feats, index, truth = _unit(np.array(feats, np.float32)), np.array(index), np.array(truth)
    res = seed_proposals(feats, index, labels)
    right = res.labels == truth
    order = np.argsort(-res.confidence, kind="stable")
    top, bottom = right[order[: len(order) // 2]].mean(), right[order[len(order) // 2:]].mean()
    assert 0.2 < right.mean() < 0.95, right.mean()  # a world where seeding errs, and is not random
    assert top > bottom + 0.3, (top, bottom)  # about 0.85 against 0.4 whatever the world's seed
    one_label = np.zeros((2, 3), bool)
    one_label[:, 1] = True
    certain = seed_proposals(feats[:4], np.array([0, 0, 1, 1]), one_label,
                             config=SeedConfig(background=False))
    np.testing.assert_array_equal(certain.confidence, 1.0)
