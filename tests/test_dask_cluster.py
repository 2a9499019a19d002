"""The per-image shards run in threads, or on a real Dask cluster (a scheduler and two single-threaded workers,
separate processes on 127.0.0.1), give the same versions and label maps as one shard at a time; a rerun
through the cluster is served from the cache its workers wrote. The workers reach the tests' Prefect API and
share its result storage and the store's folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskbank.storage.datasets.coco import write_coco_subset

pytestmark = [pytest.mark.real]

TRAIN = ["000000196610", "000000204805"]
VAL = ["000000208901"]
WORKERS = 2
DASK = Path(sys.executable).with_name("dask")


def _params():
    from maskbank.flows.params import EmbedParams, ProposeParams, RetrieveParams, RunParams

    return RunParams(propose=ProposeParams(points_per_side=4, input_size=512), embed=EmbedParams(long_side=224),
                     retrieve=RetrieveParams(rule="majority"), shard_size=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group (a worker's nanny and its worker process), SIGKILL to what remains."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the whole group, stragglers included
        except ProcessLookupError:
            pass
        p.wait()


class Cluster:
    """A Dask scheduler and ``WORKERS`` workers, each one thread in a process of its own, started in the
    background with the environment the flow's tasks need: the Prefect API, Prefect's home and result
    storage. The workers import maskbank as they start."""

    def __init__(self, logs: Path) -> None:
        from prefect.settings import PREFECT_API_URL

        self.logs = logs
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
                    "PREFECT_HOME": os.environ["PREFECT_HOME"],
                    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]}
        self.procs: list[subprocess.Popen] = []
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        for i in range(WORKERS):
            self._start(f"worker{i}", "worker", self.address, "--nthreads", "1", "--nworkers", "1",
                        "--no-dashboard", "--name", f"w{i}", "--local-directory", str(logs / f"w{i}"),
                        "--preload", "maskbank.flows.label")

    def _start(self, name: str, *args: str) -> None:
        with open(self.logs / f"{name}.log", "w") as log:
            self.procs.append(subprocess.Popen([str(DASK), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               cwd=self.logs, start_new_session=True))

    def wait(self, timeout: float = 90) -> str:
        """The scheduler's address, once every worker has joined."""
        from maskbank.flows.execution import ClusterError, check_scheduler

        deadline, workers = time.monotonic() + timeout, 0
        while workers < WORKERS:
            died = [p.args for p in self.procs if p.poll() is not None]
            assert not died and time.monotonic() < deadline, (died, self.tails())
            try:
                _, workers = check_scheduler(self.address, timeout=2)
            except ClusterError:
                pass
            if workers < WORKERS:
                time.sleep(0.5)
        return self.address

    def tasks_run(self) -> dict[str, int]:
        """Tasks each worker has run."""
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return client.run(lambda dask_worker: dask_worker.state.executed_count)

    def tails(self) -> dict[str, str]:
        return {p.name: p.read_text()[-1500:] for p in self.logs.glob("*.log")}

    def stop(self) -> None:
        _stop(self.procs)


@pytest.fixture(scope="module")
def cluster(prefect_harness, tmp_path_factory):
    """A cluster starting in the background (``cluster.wait()`` for its address); stopped at the end."""
    cluster = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_root):
    root = tmp_path_factory.mktemp("coco")
    train, val = (write_coco_subset(sample_root, split, root, stems, copy_images=True)
                  for split, stems in (("train2017", TRAIN), ("val2017", VAL)))
    return train, val


def _run(data, store: Path, **execution):
    from maskbank.flows.label import label_images
    from maskbank.flows.stages.ingest import DatasetInput

    train, val = data
    return label_images(datasets=[DatasetInput(path=str(train))], store=str(store),
                        targets=[DatasetInput(path=str(val))], params=_params(), device="cpu", **execution)


def _label_maps(store: Path, version: str) -> dict[str, np.ndarray]:
    from maskbank.storage.layout import LABELS
    from maskbank.storage.store import Store

    st = Store.open(store, create=False)
    return {k: st.read_label_map(version, k) for k in st.list_items(LABELS, version)}


def _assert_same_outputs(a, a_store: Path, b, b_store: Path) -> None:
    """Two runs' version ids, and every label map of their pseudo-labels and predictions, are the same."""
    assert (a.pseudo_labels, a.bank, a.predictions) == (b.pseudo_labels, b.bank, b.predictions)
    for version in (a.pseudo_labels, a.predictions):
        here, there = _label_maps(a_store, version), _label_maps(b_store, version)
        assert sorted(here) == sorted(there) and len(here) > 0
        for key in here:
            np.testing.assert_array_equal(here[key], there[key])


@pytest.fixture(scope="module")
def sequential(cluster, data, tmp_path_factory, one_thread):
    """A run with its shards one at a time in this process (the cluster starts meanwhile)."""
    store = tmp_path_factory.mktemp("sequential") / "s.mb"
    return _run(data, store, workers=1), store


def test_shards_in_threads_equal_one_at_a_time(sequential, data, tmp_path):
    images = len(TRAIN) + len(VAL)
    reference, reference_store = sequential
    threaded = _run(data, tmp_path / "s.mb", workers=2)
    assert threaded.computed == reference.computed == {"propose": images, "embed": images, "pool": images}
    _assert_same_outputs(threaded, tmp_path / "s.mb", reference, reference_store)


def test_shards_on_a_dask_cluster_equal_a_local_run(cluster, sequential, data, tmp_path):
    images = len(TRAIN) + len(VAL)
    reference, reference_store = sequential
    address = cluster.wait()
    remote = _run(data, tmp_path / "s.mb", dask=address)
    ran = cluster.tasks_run()
    assert len(ran) == WORKERS and all(n > 0 for n in ran.values()), ran  # every worker ran shards
    assert remote.computed == {"propose": images, "embed": images, "pool": images}
    _assert_same_outputs(remote, tmp_path / "s.mb", reference, reference_store)

    # the workers' task results are in the shared result storage: a rerun is served from the cache
    again = _run(data, tmp_path / "s.mb", dask=address)
    assert again.computed == {"propose": 0, "embed": 0, "pool": 0}
    assert (again.pseudo_labels, again.bank, again.predictions) == (reference.pseudo_labels, reference.bank,
                                                                    reference.predictions)


def test_an_unreachable_scheduler_stops_the_run_before_any_work(prefect_harness, data, tmp_path):
    from maskbank.flows.execution import ClusterError

    with pytest.raises(ClusterError, match="no Dask scheduler reachable"):
        _run(data, tmp_path / "s.mb", dask=f"tcp://127.0.0.1:{_free_port()}")
    assert not (tmp_path / "s.mb").exists()
