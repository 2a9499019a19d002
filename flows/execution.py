"""Where the shards of the per-image stages run: threads of the flow's process, or an existing Dask cluster.

A run names ``workers`` (threads of this process) or ``dask`` (the address of a Dask scheduler); both are
flow parameters, so a deployment chooses as the command line does. Shards are independent and each is
written in a commit of its own, so a run's outputs are the same whichever way its shards ran.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

DEFAULT_WORKERS = 2
"""Local workers of a run: on 2 cores, 2 threads with one core each propose about 10-20 % faster than one
with both cores (BENCHMARKS.md, "Throughput")."""
SCHEMES = ("tcp", "tls")
CONNECT_TIMEOUT = 5.0


class ClusterError(ValueError):
    """A Dask scheduler address that is malformed, unreachable, or where no Dask scheduler answers."""


class WorkersError(ValueError):
    """A number of local workers below one."""


def check_workers(workers: int) -> int:
    """``workers``, when it is a whole number of at least one; raises :class:`WorkersError` otherwise."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise WorkersError(f"workers must be a whole number of at least 1, got {workers!r}")
    return workers


def scheduler_address(address: str) -> str:
    """``address`` in the form ``scheme://host:port`` (``host:port`` means ``tcp://host:port``); raises
    :class:`ClusterError` when it is not the address of a Dask scheduler."""
    text = address.strip()
    url = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = url.port
    except ValueError:
        port = -1
    if url.scheme not in SCHEMES or not url.hostname or url.path not in ("", "/") or url.query or port == -1:
        raise ClusterError(f"{address!r} is not a Dask scheduler address like tcp://host:8786")
    if port is None:
        raise ClusterError(f"{address!r} names no port (a Dask scheduler listens on 8786 unless told otherwise: "
                           f"{url.scheme}://{url.hostname}:8786)")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{url.scheme}://{host}:{port}"


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> tuple[str, int]:
    """The canonical address of the Dask scheduler at ``address`` and how many workers it has now; raises
    :class:`ClusterError` (one line) when the address is malformed, nothing listens there, or what listens
    is not a Dask scheduler."""
    canonical = scheduler_address(address)
    url = urlsplit(canonical)
    try:
        socket.create_connection((url.hostname, url.port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ClusterError(f"no Dask scheduler reachable at {canonical} ({reason})") from None
    try:
        identity = _run_coroutine(_identity(canonical, timeout))
    except Exception as e:  # noqa: BLE001 (any failure of the handshake means the same to the caller)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"what listens at {canonical} is not a Dask scheduler ({reason})") from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise ClusterError(f"what listens at {canonical} is not a Dask scheduler")
    workers = identity.get("n_workers", len(identity.get("workers", {})))
    return canonical, workers


async def _identity(address: str, timeout: float) -> dict:
    """The scheduler's answer to ``identity`` (a client's handshake would wait forever on a server that
    never answers, so the call has a deadline of its own)."""
    from distributed.core import rpc

    async with rpc(address, timeout=timeout) as remote:
        return await asyncio.wait_for(remote.identity(), timeout)


def _run_coroutine(coroutine):
    """Run ``coroutine`` to completion on an event loop of its own (in a thread, the caller's thread may be
    running a loop already)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def task_runner(workers: int = 1, dask: str | None = None) -> TaskRunner:
    """The task runner of the per-image stages: the Dask cluster at ``dask`` when given, otherwise
    ``workers`` threads of this process."""
    if dask:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=scheduler_address(dask))
    return ThreadPoolTaskRunner(max_workers=check_workers(workers))


def available_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def torch_threads_per_worker(workers: int) -> Iterator[None]:
    """With ``workers`` > 1 threads of this process running models at once, give each an equal share of the
    cores (torch's thread count is one setting for the whole process); restored afterwards."""
    if workers <= 1:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, available_cores() // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def shard_runner(workers: int = DEFAULT_WORKERS, dask: str | None = None) -> Iterator[TaskRunner]:
    """The started task runner of the per-image stages (see :func:`task_runner`)."""
    runner = task_runner(workers, dask)
    with torch_threads_per_worker(1 if dask else workers), runner:
        yield runner
