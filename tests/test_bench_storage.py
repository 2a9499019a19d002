"""The storage benchmark: counting a folder store by stage, and a smoke run (flow, throughput on a local path
and the S3 server, the lazy open, the chunking comparison)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import storage as storage_bench  # noqa: E402


def test_count_layout_charges_files_to_their_top_folder(tmp_path):
    for rel, size in {"features/k/a/zarr.json": 10, "features/k/a/c/0": 90, "labels/v/a/zarr.json": 5,
                      "zarr.json": 3}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    counted = storage_bench.count_layout(tmp_path)
    assert counted["files"] == 4 and counted["bytes"] == 108
    assert counted["per_stage"] == {"features": {"objects": 2, "bytes": 100}, "labels": {"objects": 1, "bytes": 5},
                                    "root": {"objects": 1, "bytes": 3}}


@pytest.mark.real
def test_smoke_run(prefect_harness, tmp_path):
    out = tmp_path / "storage.json"
    storage_bench.main(["--out", str(out), "--smoke"])
    results = json.loads(out.read_text())
    assert results["provenance"]["command"] == f"python bench/storage.py --out {out} --smoke"
    objects = results["objects"]
    assert objects["images"] == 8 and objects["labelled"] == 2
    stages = objects["per_stage"]
    assert {"datasets", "proposals", "features", "pooled", "labels", "versions"} <= set(stages)
    for stage in ("proposals", "features", "pooled"):  # one shard each: one commit, new objects, bytes
        assert stages[stage]["commits"] == 1 and stages[stage]["objects"] > 0 and stages[stage]["bytes"] > 0
    assert stages["versions"]["commits"] == 7  # seeds, head, pseudo_labels, bank, predictions and two evaluations
    assert set(results["throughput"]) == {"local", "s3"} and set(results["open"]) == {"local", "s3"}
    for where in ("local", "s3"):
        tp = results["throughput"][where]
        assert tp["images"] == 16 and tp["write_mb_per_s"] > 0 and tp["read_mb_per_s"] > 0
        assert results["open"][where]["images"] == 64 and results["open"][where]["one_image_shape"] == [32, 32, 8]
    chunking = results["chunking"]
    assert set(chunking) == {"chunk_per_image", "shard_of_16"}
    assert chunking["shard_of_16"]["objects"] < chunking["chunk_per_image"]["objects"]
    assert "objects/image" in out.with_suffix(".txt").read_text()
