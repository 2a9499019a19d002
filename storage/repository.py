"""The icechunk repository behind a store: opening and creating it, and transactions.

A transaction is a function that writes through a writable session, then one commit. Nothing it writes is
visible to readers before the commit, and a writer killed before committing leaves nothing visible (its
written chunks are unreferenced until garbage collection removes them). Transactions of several
threads, processes or machines on one repository all land:

- on object storage, a commit whose branch moved meanwhile is rebased onto the new tip when the changes
  are disjoint; when they conflict (two writers appending to the same arrays), the whole transaction runs
  again on a fresh session, after a short random wait;
- on a local path, icechunk's commits are not safe against each other (its local storage has no atomic
  compare-and-swap of the branch), so the transaction holds the store's ``commit`` lock (``flock``, released
  by the kernel when its holder dies) from opening its session to committing.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

import icechunk
import zarr

from maskbank.storage.layout import BRANCH, STORE_FORMAT
from maskbank.storage.location import Location
from maskbank.storage.locks import LOCKS_DIR, creation_lock, store_lock

T = TypeVar("T")
log = logging.getLogger(__name__)

MANIFEST_SPLIT = 1024
"""Chunks per manifest split along every dimension (``image``, ``proposal``, ...): a commit that appends
rows rewrites only the manifests of the splits it touches, so a commit's cost does not grow with the
collection."""

COMMIT_LOCK = "commit"
_ATTEMPTS = 200

# Local commits are serialised by COMMIT_LOCK, so icechunk's warning that they are not is noise.
icechunk.set_logs_filter("error")


class NotAStoreError(Exception):
    """The location holds something that is not a maskbank store."""


def repository_config() -> icechunk.RepositoryConfig:
    split = icechunk.ManifestSplittingConfig.from_dict(
        {icechunk.ManifestSplitCondition.AnyArray(): {icechunk.ManifestSplitDimCondition.Any(): MANIFEST_SPLIT}}
    )
    return icechunk.RepositoryConfig(manifest=icechunk.ManifestConfig(splitting=split))


def open_repository(location: Location, create: bool = True) -> icechunk.Repository:
    """The maskbank repository at ``location``, created there (when ``create``) if the place is empty.

    Raises :class:`NotAStoreError` for a place that holds anything else, naming what it holds.
    """
    if location.is_local:
        _check_local(location, create)
    storage = location.storage()
    if icechunk.Repository.exists(storage):
        repo = icechunk.Repository.open(storage)
        if _store_format(repo) == STORE_FORMAT:
            return repo
    elif not create:
        raise NotAStoreError(f"no maskbank store at {location}")
    with creation_lock(location):  # a creator holds it from creating the repository to marking it ours
        if icechunk.Repository.exists(storage):
            repo = icechunk.Repository.open(storage)
            fmt = _store_format(repo)
            if fmt is None:
                raise NotAStoreError(f"{location} is an icechunk repository but not a maskbank store")
            if fmt != STORE_FORMAT:
                raise NotAStoreError(f"{location} has store format {fmt}; this maskbank reads {STORE_FORMAT}")
            return repo
        if location.is_local:
            if any(p.name != LOCKS_DIR for p in location.path.iterdir()):
                raise NotAStoreError(f"{location.path} exists and is not a maskbank store")
            shutil.rmtree(location.path / LOCKS_DIR, ignore_errors=True)  # icechunk wants an empty folder
        if not create:
            raise NotAStoreError(f"no maskbank store at {location}")
        try:
            repo = icechunk.Repository.create(storage, config=repository_config())
        except icechunk.IcechunkError as e:
            if "clean prefix" not in str(e):
                raise
            raise NotAStoreError(
                f"{location} holds objects that are not a maskbank store (an old maskbank store or other data); "
                f"start a new store at an empty prefix"
            ) from None
        session = repo.writable_session(BRANCH)
        root = zarr.open_group(session.store, mode="w", zarr_format=3)
        root.attrs["maskbank_store"] = STORE_FORMAT
        session.commit("create maskbank store")
    return repo


def probe_store(location: Location) -> bool:
    """Whether a maskbank store is at ``location``; False where one can be created (nothing there, or an
    empty folder). Raises :class:`NotAStoreError` for a place that holds anything else. Creates nothing."""
    if location.is_local:
        path = location.path
        _refuse_other_files(path)
        if not path.exists() or not any(p.name != LOCKS_DIR for p in path.iterdir()):
            return False
    storage = location.storage()
    if not icechunk.Repository.exists(storage):
        if location.is_local:
            raise NotAStoreError(f"{location.path} exists and is not a maskbank store")
        return False  # creating it finds out whether the prefix is clean
    fmt = _store_format(icechunk.Repository.open(storage))
    if fmt is None:
        raise NotAStoreError(f"{location} is an icechunk repository but not a maskbank store")
    if fmt != STORE_FORMAT:
        raise NotAStoreError(f"{location} has store format {fmt}; this maskbank reads {STORE_FORMAT}")
    return True


def _check_local(location: Location, create: bool) -> None:
    """Refuse, before anything is created, a local path that cannot be or become a store."""
    path = location.path
    _refuse_other_files(path)
    if not create and not (path / "config.yaml").exists() and not (path / "refs").exists():
        if path.is_dir() and any(p.name != LOCKS_DIR for p in path.iterdir()):
            raise NotAStoreError(f"{path} exists and is not a maskbank store")
        raise NotAStoreError(f"no maskbank store at {path}")
    if create:
        path.mkdir(parents=True, exist_ok=True)


def _refuse_other_files(path: Path) -> None:
    """Refuse a local path that is a file or a Zarr store."""
    if path.exists() and not path.is_dir():
        raise NotAStoreError(f"{path} is a file, not a maskbank store")
    old = path / "zarr.json"
    if old.is_file():
        try:
            fmt = json.loads(old.read_text()).get("attributes", {}).get("maskbank_store")
        except ValueError:
            fmt = None
        if fmt is not None:
            raise NotAStoreError(
                f"{path} is a maskbank store of the old per-item layout (format {fmt}), which this maskbank "
                f"does not read; start a new store (a run recomputes what it needs) or keep using it with "
                f"maskbank 0.1"
            )
        raise NotAStoreError(f"{path} is a Zarr store but not a maskbank store")


def transact(
    repo: icechunk.Repository,
    location: Location,
    write: Callable[[icechunk.Session], T],
    message: str,
    metadata: dict | None = None,
) -> tuple[T, str | None]:
    """Run ``write(session)`` on a fresh writable session of the branch, then commit once (see the module
    doc); returns what ``write`` returned and the new snapshot's id (None when nothing was written).
    ``write`` may run more than once, each time on a fresh session, so it must decide what to write from
    what the session shows."""
    for attempt in range(_ATTEMPTS):
        with store_lock(location, COMMIT_LOCK) if location.is_local else nullcontext():
            session = repo.writable_session(BRANCH)
            result = write(session)
            if not session.has_uncommitted_changes:
                return result, None
            try:
                return result, session.commit(message, metadata=metadata, rebase_with=icechunk.ConflictDetector())
            except (icechunk.ConflictError, icechunk.RebaseFailedError) as e:
                log.debug("commit %r conflicted (attempt %d): %s", message, attempt + 1, e)
        time.sleep(random.uniform(0.05, 0.2 + 0.05 * min(attempt, 20)))
    raise RuntimeError(f"{location}: could not commit {message!r} after {_ATTEMPTS} attempts of concurrent writers")


def _store_format(repo: icechunk.Repository) -> int | None:
    try:
        root = zarr.open_group(repo.readonly_session(branch=BRANCH).store, mode="r")
    except Exception:  # no root group: not ours
        return None
    return root.attrs.get("maskbank_store")
