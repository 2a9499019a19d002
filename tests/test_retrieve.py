import numpy as np
import pytest
import torch

from maskbank.tasks.bank import PrototypeBank
from maskbank.tasks.retrieve import BankIndex, allowed_matrix, classify

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _unit(rows):
    rows = np.asarray(rows, np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _bank(vectors, labels, num_classes):
    labels = np.asarray(labels)
    return PrototypeBank(_unit(vectors), labels, np.arange(labels.size), [f"c{i}" for i in range(num_classes)])


def _angles(cosines):
    """2-D unit vectors whose similarity to [1, 0] is each of ``cosines``."""
    cosines = np.asarray(cosines, np.float64)
    return np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)


def _background_heavy_bank():
    # 30 background prototypes moderately similar to e1, 3 class-1 prototypes very similar to it.
    t = np.linspace(-0.5, 0.5, 30)
    background = np.stack([np.ones(30), np.full(30, 0.5), t], axis=1)
    foreground = np.array([[0.1, 1, 0], [0, 1, 0.1], [-0.1, 1, 0]])
    return _bank(np.concatenate([background, foreground]), [0] * 30 + [1] * 3, 2), background, foreground


@pytest.mark.parametrize("device", DEVICES)
def test_majority_is_dominated_by_background_but_class_balanced_is_not(device):
    bank, background, foreground = _background_heavy_bank()
    query = np.array([[0, 1, 0]], np.float32)
    sims_bg = np.sort(_unit(background) @ query[0])[::-1]
    sims_fg = _unit(foreground) @ query[0]

    labels, scores, class_scores = classify(query, bank, rule="majority", k=25, device=device)
    assert labels.tolist() == [0]
    np.testing.assert_allclose(scores, [sims_bg[:22].mean()], rtol=1e-5)
    np.testing.assert_allclose(class_scores, [[22 / 25, 3 / 25]], rtol=1e-6)

    labels, scores, class_scores = classify(query, bank, rule="class_balanced", k=5, device=device)
    assert labels.tolist() == [1]
    np.testing.assert_allclose(class_scores, [[sims_bg[:5].mean(), sims_fg.mean()]], rtol=1e-5)
    np.testing.assert_allclose(scores, [sims_fg.mean()], rtol=1e-5)
    _, margin, _ = classify(query, bank, rule="class_balanced", k=5, margin=True, device=device)
    np.testing.assert_allclose(margin, [sims_fg.mean() - sims_bg[:5].mean()], rtol=1e-5)


def test_knn_weighted_normalises_votes_by_class_frequency():
    bank, background, foreground = _background_heavy_bank()
    query = np.array([[0, 1, 0]], np.float32)
    labels, scores, class_scores = classify(query, bank, rule="knn_weighted", k=6)
    # 3 bg and 3 fg neighbours; weights 33/30 and 33/3
    assert labels.tolist() == [1]
    votes = np.array([3 * 33 / 30, 3 * 33 / 3])
    np.testing.assert_allclose(class_scores, [votes / votes.sum()], rtol=1e-5)
    np.testing.assert_allclose(scores, [(_unit(foreground) @ query[0]).mean()], rtol=1e-5)
    labels, _, _ = classify(query, bank, rule="majority", k=9)
    assert labels.tolist() == [0]


def test_majority_tie_goes_to_larger_summed_similarity():
    cos = [0.99, 0.5, 0.9, 0.8, 0.1, 0.0]
    bank = _bank(_angles(cos), [1, 1, 2, 2, 0, 0], 3)
    labels, scores, class_scores = classify(np.array([[1, 0]], np.float32), bank, rule="majority", k=4)
    assert labels.tolist() == [2]
    np.testing.assert_allclose(scores, [0.85], rtol=1e-5)
    np.testing.assert_allclose(class_scores, [[0, 0.5, 0.5]], atol=1e-7)


def test_allowed_restricts_candidates():
    cos = [0.99, 0.95, 0.9, 0.6, 0.5, 0.4]
    bank = _bank(_angles(cos), [1, 1, 1, 2, 2, 0], 3)
    queries = np.array([[1, 0], [1, 0], [1, 0]], np.float32)
    allowed = [[0, 1, 2], [0, 2], []]
    for rule in ("majority", "class_balanced", "knn_weighted"):
        labels, scores, class_scores = classify(queries, bank, rule=rule, k=3, allowed=allowed)
        assert labels.tolist() == [1, 2, -1], rule
        assert np.isneginf(class_scores[1, 1]) and np.isneginf(class_scores[2]).all()
        assert np.isneginf(scores[2])
        np.testing.assert_allclose(scores[1], 0.55, rtol=1e-5)  # mean of class 2's two prototypes
    matrix = allowed_matrix(allowed, 3, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 1], [1, 0, 1], [0, 0, 0]])
    same = classify(queries, bank, rule="class_balanced", k=3, allowed=matrix)
    np.testing.assert_array_equal(same[0], [1, 2, -1])
    with pytest.raises(ValueError):
        allowed_matrix([[0, 3]], 1, 3)
    with pytest.raises(ValueError):
        allowed_matrix(np.ones((2, 3), bool), 1, 3)


def test_zero_query_is_unassigned_and_empty_inputs():
    bank = _bank(_angles([0.9, 0.1]), [1, 0], 2)
    allowed = np.ones((2, 2), bool)
    labels, scores, _ = classify(np.array([[0, 0], [1, 0]], np.float32), bank, rule="majority", allowed=allowed)
    assert labels.tolist() == [-1, 1] and np.isneginf(scores[0])
    assert allowed.all()  # the caller's matrix is left as it was
    labels, scores, class_scores = classify(np.zeros((0, 2), np.float32), bank)
    assert labels.shape == (0,) and class_scores.shape == (0, 2)
    with pytest.raises(ValueError):
        classify(np.zeros((1, 3), np.float32), bank)
    with pytest.raises(ValueError):
        classify(np.zeros((1, 2), np.float32), bank, rule="nearest")
    with pytest.raises(ValueError):
        classify(np.zeros((1, 2), np.float32), bank, rule="majority", margin=True)


def _brute_force(queries, bank, rule, k):
    sims = _unit(queries) @ bank.vectors.T
    out_labels, out_scores = [], []
    for row in sims:
        if rule == "class_balanced":
            per_class = np.full(bank.num_classes, -np.inf)
            for c in range(bank.num_classes):
                member = np.sort(row[bank.labels == c])[::-1]
                if member.size:
                    per_class[c] = member[:k].mean()
            out_labels.append(per_class.argmax())
            out_scores.append(per_class.max())
        else:
            nn = np.argsort(-row, kind="stable")[:k]
            votes = np.bincount(bank.labels[nn], minlength=bank.num_classes)
            summed = np.bincount(bank.labels[nn], weights=row[nn], minlength=bank.num_classes)
            tied = votes == votes.max()
            winner = int(np.argmax(np.where(tied, summed, -np.inf)))
            out_labels.append(winner)
            out_scores.append(summed[winner] / votes[winner])
    return np.array(out_labels), np.array(out_scores)


@pytest.mark.parametrize("rule,k", [("majority", 25), ("class_balanced", 5)])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_brute_force_and_chunking_does_not_change_results(rule, k, device):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=400)
    labels[:3] = [0, 1, 2]
    bank = _bank(rng.normal(size=(400, 16)), labels, 7)  # class 6 has no prototypes
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    expected_labels, expected_scores = _brute_force(queries, bank, rule, k)
    whole = BankIndex(bank, device=device).classify(queries, rule=rule, k=k)
    chunked = BankIndex(bank, device=device, memory_budget=1).classify(queries, rule=rule, k=k)
    np.testing.assert_array_equal(whole[0], expected_labels)
    np.testing.assert_allclose(whole[1], expected_scores, rtol=1e-5)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    if rule == "class_balanced":
        assert np.isneginf(whole[2][:, 6]).all()


def test_knn_returns_bank_rows_in_original_order():
    bank = _bank(_angles([0.2, 0.9, 0.5, 0.95]), [0, 1, 0, 2], 3)
    sims, rows = BankIndex(bank).knn(np.array([[1, 0]], np.float32), k=3)
    np.testing.assert_array_equal(rows, [[3, 1, 2]])
    np.testing.assert_allclose(sims, [[0.95, 0.9, 0.5]], rtol=1e-6)
