"""Versioned outputs (pseudo-labels, banks, predictions, evaluations): commits and immutable tags.

``version_id = sha256(kind, dataset fingerprints, params, parent ids, code version)[:16]``. Publishing a
version writes the group ``versions/<id>`` (its arrays, and attrs ``{kind, params, parents, datasets,
code_version, created, metrics}``) in one commit whose metadata carries the same, and tags that commit
``<kind>.<id>``. A tag never moves, so a version reads the same forever (``Store.open(..., version=id)``),
whatever is written later. Publishing an id that exists returns the existing version untouched.

Deleting a version removes its tag and its groups from the branch; the data stays in older snapshots
until :func:`collect_garbage` expires those and deletes what no branch or tag reaches any more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import icechunk
import numpy as np

from maskbank.storage.arrays import plain_json
from maskbank.storage.layout import labels_group, version_group, version_tag
from maskbank.storage.store import Item, MissingItemError, Store

_ATTRS = ("kind", "params", "parents", "datasets", "code_version", "created", "metrics")


class VersionInUseError(Exception):
    """A version cannot be deleted: other versions name it as a parent."""


@dataclass(frozen=True)
class VersionInfo:
    """What a version is and where it came from."""

    id: str
    kind: str
    params: dict
    parents: tuple[str, ...]
    datasets: tuple[str, ...]
    code_version: str
    created: str
    metrics: dict | None
    tag: str = ""
    """The tag that publishes it (``<kind>.<id>``, with ``.<n>`` for a republication)."""

    @property
    def path(self) -> str:
        """Store path of the version's group (for ``Store.read_item`` / ``Store.open_xarray``)."""
        return version_group(self.id)



def version_path(version_id: str) -> str:
    return version_group(version_id)


def version_id(
    kind: str, params: Mapping, parents: Sequence[str] = (), datasets: Sequence[str] = (), *, code_version: str
) -> str:
    """The id a version with these inputs gets (order of ``parents`` and ``datasets`` does not matter)."""
    identity = [kind, plain_json(params), sorted(parents), sorted(datasets), code_version]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


def publish_version(
    store: Store,
    kind: str,
    params: Mapping,
    parents: Sequence[str] = (),
    datasets: Sequence[str] = (),
    *,
    code_version: str,
    arrays: Mapping[str, np.ndarray] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    metrics: Mapping | None = None,
) -> VersionInfo:
    """Publish a version once (commit and tag); an existing id is returned as it is. Parents must exist."""
    vid = version_id(kind, params, parents, datasets, code_version=code_version)
    existing = store.version_tags()
    if vid in existing.values():
        return get_version(store, vid)
    missing = [p for p in parents if p not in existing.values()]
    if missing:
        raise MissingItemError(f"parent versions not in {store.url}: {missing}")
    attrs = {
        "kind": kind,
        "params": plain_json(params),
        "parents": sorted(parents),
        "datasets": sorted(datasets),
        "code_version": code_version,
        "created": datetime.now(timezone.utc).isoformat(),
        "metrics": plain_json(metrics) if metrics is not None else None,
    }
    meta = {k: attrs[k] for k in ("kind", "parents", "datasets", "code_version")} | {"version": vid}
    store.write_item(version_group(vid), arrays or {}, attrs, dims, message=f"publish {kind} {vid}", metadata=meta)
    snapshot = store.snapshot_id  # the branch tip holds the version (its commit, or a later one)
    for publication in range(1, 1000):
        tag = version_tag(kind, vid, publication)
        try:
            store.repo.create_tag(tag, snapshot)
            break
        except icechunk.IcechunkError:
            if vid in store.version_tags().values():  # a concurrent publisher tagged it
                break
            # else the name belonged to a deleted publication of this version: take the next one
    return get_version(store, vid)


def get_version(store: Store, version_id: str) -> VersionInfo:
    """The version's info (as published); raises :class:`MissingItemError` when it is not published."""
    tag = next((t for t, v in store.version_tags().items() if v == version_id), "")
    return _info(version_id, _at(store, version_id).read_attrs(version_group(version_id)), tag)


def read_version(store: Store, version_id: str, verify: bool = True) -> Item:
    """The version's arrays and attrs, as published."""
    return _at(store, version_id).read_item(version_group(version_id), verify=verify)


def version_exists(store: Store, version_id: str) -> bool:
    return version_id in store.version_tags().values()


def list_versions(store: Store, kind: str | None = None) -> list[VersionInfo]:
    """Published versions (of ``kind``), oldest first."""
    infos = []
    for tag, vid in store.version_tags().items():
        try:
            info = _info(vid, _at(store, vid).read_attrs(version_group(vid)), tag)
        except (MissingItemError, ValueError):
            continue
        if kind is None or info.kind == kind:
            infos.append(info)
    return sorted(infos, key=lambda v: (v.created, v.id))


def children(store: Store, version_id: str) -> list[str]:
    """Ids of the versions that name ``version_id`` as a parent."""
    return [v.id for v in list_versions(store) if version_id in v.parents]


def delete_version(store: Store, version_id: str, force: bool = False) -> None:
    """Delete a version: its tag, and its groups on the branch; refused while others name it as a parent,
    unless ``force``. Its data is reclaimed by :func:`collect_garbage`."""
    if store.read_only:
        raise PermissionError(f"{store.url} is open read-only at version {store.version_id}")
    tags = [t for t, v in store.version_tags().items() if v == version_id]
    if not tags:
        raise MissingItemError(f"no version {version_id} in {store.url}")
    users = children(store, version_id)
    if users and not force:
        raise VersionInUseError(f"version {version_id} is a parent of {users}; pass force=True to delete anyway")
    store.delete_paths([p for p in (version_group(version_id), labels_group(version_id)) if store.exists(p)],
                       message=f"delete version {version_id}")
    for t in tags:
        store.repo.delete_tag(t)


def collect_garbage(store: Store, older_than: timedelta = timedelta(days=1), dry_run: bool = False) -> dict:
    """Expire the snapshots older than ``older_than`` that no tag or branch points at, then delete every
    object that no remaining snapshot reaches and that is older than ``older_than`` (so that the writes of a
    transaction still running are kept). Returns what was (or, with ``dry_run``, would be) deleted."""
    cutoff = datetime.now(timezone.utc) - older_than
    expired = set() if dry_run else store.repo.expire_snapshots(older_than=cutoff)
    summary = store.repo.garbage_collect(cutoff, dry_run=dry_run)
    return {"snapshots_expired": len(expired), "chunks_deleted": summary.chunks_deleted,
            "manifests_deleted": summary.manifests_deleted, "snapshots_deleted": summary.snapshots_deleted,
            "bytes_deleted": summary.bytes_deleted}


def _at(store: Store, version_id: str) -> Store:
    if store.version_id == version_id:
        return store
    try:
        return store.at_version(version_id)
    except MissingItemError:
        raise MissingItemError(f"no version {version_id} in {store.url}") from None


def _info(vid: str, attrs: Mapping, tag: str) -> VersionInfo:
    missing = [k for k in _ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"versions/{vid} lacks attrs {missing}")
    return VersionInfo(
        id=vid,
        kind=attrs["kind"],
        params=attrs["params"],
        parents=tuple(attrs["parents"]),
        datasets=tuple(attrs["datasets"]),
        code_version=attrs["code_version"],
        created=attrs["created"],
        metrics=attrs["metrics"],
        tag=tag,
    )
