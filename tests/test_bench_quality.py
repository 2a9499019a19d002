"""The quality benchmark: its scoring helpers against painted label maps, and a smoke run on the sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    ProposalTruth, fold_confusion, format_table, owner_map, proposal_confusion, resize_nearest,
)
from maskbank.tasks.classes import VOC_CLASSES  # noqa: E402
from maskbank.tasks.metrics import ConfusionMatrix, pixel_accuracy  # noqa: E402
from maskbank.tasks.paint import paint_by_score  # noqa: E402


def _disjoint_masks(rng: np.random.Generator, n: int, hw: tuple[int, int]) -> np.ndarray:
    owner = rng.integers(-1, n, size=hw)  # -1: in no proposal
    return owner[None] == np.arange(n)[:, None, None]


def test_proposal_confusion_equals_scoring_painted_maps():
    rng = np.random.default_rng(0)
    k, hw = 6, (23, 31)
    truths, labels, reference = [], [], ConfusionMatrix(k)
    for n in (7, 0, 3):
        masks = _disjoint_masks(rng, n, hw)
        truth = rng.integers(0, k, size=hw).astype(np.uint8)
        truth[rng.random(hw) < 0.1] = 255
        lab = rng.integers(-1, k, size=n)
        painted = paint_by_score(masks, lab, rng.random(n), nms_iou=0.4, num_classes=k)
        reference.update(painted, truth)
        truths.append(ProposalTruth.measure(owner_map(masks), n, truth, k))
        labels.append(lab)
    np.testing.assert_array_equal(proposal_confusion(truths, labels, k), reference.matrix)
    assert reference.matrix.sum() > 0


def test_majority_is_the_best_single_label_per_proposal():
    masks = np.zeros((2, 2, 5), bool)
    masks[0, 0, :] = True  # truth 1 1 2 2 2
    masks[1, 1, :2] = True  # truth 255 255: nothing counted
    truth = np.array([[1, 1, 2, 2, 2], [255, 255, 3, 0, 0]], np.uint8)
    pt = ProposalTruth.measure(owner_map(masks), 2, truth, 4)
    np.testing.assert_array_equal(pt.counts, [[0, 2, 3, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(pt.rest, [2, 0, 0, 1])
    np.testing.assert_array_equal(pt.majority(), [2, 0])
    np.testing.assert_array_equal(pt.majority([0, 1]), [1, 0])
    with pytest.raises(ValueError, match="overlap"):
        owner_map(np.ones((2, 2, 5), bool))
    with pytest.raises(ValueError, match="proposal indices"):
        ProposalTruth.measure(np.full((2, 5), 2), 2, truth, 4)


def test_resize_nearest_repeats_source_pixels():
    small = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(resize_nearest(small, (4, 6)), np.repeat(np.repeat(small, 2, 0), 2, 1))
    np.testing.assert_array_equal(resize_nearest(small, (2, 3)), small)


def test_fold_confusion_matches_subset_update():
    names = ["background", "person", "giraffe", "dog", "tv"]
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 5, size=(40, 40))
    truth = rng.integers(0, 5, size=(40, 40))
    truth[:3] = 255
    full = ConfusionMatrix(5).update(pred, truth).matrix
    folded = fold_confusion(full, ConfusionMatrix.for_subset(names))
    direct = ConfusionMatrix.for_subset(names).update(pred, truth)
    np.testing.assert_array_equal(folded.matrix, direct.matrix)
    assert folded.matrix.shape == (len(VOC_CLASSES),) * 2
    assert pixel_accuracy(full) == pytest.approx((pred == truth)[truth != 255].mean())


def test_format_table():
    table = format_table(["a", "b"], [["x", 0.5], ["yy", None]]).splitlines()
    assert table == ["a   b", "--  ------", "x   0.5000", "yy  -"]


@pytest.mark.real
def test_smoke_run_scores_every_row(prefect_harness, sample_root, tmp_path):
    from bench import quality

    out = tmp_path / "quality.json"
    quality.main(["--data", str(sample_root), "--store", str(tmp_path / "q.zarr"), "--out", str(out), "--smoke",
                  "--device", "cpu"])
    results = json.loads(out.read_text())
    assert results["images"] == {"train2017": 2, "val2017": 2}
    assert results["provenance"]["command"].startswith("python bench/quality.py --data ")
    assert "pseudo_labels" in out.with_suffix(".txt").read_text()
    rows = results["rows"]
    assert set(rows) == set(quality.ROWS)
    for name, row in rows.items():
        for metric in ("miou", "miou_voc21", "pixel_accuracy"):
            assert 0.0 <= row[metric] <= 1.0, (name, metric)
    # Guaranteed: per proposal, the majority class maximises the correctly labelled pixels among all labels
    # (oracle) or among the image's labels and background (restricted), and the seeds are one label per
    # proposal from that restricted set; retrieval rows label the same val proposals. (mIoU has no such guarantee,
    # nor have the pseudo-labels and the head's predictions: the head also labels pixels outside every proposal.)
    assert rows["oracle"]["pixel_accuracy"] >= rows["oracle_restricted"]["pixel_accuracy"]
    assert rows["oracle_restricted"]["pixel_accuracy"] >= rows["seeds"]["pixel_accuracy"]
    for name in ("retrieval", "gt_bank", "retrieval_moduseg", "gt_bank_moduseg"):
        assert rows["oracle_val"]["pixel_accuracy"] >= rows[name]["pixel_accuracy"], name
    assert all(c["ok"] for c in results["checks"].values()), results["checks"]
    groups = {(a["group"], a["row"]) for a in results["ablations"]}
    retrieval = {(g, r) for g in ("rule", "erosion", "filter_ratio") for r in ("gt_bank", "retrieval")}
    variants = {(g, r) for g, _ in quality.SMOKE_VARIANT_GRID for r in quality.VARIANT_ROWS}
    assert groups == retrieval | {("seeding", "pseudo_labels")} | variants
    per_bank = len(quality.RULE_GRID) + len(quality.EROSION_GRID) + len(quality.FILTER_GRID)
    per_variant = len(quality.VARIANT_ROWS)
    assert len(results["ablations"]) == (2 * per_bank + len(quality.SEED_GRID)
                                         + per_variant * len(quality.SMOKE_VARIANT_GRID))
    assert all(0.0 <= a["pixel_accuracy"] <= 1.0 for a in results["ablations"])
    assert all(a["images"] == 4 for a in results["ablations"] if a["row"] in ("pseudo_labels", "oracle"))
    assert 0.0 < results["proposals"]["coverage"] <= 1.0
    by_setting = {(a["setting"], a["row"]): a for a in results["ablations"] if "coverage" in a}
    # The layer only changes features: proposals, and so the oracle, are those of the defaults.
    layer = by_setting["embed.layer=11", "oracle"]
    assert layer["miou"] == pytest.approx(rows["oracle"]["miou"])
    assert layer["coverage"] == pytest.approx(results["proposals"]["coverage"])
    # Denser prompts change the proposals (the oracle is the proposals' own ceiling, so it is scored anew).
    dense = by_setting["propose.points_per_side=6", "oracle"]
    assert dense["proposals_per_image"] != results["proposals"]["per_image"] or dense["coverage"] != layer["coverage"]
    assert set(results["ratios"]) == set(quality.RATIOS)
