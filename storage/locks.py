"""Named inter-process locks of a store, released by the kernel when their holder dies.

A lock is ``flock`` on a file. For a store on a local path the files are in ``<store>/maskbank-locks/``
(beside icechunk's own folders, which icechunk leaves alone); for a store in object storage they are in
this machine's cache folder, under a hash of the location, so they exclude the processes of one machine
only (object storage itself needs none: its commits are safe, see :mod:`maskbank.storage.repository`).
``flock`` locks belong to an open file, so threads of one process that each enter :func:`store_lock`
exclude each other too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maskbank.storage.location import Location

LOCKS_DIR = "maskbank-locks"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LockTimeout(TimeoutError):
    """A lock was not acquired within the given time."""


def lock_dir(location: Location) -> Path:
    """The folder of a store's lock files."""
    if location.is_local:
        return location.path / LOCKS_DIR
    from platformdirs import user_cache_dir

    digest = hashlib.sha256(str(location).encode()).hexdigest()[:24]
    return Path(os.environ.get("MASKBANK_LOCK_DIR") or Path(user_cache_dir("maskbank")) / "locks") / digest


@contextmanager
def store_lock(location: Location, name: str, timeout: float | None = None, poll: float = 0.05) -> Iterator[None]:
    """Hold the exclusive lock ``name`` of the store at ``location``; wait at most ``timeout`` seconds."""
    if not _NAME.match(name):
        raise ValueError(f"lock name must match {_NAME.pattern}, got {name!r}")
    directory = lock_dir(location)
    directory.mkdir(parents=True, exist_ok=True)
    with _flock(os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o644), f"lock {name!r} of {location}",
                timeout, poll):
        yield


@contextmanager
def creation_lock(location: Location) -> Iterator[None]:
    """Exclude other processes of this machine while a store is created at ``location``: on a local path,
    ``flock`` on the folder that will hold it (the store's own folder must stay empty until created)."""
    if location.is_local:
        parent = location.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        with _flock(os.open(parent, os.O_RDONLY), f"creation of {location}", None, 0.05):
            yield
    else:
        with store_lock(location, "create"):
            yield


@contextmanager
def _flock(fd: int, what: str, timeout: float | None, poll: float) -> Iterator[None]:
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{what}: still held after {timeout} s") from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
