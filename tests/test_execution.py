"""Where and how the per-image shards run: the ``workers``, ``dask`` and ``batch`` options are checked before
any work (one-line errors), a scheduler address is put in canonical form, torch's thread count is shared out
and restored, each thread gets a mask proposer of its own (a proposer holds the image it is working on), and a
shard's images go through the models in batches that an unreadable image does not sink."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from typer.testing import CliRunner

from maskbank import cli
from maskbank.flows.execution import (
    ClusterError, WorkersError, check_scheduler, check_workers, scheduler_address, task_runner,
    torch_threads_per_worker,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("given", "canonical"), [
    ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    ("127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    (" tls://scheduler.example:9000/ ", "tls://scheduler.example:9000"),
    ("tcp://[::1]:8786", "tcp://[::1]:8786"),
])
def test_scheduler_addresses(given, canonical):
    assert scheduler_address(given) == canonical


@pytest.mark.parametrize(("given", "message"), [
    ("http://127.0.0.1:8786", "not a Dask scheduler address"),
    ("tcp://127.0.0.1:port", "not a Dask scheduler address"),
    ("tcp://:8786", "not a Dask scheduler address"),
    ("tcp://127.0.0.1:8786/path", "not a Dask scheduler address"),
    ("127.0.0.1", "names no port"),
])
def test_bad_scheduler_addresses(given, message):
    with pytest.raises(ClusterError, match=message):
        scheduler_address(given)


def test_nothing_listening_is_a_cluster_error():
    with pytest.raises(ClusterError, match="no Dask scheduler reachable at tcp://127.0.0.1:"):
        check_scheduler(f"tcp://127.0.0.1:{_closed_port()}", timeout=2)


def test_a_server_that_is_not_a_scheduler_is_a_cluster_error():
    """Something listens but never answers the handshake: refused after the timeout, not waited on forever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        with pytest.raises(ClusterError, match="is not a Dask scheduler"):
            check_scheduler(f"127.0.0.1:{server.getsockname()[1]}", timeout=1)
    finally:
        server.close()


@pytest.mark.parametrize("workers", [0, -1, True, 1.5, "2"])
def test_workers_must_be_a_whole_number_of_at_least_one(workers):
    with pytest.raises(WorkersError):
        check_workers(workers)


def test_local_runner_has_as_many_threads_as_workers():
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = task_runner(workers=3)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3


@pytest.mark.parametrize("workers", ["0", "-2", "abc", "1.5"])
def test_bad_workers_is_a_one_line_error_before_any_work(captured, tmp_path, workers):
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017",
                                       "--workers", workers])
    assert out.exit_code == 2 and not captured
    assert out.output.strip() == f"error: --workers must be a whole number of at least 1, got {workers!r}"


def test_unreachable_dask_is_a_one_line_error_before_any_work(captured, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017",
                                       "--dask", address])
    assert out.exit_code == 2 and not captured
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --dask: no Dask scheduler reachable at {address} (")


def test_workers_reach_the_flow(captured, tmp_path):
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017",
                                       "--workers", "2"])
    assert out.exit_code == 0, out.output
    assert captured["workers"] == 2 and "dask" not in captured and "batch" not in captured


@pytest.mark.parametrize("batch", ["0", "-2", "abc", "1.5"])
def test_bad_batch_is_a_one_line_error_before_any_work(captured, tmp_path, batch):
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017",
                                       "--batch", batch])
    assert out.exit_code == 2 and not captured
    assert out.output.strip() == f"error: --batch must be a whole number of at least 1, got {batch!r}"


def test_batch_reaches_the_flow(captured, tmp_path):
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017",
                                       "--batch", "4"])
    assert out.exit_code == 0, out.output
    assert captured["batch"] == 4


def test_images_per_batch_follows_the_device_unless_set():
    import torch

    from maskbank.tasks.models.device import IMAGES_PER_BATCH, images_per_batch

    assert images_per_batch(torch.device("cpu")) == IMAGES_PER_BATCH["cpu"] == 1
    assert images_per_batch(torch.device("cuda")) == IMAGES_PER_BATCH["cuda"]
    assert images_per_batch(torch.device("cpu"), 5) == 5
    with pytest.raises(ValueError, match="at least 1"):
        images_per_batch(torch.device("cpu"), 0)


@pytest.mark.parametrize("batch", [1, 3, 10])
def test_a_shard_runs_in_batches_and_skips_only_unreadable_images(tmp_path, batch):
    from maskbank.flows.stages.common import ImageJob, run_shard
    from maskbank.storage.datasets import ImageError
    from maskbank.storage.layout import PROPOSALS
    from maskbank.storage.store import Store

    store = Store.open(str(tmp_path / "s"), create=True)
    jobs = [ImageJob(key=f"{i:02d}", path=f"/images/{i}.jpg") for i in range(7)]
    calls, written = [], []

    class Out:
        def __init__(self, key):
            self.key = key

    def compute(group):
        calls.append([j.key for j in group])
        bad = next((j for j in group if j.key in ("02", "05")), None)
        if bad is not None:
            raise ImageError(f"cannot read {bad.path}")
        return [Out(j.key) for j in group]

    ref = run_shard(store, PROPOSALS, "k", jobs, compute, lambda outs: written.extend(o.key for o in outs), batch)
    assert written == ref.computed == ["00", "01", "03", "04", "06"]
    assert ref.skipped == [("02", "cannot read /images/2.jpg"), ("05", "cannot read /images/5.jpg")]
    assert max(len(c) for c in calls) == min(batch, 7)
    assert calls[0] == [j.key for j in jobs[:batch]]


def test_torch_threads_are_shared_out_and_restored(monkeypatch):
    import torch

    from maskbank.flows import execution

    monkeypatch.setattr(execution, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    with torch_threads_per_worker(3):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads_per_worker(1):
        assert torch.get_num_threads() == before


def test_each_running_thread_has_a_proposer_of_its_own_and_ended_threads_hand_theirs_on():
    from maskbank.flows.runtime import _per_thread

    built = []

    @_per_thread(maxsize=2)
    def build(name):
        built.append(object())
        return built[-1]

    both_running = threading.Barrier(2)

    def work(_):
        mine = build("a")
        both_running.wait(timeout=10)  # two threads hold an instance at once
        assert build("a") is mine
        return id(mine)

    with ThreadPoolExecutor(2) as pool:
        first = set(pool.map(work, range(2)))
    assert len(first) == 2 == len(built)
    with ThreadPoolExecutor(2) as pool:  # new threads get the instances the ended ones held
        assert set(pool.map(work, range(2))) == first
    assert len(built) == 2
    build.cache_clear()
