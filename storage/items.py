"""Items: groups of arrays written whole into a Zarr v3 store on a local filesystem.

An item is written as a new group under
``_staging/``; its attrs get ``{"complete": true, "content_sha256": ...}`` last, and then the directory is
moved into place with ``os.replace`` (atomic on a local filesystem). Readers treat an item without the
mark as missing; deep verification recomputes the hash over attrs, dims and array bytes. Writes of
different items may run concurrently from threads or processes; two writers of the same item both end
with one complete item in place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote, unquote

import numpy as np
import xarray as xr
import zarr
from zarr.storage import LocalStore

from maskbank.storage.arrays import (
    check_dims,
    content_sha256,
    default_dims,
    normalise,
    plain_json,
    read_group,
    write_group,
)
from maskbank.storage.locks import LOCKS_GROUP

STORE_FORMAT = 1
STAGING_GROUP = "_staging"
MARK_KEYS = ("complete", "content_sha256")

_SEGMENT = re.compile(r"^[A-Za-z0-9._%=+-]+$")
_STAGE = re.compile(r"^[a-z][a-z0-9_-]*$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class NotAStoreError(Exception):
    """The path exists but is not a maskbank store."""


class MissingItemError(LookupError):
    """No complete item at a path (absent, unmarked, or its content does not match its hash)."""


@dataclass(frozen=True)
class Item:
    """A stored item: its arrays, dims, user attrs (without the completion mark) and content hash."""

    arrays: dict[str, np.ndarray]
    dims: dict[str, tuple[str, ...]]
    attrs: dict
    content_sha256: str


def encode_id(image_id: str) -> str:
    """Image id -> one store path segment (percent-encoding; reversible with :func:`decode_id`)."""
    if not image_id:
        raise ValueError("image id must not be empty")
    node = quote(image_id, safe="-_.=+")
    if node.startswith("."):
        node = "%2E" + node[1:]
    if node.startswith("__"):
        node = "%5F" + node[1:]
    return node


def decode_id(node: str) -> str:
    return unquote(node)


class ItemStore:
    """Items and per-image stage items in a maskbank store on a local filesystem. Create with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zstore = LocalStore(path)
        self._groups: set[str] = set()

    # ----- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> Self:
        """Open the store at ``path``, creating it (or filling an empty folder) when ``create``."""
        path = Path(path).absolute()
        meta = path / "zarr.json"
        if path.exists() and not path.is_dir():
            raise NotAStoreError(f"{path} is a file, not a maskbank store")
        if meta.is_file():
            attrs = _read_json(meta).get("attributes", {})
            version = attrs.get("maskbank_store")
            if version is None:
                raise NotAStoreError(f"{path} is a Zarr group but not a maskbank store")
            if version != STORE_FORMAT:
                raise NotAStoreError(f"{path} has store format {version}; this maskbank reads {STORE_FORMAT}")
        elif path.exists() and any(path.iterdir()):
            raise NotAStoreError(f"{path} exists and is not a maskbank store")
        elif not create:
            raise NotAStoreError(f"no maskbank store at {path}")
        else:
            path.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(LocalStore(path), mode="a", zarr_format=3)
            root.attrs.update({"maskbank_store": STORE_FORMAT})
        store = cls(path)
        store._ensure_group(STAGING_GROUP)
        store._ensure_group(LOCKS_GROUP)
        return store

    # ----- generic items -------------------------------------------------------------------------

    @staticmethod
    def item_path(stage: str, key: str, image_id: str) -> str:
        """Store path of a per-image item: ``<stage>/<key>/<encoded image id>``."""
        return f"{_stage_key_path(stage, key)}/{encode_id(image_id)}"

    def write_item(
        self,
        path: str,
        arrays: Mapping[str, np.ndarray],
        attrs: Mapping | None = None,
        dims: Mapping[str, Sequence[str]] | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write a group of arrays at ``path`` atomically; returns its content hash.

        ``dims`` names each array's axes (default ``<name>_dim_<i>``); a dim name means one length across
        the item. An existing complete item is kept (its hash returned) unless ``overwrite``.
        """
        _check_path(path)
        attrs = dict(attrs or {})
        clash = [k for k in MARK_KEYS if k in attrs]
        if clash:
            raise ValueError(f"attrs {clash} are reserved for the completion mark")
        if not overwrite:
            existing = self._mark(path)
            if existing is not None:
                return existing
        if self._holds_groups(path):
            raise ValueError(f"{path!r} is a group of items, not an item")
        prepared = {name: normalise(name, a) for name, a in arrays.items()}
        given = dict(dims or {})
        dims = {name: tuple(given[name]) if name in given else default_dims(name, a) for name, a in prepared.items()}
        unknown = sorted(set(given) - set(prepared))
        if unknown:
            raise ValueError(f"dims given for arrays that are not written: {unknown}")
        check_dims(prepared, dims)
        attrs = plain_json(attrs)
        sha = content_sha256(prepared, attrs, dims)
        staged = self._staging_dir()
        try:
            write_group(staged, prepared, dims, {**attrs, "complete": True, "content_sha256": sha})
            self._ensure_group(path.rpartition("/")[0])
            return self._install(staged, path, sha, overwrite)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)

    def read_item(self, path: str, verify: bool = True) -> Item:
        """The complete item at ``path``; raises :class:`MissingItemError` if there is none or (with
        ``verify``) its content no longer matches its hash."""
        _check_path(path)
        sha = self._mark(path)
        if sha is None:
            raise MissingItemError(f"no complete item at {path!r} in {self.path}")
        try:
            arrays, dims, attrs = read_group(self._zstore, path)
        except Exception as e:  # a vanished or damaged item reads as missing, whatever the codec raised
            raise MissingItemError(f"item {path!r} in {self.path} cannot be read: {e}") from e
        user = {k: v for k, v in attrs.items() if k not in MARK_KEYS}
        if verify and content_sha256(arrays, user, dims) != sha:
            raise MissingItemError(f"item {path!r} in {self.path} does not match its content hash")
        return Item(arrays, dims, user, sha)

    def read_attrs(self, path: str) -> dict:
        """User attrs of the complete item at ``path``, without reading its arrays."""
        _check_path(path)
        attrs = self._marked_attrs(path)
        if attrs is None:
            raise MissingItemError(f"no complete item at {path!r} in {self.path}")
        return {k: v for k, v in attrs.items() if k not in MARK_KEYS}

    def item_complete(self, path: str, verify: bool = False) -> bool:
        """Whether a complete item is at ``path`` (with ``verify``: and its arrays match the hash)."""
        if not verify:
            return self._mark(path) is not None
        try:
            self.read_item(path, verify=True)
        except MissingItemError:
            return False
        return True

    def discard_damaged(self, path: str) -> bool:
        """Delete what is at ``path`` unless it is a complete item that matches its content hash, so
        that it can be written again; returns whether something was deleted."""
        _check_path(path)
        if not (self.path / path).exists() or self.item_complete(path, verify=True):
            return False
        return self.delete_path(path)

    def read_array(self, path: str, name: str) -> np.ndarray:
        """One array of the complete item at ``path``, read alone and not verified (see :meth:`read_item`)."""
        _check_path(path)
        if self._mark(path) is None:
            raise MissingItemError(f"no complete item at {path!r} in {self.path}")
        try:
            return np.asarray(zarr.open_array(self._zstore, path=f"{path}/{name}", mode="r")[...])
        except Exception as e:  # a vanished or damaged array reads as missing, whatever the codec raised
            raise MissingItemError(f"array {name!r} of item {path!r} in {self.path} cannot be read: {e}") from e

    def delete_path(self, path: str) -> bool:
        """Remove the item or group at ``path`` (atomically hidden first); False if nothing was there."""
        _check_path(path)
        trash = self._staging_dir()
        try:
            os.replace(self.path / path, trash)
        except FileNotFoundError:
            return False
        self._groups = {g for g in self._groups if g != path and not g.startswith(path + "/")}
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def list_groups(self, path: str = "") -> list[str]:
        """Names of the Zarr nodes directly under ``path`` (sorted; at the root, reserved ``_*`` left out)."""
        base = self.path / path if path else self.path
        if not base.is_dir():
            return []
        with os.scandir(base) as entries:
            return sorted(
                e.name for e in entries
                if e.is_dir() and os.path.isfile(os.path.join(e.path, "zarr.json"))
                and (path or not e.name.startswith("_"))
            )

    def open_xarray(self, path: str) -> xr.Dataset:
        """The complete item at ``path`` as a lazy ``xarray.Dataset``."""
        if self._mark(path) is None:
            raise MissingItemError(f"no complete item at {path!r} in {self.path}")
        return xr.open_zarr(str(self.path), group=path, consolidated=False)

    def clean_staging(self, max_age_s: float = 86400.0) -> int:
        """Remove staged leftovers of writers that died more than ``max_age_s`` ago; returns how many."""
        removed = 0
        now = time.time()
        with os.scandir(self.path / STAGING_GROUP) as entries:
            for e in entries:
                if e.is_dir() and now - e.stat().st_mtime > max_age_s:
                    shutil.rmtree(e.path, ignore_errors=True)
                    removed += 1
        return removed

    # ----- per-image stages ----------------------------------------------------------------------

    def has_item(self, stage: str, key: str, image_id: str, verify: bool = False) -> bool:
        return self.item_complete(self.item_path(stage, key, image_id), verify=verify)

    def missing(self, stage: str, key: str, image_ids: Sequence[str]) -> list[str]:
        """The ``image_ids`` without a complete item for ``stage``/``key`` (order kept)."""
        return [i for i in image_ids if not self.has_item(stage, key, i)]

    def list_keys(self, stage: str) -> list[str]:
        """Stage keys present under ``stage`` (sorted)."""
        return self.list_groups(_check_stage(stage))

    def list_items(self, stage: str, key: str) -> list[str]:
        """Image ids with a complete item under ``stage``/``key`` (sorted)."""
        base = _stage_key_path(stage, key)
        return sorted(decode_id(n) for n in self.list_groups(base) if self._mark(f"{base}/{n}") is not None)

    def delete_item(self, stage: str, key: str, image_id: str) -> bool:
        return self.delete_path(self.item_path(stage, key, image_id))

    def delete_key(self, stage: str, key: str) -> bool:
        """Remove every item of one stage key."""
        return self.delete_path(_stage_key_path(stage, key))

    def write_image_item(
        self,
        stage: str,
        key: str,
        image_id: str,
        arrays: Mapping[str, np.ndarray],
        attrs: Mapping | None = None,
        dims: Mapping[str, Sequence[str]] | None = None,
        overwrite: bool = False,
    ) -> str:
        """:meth:`write_item` at :meth:`item_path`; ``attrs`` also record ``image_id``."""
        path = self.item_path(stage, key, image_id)
        return self.write_item(path, arrays, {**(attrs or {}), "image_id": image_id}, dims, overwrite)

    def read_image_item(self, stage: str, key: str, image_id: str, verify: bool = True) -> Item:
        return self.read_item(self.item_path(stage, key, image_id), verify=verify)

    # ----- internals -----------------------------------------------------------------------------

    def _marked_attrs(self, path: str) -> dict | None:
        """All attrs of a complete item at ``path``, else None (reads only its zarr.json)."""
        try:
            attrs = _read_json(self.path / path / "zarr.json").get("attributes", {})
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        complete = attrs.get("complete") is True and isinstance(attrs.get("content_sha256"), str)
        return attrs if complete else None

    def _mark(self, path: str) -> str | None:
        """The content hash of a complete item at ``path``, else None."""
        attrs = self._marked_attrs(path)
        return None if attrs is None else attrs["content_sha256"]

    def _holds_groups(self, path: str) -> bool:
        """Whether ``path`` is a container of groups (items only ever hold arrays)."""
        try:
            with os.scandir(self.path / path) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):  # nothing there, or swapped out by a concurrent writer
            return False
        for e in entries:
            try:
                if e.is_dir() and _read_json(Path(e.path) / "zarr.json").get("node_type") == "group":
                    return True
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
        return False

    def _staging_dir(self) -> Path:
        return self.path / STAGING_GROUP / f"{os.getpid()}-{uuid.uuid4().hex}"

    def _ensure_group(self, path: str) -> None:
        """Create the (empty-attrs) groups along ``path`` that do not exist yet."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in self._groups:
                continue
            if not (self.path / prefix / "zarr.json").is_file():
                try:
                    zarr.open_group(self._zstore, path=prefix, mode="a", zarr_format=3)
                except zarr.errors.ContainsGroupError:
                    pass  # created concurrently
            self._groups.add(prefix)

    def _install(self, staged: Path, path: str, sha: str, overwrite: bool, attempts: int = 20) -> str:
        """Move the staged item into place; an existing item is kept (not ``overwrite``) or swapped out."""
        target = self.path / path
        for _ in range(attempts):
            try:
                os.replace(staged, target)
                return sha
            except FileNotFoundError:  # a parent group was deleted meanwhile
                self._groups.clear()
                self._ensure_group(path.rpartition("/")[0])
                continue
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if not overwrite:
                existing = self._mark(path)
                if existing is not None:
                    return existing
            trash = self._staging_dir()
            try:
                os.replace(target, trash)
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        raise RuntimeError(f"could not install item {path!r}: it kept being replaced concurrently")


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or any(not _SEGMENT.match(p) or p in (".", "..") or p.startswith("__") for p in parts):
        raise ValueError(f"invalid store path {path!r}: segments of [A-Za-z0-9._%=+-], not '.', '..' or '__*'")
    if parts[0].startswith("_"):
        raise ValueError(f"store path {path!r} is reserved")


def _check_stage(stage: str) -> str:
    if not _STAGE.match(stage):
        raise ValueError(f"stage name must match {_STAGE.pattern}, got {stage!r}")
    return stage


def _stage_key_path(stage: str, key: str) -> str:
    return f"{_check_stage(stage)}/{checked_key(key)}"


def checked_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"key must match {_KEY.pattern}, got {key!r}")
    return key


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
