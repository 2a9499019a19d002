"""Named inter-process locks inside a store, released by the kernel when the holder dies.

A lock is ``flock`` on the directory ``<store>/_locks/<name>/``. Each lock directory carries a Zarr group
``zarr.json`` so that the store stays a clean Zarr hierarchy. ``flock`` locks belong to an open file, so
threads of one process that each enter :func:`store_lock` exclude each other too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCKS_GROUP = "_locks"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_GROUP_JSON = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class LockTimeout(TimeoutError):
    """A lock was not acquired within the given time."""


@contextmanager
def store_lock(path: str | Path, name: str, timeout: float | None = None, poll: float = 0.05) -> Iterator[None]:
    """Hold the exclusive lock ``name`` of the store at ``path``; wait at most ``timeout`` seconds."""
    if not _NAME.match(name):
        raise ValueError(f"lock name must match {_NAME.pattern}, got {name!r}")
    lock_dir = Path(path) / LOCKS_GROUP / name
    for d in (lock_dir.parent, lock_dir):
        d.mkdir(parents=True, exist_ok=True)
        _ensure_group_json(d)
    fd = os.open(lock_dir, os.O_RDONLY)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"lock {name!r} of {path} still held after {timeout} s") from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _ensure_group_json(directory: Path) -> None:
    target = directory / "zarr.json"
    if target.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".zarr.json.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_GROUP_JSON, f)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
