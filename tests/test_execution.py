"""Where the per-image shards run: the ``workers`` and ``dask`` options are checked before any work (one-line
errors), a scheduler address is put in canonical form, torch's thread count is shared out and restored, and
each thread gets a mask proposer of its own (a proposer holds the image it is working on)."""

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
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(tmp_path),
                                       "--workers", workers])
    assert out.exit_code == 2 and not captured
    assert out.output.strip() == f"error: --workers must be a whole number of at least 1, got {workers!r}"


def test_unreachable_dask_is_a_one_line_error_before_any_work(captured, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(tmp_path),
                                       "--dask", address])
    assert out.exit_code == 2 and not captured
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --dask: no Dask scheduler reachable at {address} (")


def test_workers_reach_the_flow(captured, tmp_path):
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(tmp_path),
                                       "--workers", "2"])
    assert out.exit_code == 0, out.output
    assert captured["workers"] == 2 and "dask" not in captured


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
