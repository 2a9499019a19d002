"""Versioned outputs (banks, predictions, metrics): content-addressed, published once, never overwritten.

``version_id = sha256(kind, dataset fingerprints, params, parent ids, code version)[:16]``. A version is the
store item ``versions/<id>`` whose attrs are ``{kind, params, parents, datasets, code_version, created,
metrics}`` (plus the store's completion mark) and whose arrays are whatever the output holds. Publishing
writes it under a staging name and moves it into place; publishing an id that exists returns the
existing version untouched. Publishing and deleting hold the store lock ``versions``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from maskbank.storage.arrays import plain_json
from maskbank.storage.locks import store_lock
from maskbank.storage.store import Item, MissingItemError, Store

VERSIONS = "versions"
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

    @property
    def path(self) -> str:
        """Store path of the version's group (for ``Store.read_item`` / ``Store.open_xarray``)."""
        return version_path(self.id)


def version_path(version_id: str) -> str:
    if len(version_id) != 16 or any(c not in "0123456789abcdef" for c in version_id):
        raise ValueError(f"not a version id: {version_id!r}")
    return f"{VERSIONS}/{version_id}"


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
    """Publish a version once; an existing id is returned as it is. Parents must exist."""
    vid = version_id(kind, params, parents, datasets, code_version=code_version)
    with store_lock(store.path, VERSIONS):
        if store.item_complete(version_path(vid)):
            return get_version(store, vid)
        missing = [p for p in parents if not store.item_complete(version_path(p))]
        if missing:
            raise MissingItemError(f"parent versions not in {store.path}: {missing}")
        attrs = {
            "kind": kind,
            "params": plain_json(params),
            "parents": sorted(parents),
            "datasets": sorted(datasets),
            "code_version": code_version,
            "created": datetime.now(timezone.utc).isoformat(),
            "metrics": plain_json(metrics) if metrics is not None else None,
        }
        store.write_item(version_path(vid), arrays or {}, attrs, dims)
    return get_version(store, vid)


def get_version(store: Store, version_id: str) -> VersionInfo:
    """The version's info; raises :class:`MissingItemError` when it is not published."""
    return _info(version_id, store.read_attrs(version_path(version_id)))


def read_version(store: Store, version_id: str, verify: bool = True) -> Item:
    """The version's arrays and attrs."""
    return store.read_item(version_path(version_id), verify=verify)


def list_versions(store: Store, kind: str | None = None) -> list[VersionInfo]:
    """Published versions (of ``kind``), oldest first."""
    infos = []
    for vid in store.list_groups(VERSIONS):
        try:
            info = get_version(store, vid)
        except (MissingItemError, ValueError):
            continue
        if kind is None or info.kind == kind:
            infos.append(info)
    return sorted(infos, key=lambda v: (v.created, v.id))


def children(store: Store, version_id: str) -> list[str]:
    """Ids of the versions that name ``version_id`` as a parent."""
    return [v.id for v in list_versions(store) if version_id in v.parents]


def delete_version(store: Store, version_id: str, force: bool = False) -> None:
    """Delete a version; refused while others name it as a parent, unless ``force``."""
    with store_lock(store.path, VERSIONS):
        path = version_path(version_id)
        if not store.item_complete(path):
            raise MissingItemError(f"no version {version_id} in {store.path}")
        users = children(store, version_id)
        if users and not force:
            raise VersionInUseError(f"version {version_id} is a parent of {users}; pass force=True to delete anyway")
        store.delete_path(path)


def _info(vid: str, attrs: Mapping) -> VersionInfo:
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
    )
