"""The speed benchmark: its recall and speed-up arithmetic, and a smoke run on the bundled sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import speed  # noqa: E402
from maskbank.tasks import rle  # noqa: E402


def _rles(*boxes: tuple[int, int, int, int], hw=(20, 20)) -> list[dict]:
    masks = np.zeros((len(boxes), *hw), bool)
    for m, (y0, y1, x0, x1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return rle.encode(masks)


def test_recall_counts_reference_masks_matched_at_iou():
    reference = [_rles((0, 10, 0, 10), (10, 20, 10, 20)), _rles((0, 5, 0, 5)), []]
    # image 1: the first mask is matched at IoU 0.9, the second only at 0.5; image 2: nothing proposed
    candidate = [_rles((0, 10, 0, 9), (10, 20, 10, 15)), [], _rles((0, 3, 0, 3))]
    result = speed.recall(reference, candidate)
    assert result["matched"] == 1 and result["reference_masks"] == 3
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["per_image"] == [0.5, 0.0, None]
    assert speed.recall(reference, candidate, threshold=0.5)["matched"] == 2
    assert speed.recall([[]], [[]])["recall"] is None


def test_proposal_summary_speedups_and_recall():
    masks = _rles((0, 10, 0, 10), (10, 20, 10, 20))
    results = []
    for name, seconds in (("stock_fp32", 8.0), ("stock", 6.0), ("fast", 2.0)):
        kept = masks if name != "fast" else masks[:1]
        results.append({"generator": name, "threads": 1, "seconds_per_image": seconds,
                        "cpu_seconds_per_image": seconds / 2, "per_image": [{"masks": len(kept), "rles": kept}]})
    summary = speed.proposal_summary(results)["1"]
    fast = summary["fast"]
    assert fast["speedup_vs_stock_fp32"] == 4.0 and fast["cpu_speedup_vs_stock"] == 3.0
    assert fast["recall_of_stock_fp32"]["recall"] == 0.5 and fast["masks_per_image"] == 1.0
    assert summary["stock"]["recall_of_stock_fp32"]["recall"] == 1.0
    assert "recall_of_stock_fp32" not in summary["stock_fp32"] and "rles" not in fast["per_image"][0]


@pytest.mark.real
def test_smoke_run(prefect_harness, sample_root, tmp_path):
    out = tmp_path / "speed.json"
    speed.main(["--data", str(sample_root), "--out", str(out), "--smoke"])
    results = json.loads(out.read_text())
    assert results["smoke"] and results["images"] == ["000000116740.jpg", "000000196610.jpg"]
    assert results["provenance"]["command"].startswith("python bench/speed.py --data ")
    assert results["provenance"]["machine"]["cpus"] >= 1 and results["provenance"]["date"]
    assert "CPU s/image" in out.with_suffix(".txt").read_text()
    runs = results["proposals"]["1"]
    assert set(runs) == set(speed.GENERATORS)
    for r in runs.values():
        assert len(r["per_image"]) == 2 and r["seconds_per_image"] > 0 and r["cpu_seconds_per_image"] > 0
        assert r["peak_rss_mib"] >= r["peak_rss_before_model_mib"] > 100
        assert r["other_load"] is None or r["other_load"] >= 0
        assert all("rles" not in im for im in r["per_image"])
    # the float32 fast path gives Meta's masks
    masks = {name: [im["masks"] for im in r["per_image"]] for name, r in runs.items()}
    assert masks["fast_fp32"] == masks["stock_fp32"]
    assert runs["fast_fp32"]["recall_of_stock_fp32"]["recall"] == 1.0
    assert 0.0 <= runs["fast"]["recall_of_stock"]["recall"] <= 1.0
    features = results["features"]["1"]
    assert [im["grid"][2] for im in features["per_image"]] == [384, 384]
    flow = results["flow"]
    assert flow["cold"]["computed"] == {"propose": 2, "embed": 2, "pool": 2}
    assert flow["cached_rerun"]["computed"] == {"propose": 0, "embed": 0, "pool": 0}
    assert flow["add_one_image"]["computed"] == {"propose": 1, "embed": 1, "pool": 1}
    assert flow["cached_rerun"]["seconds"] < flow["cold"]["seconds"]
