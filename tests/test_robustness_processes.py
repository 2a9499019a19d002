"""The main flow as separate processes: killed (SIGKILL) in the middle of each stage and run again, two
runs on one store at once, and a very large image. Each run is a child process on the session's Prefect
API; a run's outputs are compared with those of one uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskbank.storage.datasets.coco import write_coco_subset

pytestmark = [pytest.mark.real]

TRAIN = ["000000196610", "000000204805"]
VAL = ["000000208901"]
STAGES = ["propose", "embed", "pool", "seed", "evaluate", "bank", "retrieve"]  # in the order the flow runs them
SINGLE_WRITE = {"bank", "evaluate"}  # stages that write one item: killed while writing it
ITEM_KINDS = ("proposals", "features", "saliency", "pooled", "labels")

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

args = json.loads(sys.argv[1])
if args["pause"]:
    import maskbank.storage.items as store_module
    from prefect.context import TaskRunContext

    write_group, writes = store_module.write_group, []

    def pausing_write_group(directory, arrays, dims, attrs):
        ctx = TaskRunContext.get()
        if ctx is not None and ctx.task.name == args["pause"]:
            writes.append(directory)
            if len(writes) > args["after"]:  # stop for good half way through writing this item
                first = next(iter(arrays))
                write_group(directory, {first: arrays[first]}, {first: dims[first]}, {})
                Path(args["signal"]).write_text(str(directory))
                time.sleep(3600)
        write_group(directory, arrays, dims, attrs)

    store_module.write_group = pausing_write_group

from maskbank.flows.label import label_images
from maskbank.flows.params import RunParams
from maskbank.flows.stages.ingest import DatasetInput

summary = label_images(
    datasets=[DatasetInput(**d) for d in args["datasets"]], store=args["store"],
    targets=[DatasetInput(**d) for d in args["targets"]] or None,
    params=RunParams.model_validate(args["params"]), device="cpu",
)
out = summary.model_dump(mode="json")
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
Path(args["out"]).write_text(json.dumps(out))
"""


def _params(k: int = 25) -> dict:
    return {"propose": {"points_per_side": 4}, "embed": {"long_side": 224},
            "retrieve": {"k": k, "rule": "majority"}, "shard_size": 2}


class Run:
    """One run of the flow in a child process of its own process group (so that a kill takes all of it)."""

    def __init__(self, workdir: Path, name: str, store: Path, datasets: list[dict], targets: list[dict] = (),
                 params: dict | None = None, pause: str | None = None) -> None:
        from prefect.settings import PREFECT_API_URL

        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.signal, self.out, self.log = self.dir / "paused", self.dir / "summary.json", self.dir / "log.txt"
        args = {"datasets": datasets, "targets": list(targets), "store": str(store), "params": params or _params(),
                "pause": pause, "after": 0 if pause in SINGLE_WRITE else 1, "signal": str(self.signal),
                "out": str(self.out)}
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _failure(self, what: str) -> str:
        return f"{what}; log tail:\n{self.log.read_text()[-3000:]}"

    def kill_when_paused(self, timeout: float = 300) -> Path:
        """Kill the run's process group once it is half way through writing an item; returns where that
        item was being written."""
        deadline = time.monotonic() + timeout
        try:
            while not self.signal.exists():
                assert self.proc.poll() is None, self._failure(f"exited with {self.proc.returncode} before pausing")
                assert time.monotonic() < deadline, self._failure("never paused")
                time.sleep(0.1)
        finally:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return Path(self.signal.read_text())

    def summary(self, timeout: float = 400) -> dict:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(self._failure("timed out")) from None
        assert rc == 0, self._failure(f"exited with {rc}")
        return json.loads(self.out.read_text())


def _label_maps(store: Path, version: str) -> dict[str, np.ndarray]:
    from maskbank.flows.stages.labelmaps import LABELS
    from maskbank.storage.store import Store

    st = Store.open(store, create=False)
    return {k: st.read_image_item(LABELS, version, k).arrays["labels"] for k in st.list_items(LABELS, version)}


def _outputs(store: Path, summary: dict) -> dict:
    """What a run produced: its version ids and the bytes of every label map of its label versions."""
    ids = {k: summary[k] for k in ("pseudo_labels", "bank", "predictions")}
    maps = {k: {key: (m.shape, m.tobytes()) for key, m in _label_maps(store, v).items()}
            for k, v in ids.items() if k != "bank"}
    return {**ids, "maps": maps}


def _assert_every_item_verifies(store: Path) -> None:
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions, version_path

    st = Store.open(store, create=False)
    paths = [version_path(v.id) for v in list_versions(st)]
    for kind in ITEM_KINDS:
        for key in st.list_keys(kind):
            paths += [st.item_path(kind, key, i) for i in st.list_items(kind, key)]
    assert len(paths) >= 20
    bad = [p for p in paths if not st.item_complete(p, verify=True)]
    assert bad == []


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_root) -> dict:
    root = tmp_path_factory.mktemp("coco")
    train, val = (write_coco_subset(sample_root, split, root, stems, copy_images=True)
                  for split, stems in (("train2017", TRAIN), ("val2017", VAL)))
    return {"datasets": [{"path": str(train)}], "targets": [{"path": str(val)}]}


@pytest.fixture(scope="module")
def reference(prefect_harness, data, tmp_path_factory) -> dict:
    """The outputs of an uninterrupted run (in this process)."""
    from maskbank.flows.label import label_images
    from maskbank.flows.params import RunParams
    from maskbank.flows.stages.ingest import DatasetInput

    store = tmp_path_factory.mktemp("reference") / "s.zarr"
    summary = label_images(datasets=[DatasetInput(**d) for d in data["datasets"]], store=str(store),
                           targets=[DatasetInput(**d) for d in data["targets"]],
                           params=RunParams.model_validate(_params()), device="cpu")
    return _outputs(store, summary.model_dump(mode="json"))


def test_killed_in_every_stage_then_completed_equals_an_uninterrupted_run(reference, data, tmp_path):
    store = tmp_path / "s.zarr"
    for stage in STAGES:
        half_written = Run(tmp_path, f"killed-in-{stage}", store, **data, pause=stage).kill_when_paused()
        assert half_written.is_dir() and str(half_written).startswith(str(store)), stage
    summary = Run(tmp_path, "final", store, **data).summary()
    assert _outputs(store, summary) == reference
    _assert_every_item_verifies(store)


def test_two_runs_at_once_on_one_store(reference, data, tmp_path):
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    store = tmp_path / "s.zarr"
    runs = [Run(tmp_path, "a", store, **data), Run(tmp_path, "b", store, **data, params=_params(k=3))]
    a, b = (r.summary() for r in runs)
    assert _outputs(store, a) == reference
    assert (b["pseudo_labels"], b["bank"]) == (a["pseudo_labels"], a["bank"]) and b["predictions"] != a["predictions"]
    images = len(TRAIN) + len(VAL)
    for stage in ("propose", "embed", "pool"):  # a call running in one process is served to the other from its cache
        assert a["computed"][stage] + b["computed"][stage] == images, stage
    ids = [v.id for v in list_versions(Store.open(store, create=False))]
    assert len(ids) == len(set(ids)) == 7  # pseudo-labels, bank, 2 predictions, 3 evaluations
    _assert_every_item_verifies(store)


def test_very_large_image_runs_in_bounded_memory(prefect_harness, sample_root, tmp_path):
    from maskbank.storage.datasets import MAX_WORKING_PIXELS, working_size

    images = tmp_path / "large" / "images"
    images.mkdir(parents=True)
    photo = Image.open(sample_root / "train2017" / f"{TRAIN[0]}.jpg").convert("RGB")
    photo.resize((12000, 9000), Image.Resampling.BILINEAR).save(images / "huge.jpg", quality=85)
    photo.save(images / "small.jpg", quality=90)
    (tmp_path / "large" / "labels.csv").write_text("image,labels\nhuge.jpg,bicycle\nsmall.jpg,bicycle\n")
    store = tmp_path / "s.zarr"
    summary = Run(tmp_path, "run", store, [{"path": str(tmp_path / "large")}]).summary()
    assert summary["skipped"] == []
    hw = working_size((9000, 12000))
    assert hw[0] * hw[1] <= MAX_WORKING_PIXELS
    shapes = sorted(m.shape for m in _label_maps(store, summary["pseudo_labels"]).values())
    assert shapes == sorted([photo.size[::-1], hw])  # the huge image is labelled at its working size
    assert summary["peak_rss_mib"] < 2500, summary["peak_rss_mib"]
