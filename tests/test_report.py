"""The run report's text and the per-class IoU rows, from a hand-made run summary."""

from __future__ import annotations

import math

import pytest

from maskbank.flows.label import RunSummary
from maskbank.flows.params import ProposeParams, RunParams
from maskbank.flows.report import (
    class_iou_rows, evaluation_report, markdown_table, run_report, score, scores_section,
)
from maskbank.flows.stages.ingest import DatasetInput


def _metrics(images: int, miou: float, iou: dict, voc: float | None = None) -> dict:
    m = {"images": images, "classes": {"miou": miou, "miou_absent_as_zero": miou,
                                       "classes_present": sum(v is not None for v in iou.values()), "iou": iou}}
    if voc is not None:
        m["voc21"] = {"miou": voc, "classes_present": 2, "iou": {"background": voc, "person": None}}
    return m


PSEUDO = _metrics(3, 0.5, {"background": 0.8, "cat": 0.2, "dog": None, "car": None}, voc=0.61234)
PRED = _metrics(1, 0.25, {"background": 0.5, "cat": None, "dog": 0.0, "car": None})


@pytest.fixture
def summary() -> RunSummary:
    return RunSummary(
        store="runs/x.zarr", labelled="f" * 64, pseudo_labels="0123456789abcdef", bank="1123456789abcdef",
        predictions="2123456789abcdef", pseudo_label_metrics=PSEUDO, prediction_metrics=PRED,
        computed={"propose": 1, "embed": 0, "pool": 1}, skipped=[("abc", "cannot read | truncated file")],
        images={"labelled": 3, "targets": 1, "distinct": 4},
        seconds={"ingest": 0.25, "propose": 12.34, "embed": 0.0, "pool": 0.5, "seed": 0.1, "evaluate": 0.2,
                 "bank": 0.3, "retrieve": 0.4},
    )


def test_class_iou_rows_join_evaluations_and_drop_classes_absent_everywhere():
    rows = class_iou_rows({"pseudo-labels": PSEUDO, "retrieval": PRED, "none": None})
    assert rows == [
        {"class": "background", "pseudo-labels": 0.8, "retrieval": 0.5},
        {"class": "cat", "pseudo-labels": 0.2, "retrieval": None},
        {"class": "dog", "pseudo-labels": None, "retrieval": 0.0},
    ]
    assert class_iou_rows({"a": None}) == []
    assert class_iou_rows({"p": _metrics(1, 0.1, {"x": 0.123456789})}) == [{"class": "x", "p": 0.1235}]
    assert class_iou_rows({"p": PSEUDO}, subset="voc21") == [{"class": "background", "p": 0.6123}]


def test_markdown_table_escapes_cells():
    assert markdown_table(["a", "b"], [[1, "x|y\nz"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y z |"


def test_score_formats_undefined_values():
    assert (score(0.123456), score(None), score(math.nan), score(0.0)) == ("0.1235", "-", "-", "0.0000")


def test_run_report(summary):
    params = RunParams(propose=ProposeParams(points_per_side=4))
    text = run_report(summary, [DatasetInput(path="data/coco", split="train2017")],
                      [DatasetInput(path="data/val.json")], params, "cpu")
    assert text.startswith("# maskbank run report\n")
    assert "| labelled | `data/coco` | train2017 | auto |" in text
    assert "| target | `data/val.json` | - | auto |" in text
    assert "| pseudo-labels | `0123456789abcdef` |" in text and "| prototype bank | `1123456789abcdef` |" in text
    assert "| predictions (retrieval) | `2123456789abcdef` |" in text
    assert "| propose | 1 of 4 | 12.3 |" in text and "| embed | 0 of 4 | 0.0 |" in text
    assert "| seed | - | 0.1 |" in text and "| retrieve | - | 0.4 |" in text
    assert "| pseudo-labels | 3 | 0.5000 | 2 | 0.6123 |" in text and "| retrieval | 1 | 0.2500 | 2 | - |" in text
    assert "| cat | 0.2000 | - |" in text and "| dog | - | 0.0000 |" in text and "| car |" not in text
    assert "| `abc` | cannot read \\| truncated file |" in text
    assert "points_per_side=4" in text and "| shard_size | 8 |" in text and "| device | cpu |" in text
    assert f"Images: 3 labelled (collection `{'f' * 64}`), 1 target, 4 distinct processed." in text


def test_run_report_without_truth_or_targets(summary):
    bare = summary.model_copy(update={"predictions": None, "pseudo_label_metrics": None, "prediction_metrics": None,
                                      "skipped": [], "seconds": {"ingest": 1.0}})
    text = run_report(bare, [DatasetInput(path="imgs", format="folder", labels="labels.csv")], None, RunParams(), "auto")
    assert "No ground truth: nothing to score." in text and "Per-class IoU" not in text
    assert "predictions" not in text and "## Skipped images\n\nNone." in text
    assert "| ingest | - | 1.0 |" in text and " of 4 |" not in text
    assert scores_section({"a": None}) == ""


def test_evaluation_report():
    text = evaluation_report("s.zarr", "0123456789abcdef", "predictions", [DatasetInput(path="v.json")], PRED)
    assert "Version `0123456789abcdef` (predictions)" in text
    assert "| predictions | 1 | 0.2500 | 2 |" in text and "| dog | 0.0000 |" in text
    assert "not scored" not in text
    text = evaluation_report("s.zarr", "0123456789abcdef", "predictions", [DatasetInput(path="v.json")],
                             {**PRED, "skipped": [["42", "truth cannot be read: bad png"]]})
    assert "## Images not scored\n\n| image | reason |\n|---|---|\n| `42` | truth cannot be read: bad png |" in text


def test_reports_name_the_store_by_its_location(summary):
    from pathlib import Path

    text = run_report(summary, [DatasetInput(path="imgs")], None, RunParams(), "cpu")
    local = Path("runs/x.zarr").absolute()
    assert f"Store: `{local}` (list its versions: `maskbank versions {local}`)" in text
    assert "Label maps: `labels/<version>` in the store" in text
    remote = summary.model_copy(update={"store": "s3://bucket/runs/x?region=eu-west-1"})
    text = run_report(remote, [DatasetInput(path="imgs")], None, RunParams(), "cpu")
    assert "Store: `s3://bucket/runs/x?region=eu-west-1`" in text
    text = evaluation_report("gs://bucket/store", "0123456789abcdef", "predictions", [DatasetInput(path="v.json")], PRED)
    assert "Version `0123456789abcdef` (predictions) of store `gs://bucket/store`." in text
