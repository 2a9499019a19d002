"""``maskbank run`` checks its input before any server starts or anything is written: each usage or data error
is one line (``error: ...``), exit code 2, with a "did you mean" where a name is close, and the store is not
created. Options that pass reach the flow's inputs (``_label`` is replaced, so no flow runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from maskbank import cli


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    seen: list[dict] = []

    def label(**kwargs):
        seen.append(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_label", label)
    return seen


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for name, colour in (("a.jpg", (200, 10, 10)), ("b.jpg", (10, 200, 10)), ("c.jpg", (10, 10, 200))):
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(root / name)
    (root / "labels.csv").write_text("image,labels\na.jpg,person\nb.jpg,person;dog\nc.jpg,persno\n")
    return root


def _run(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "store"), *args])


def _one_line_error(out, *said: str) -> None:
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.output
    for s in said:
        assert s in lines[0], lines[0]


@pytest.mark.parametrize(
    ("make", "args", "said"),
    [
        (None, ["--labelled", "/nonexistent/photos"], ["labelled dataset /nonexistent/photos", "not found"]),
        ("empty", ["--labelled", "{tmp}/empty"], ["no images found"]),
        ("unlabelled", ["--labelled", "{tmp}/unlabelled"], ["no labelled image", "image labels"]),
        ("bad_json", ["--labelled", "{photos}", "--params", "{tmp}/run.json"], ["not valid JSON", "line 1"]),
        ("typo_param", ["--labelled", "{photos}", "--params", "{tmp}/run.json"],
         ["propose.point_per_side: unknown parameter", "did you mean propose.points_per_side?"]),
        ("bad_checkpoint", ["--labelled", "{photos}", "--params", "{tmp}/run.yaml"],
         ["unknown checkpoint 'mobile_sm'"]),
        (None, ["--labelled", "{photos}", "--rule", "foo"], ["--rule", "'class_balanced', 'majority' or 'knn_weighted'"]),
        (None, ["--labelled", "{photos}", "--points-per-side", "0"], ["--points-per-side", "greater than or equal to 1"]),
        (None, ["--labelled", "{photos}", "--input-size", "700"], ["--input-size", "1024 or 512"]),
        (None, ["--labelled", "{photos}", "--classes", "person,dog"],
         ["unknown class names 'persno'", "did you mean 'persno' -> 'person'?"]),
        (None, ["--labelled", "{photos}", "--rename", "persno"], ["--rename takes old=new"]),
        (None, ["--labelled", "{photos}", "--device", "gpu"], ["--device: unknown device 'gpu'"]),
        ("other_classes", ["--labelled", "{photos}", "--labelled", "{tmp}/other"], ["different class lists"]),
        ("not_a_store", ["--labelled", "{photos}"], ["exists and is not a maskbank store"]),
    ],
)
def test_a_usage_or_data_error_is_one_line_before_anything_runs(tmp_path, photos, calls, make, args, said):
    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "unlabelled":
        (tmp_path / "unlabelled").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "unlabelled" / "x.png")
    elif make == "bad_json":
        (tmp_path / "run.json").write_text('{"propose": {"points_per_side": 4,}}')
    elif make == "typo_param":
        (tmp_path / "run.json").write_text(json.dumps({"propose": {"point_per_side": 4}}))
    elif make == "bad_checkpoint":
        (tmp_path / "run.yaml").write_text("propose:\n  model: mobile_sm\n")
    elif make == "other_classes":
        (tmp_path / "other").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "other" / "x.png")
        (tmp_path / "other" / "labels.csv").write_text("image,labels\nx.png,cat\n")
    elif make == "not_a_store":
        (tmp_path / "store").mkdir()
        (tmp_path / "store" / "notes.txt").write_text("mine")
    out = _run(tmp_path, *(a.format(tmp=tmp_path, photos=photos) for a in args))
    _one_line_error(out, *said)
    assert calls == []
    if make != "not_a_store":
        assert not (tmp_path / "store").exists()


def test_options_that_pass_reach_the_flow(tmp_path, photos, calls):
    (tmp_path / "run.yaml").write_text("propose:\n  points_per_side: 4\nshard_size: 3\n")
    out = _run(tmp_path, "--labelled", str(photos), "--classes", "person,dog", "--skip-unknown",
               "--rename", "dog=person", "--params", str(tmp_path / "run.yaml"), "--to-label", str(photos))
    assert out.exit_code == 0, out.output
    (kwargs,) = calls
    (labelled,) = kwargs["datasets"]
    assert labelled.classes == ["person", "dog"] and labelled.skip_unknown and labelled.rename == {"dog": "person"}
    assert kwargs["params"].propose.points_per_side == 4 and kwargs["params"].shard_size == 3
    assert [t.path for t in kwargs["targets"]] == [str(photos)] and kwargs["targets"][0].classes is None
    assert kwargs["store"] == str(tmp_path / "store") and not (tmp_path / "store").exists()


def test_old_option_names_still_work(tmp_path, photos, calls):
    out = _run(tmp_path, "--bank", str(photos), "--bank-split", "x", "--target", str(photos))
    _one_line_error(out, "split")  # a folder has no splits: the split reached the reader
    out = _run(tmp_path, "--bank", str(photos), "--classes", "person,dog,persno", "--target", str(photos))
    assert out.exit_code == 0 and len(calls) == 1, out.output
