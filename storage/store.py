"""The maskbank store: one Zarr v3 group on a local filesystem holding everything a run produces.

Layout (every array carries ``dimension_names``, so ``xarray.open_zarr(path, group=...)`` reads any item)::

    <store>/                              root group, attrs {"maskbank_store": 1}
      datasets/<fingerprint>/manifest     one dataset's manifest (item):
                                            arrays image[image] (str), class[class] (str),
                                            labels[image, class] uint8 multi-hot (column 0 = background, 0),
                                            labelled[image] bool, has_truth[image] bool,
                                            height[image], width[image] int32 (-1 = unknown);
                                            attrs name, root, fingerprint, class_names, image_ids, labels
                                            (lists, null = unlabelled), sizes, has_truth, paths, exif_transpose
      proposals/<stage_key>/<image>       one image's mask proposals (item): rle[mask] str (pycocotools
                                            compressed counts), predicted_iou[mask], stability_score[mask]
                                            float32, bbox[mask, xywh] int32, area[mask] int64;
                                            attrs image_hw, image_id
      features/<stage_key>/<image>        one image's patch features (item): features[y, x, channel]
                                            float16, one chunk; attrs image_hw, resized_hw, patch_size,
                                            grid_hw (a PatchGeometry), image_id
      <stage>/<stage_key>/<image>         any other per-image stage output, via write_item
      versions/<version_id>               published outputs, see ``maskbank.storage.versions``
      _staging/                           items being written or deleted (never read)
      _locks/<name>/                      named locks, see ``maskbank.storage.locks``

``<stage_key>`` is a hash the caller computes from the stage's parameters and code version. ``<image>`` is
the image id percent-encoded into one path segment (``a/b.jpg`` -> ``a%2Fb.jpg``).

Items and completion: an item is a group of arrays written whole. It is written as a new group under
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
from maskbank.storage.datasets.manifest import Dataset, ImageRecord
from maskbank.storage.locks import LOCKS_GROUP
from maskbank.tasks import rle
from maskbank.tasks.geometry import PatchGeometry

STORE_FORMAT = 1
STAGING_GROUP = "_staging"
PROPOSALS = "proposals"
FEATURES = "features"
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


@dataclass(frozen=True)
class StoredProposals:
    """One image's proposals as stored: RLEs ``{"size": [h, w], "counts": str}``, ``predicted_iou`` and
    ``stability_score`` float32, ``bbox`` int32 xywh, ``area`` int64 (the fields of ``tasks.propose.Proposals``)."""

    rles: list[dict]
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    image_hw: tuple[int, int]
    attrs: dict

    def __len__(self) -> int:
        return len(self.rles)

    def masks(self) -> np.ndarray:
        """Decoded masks, bool ``[N, H, W]``."""
        return rle.decode(self.rles, self.image_hw)


@dataclass(frozen=True)
class Manifest:
    """A dataset as recorded in a store (no truth reader): what a stage needs to know about its images."""

    fingerprint: str
    name: str
    root: Path
    class_names: list[str]
    records: list[ImageRecord]
    exif_transpose: bool

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]


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


class Store:
    """A maskbank store on a local filesystem. Create with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zstore = LocalStore(path)
        self._groups: set[str] = set()

    # ----- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> Store:
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

    def write_proposals(
        self,
        key: str,
        image_id: str,
        rles: Sequence[Mapping],
        predicted_iou: np.ndarray | None = None,
        stability_score: np.ndarray | None = None,
        bbox: np.ndarray | None = None,
        area: np.ndarray | None = None,
        image_hw: tuple[int, int] | None = None,
        attrs: Mapping | None = None,
        overwrite: bool = False,
    ) -> str:
        """Store one image's proposals: compressed COCO RLEs of one ``image_hw`` and per-mask values.

        Missing scores are stored as NaN; missing ``bbox`` (xywh) and ``area`` are measured from the RLEs.
        ``image_hw`` is required when there are no proposals.
        """
        n = len(rles)
        hw = _rle_size(rles) if n else None
        if image_hw is not None and hw not in (None, tuple(image_hw)):
            raise ValueError(f"image_hw {tuple(image_hw)} != RLE size {hw}")
        hw = hw or (tuple(int(v) for v in image_hw) if image_hw is not None else None)
        if hw is None:
            raise ValueError("no proposals: give image_hw")
        coded = [{"size": list(hw), "counts": _counts_str(r["counts"])} for r in rles]
        bbox = rle.bbox(coded) if bbox is None else np.rint(np.asarray(bbox, np.float64)).astype(np.int32)
        area = rle.area(coded) if area is None else np.asarray(area, np.int64)
        arrays = {
            "rle": np.array([c["counts"] for c in coded], dtype=np.dtypes.StringDType()),
            "predicted_iou": _per_mask("predicted_iou", predicted_iou, n),
            "stability_score": _per_mask("stability_score", stability_score, n),
            "bbox": bbox.reshape(n, 4),
            "area": area.reshape(n),
        }
        dims = {"rle": ("mask",), "predicted_iou": ("mask",), "stability_score": ("mask",), "bbox": ("mask", "xywh"),
                "area": ("mask",)}
        item_attrs = {**(attrs or {}), "image_hw": list(hw)}
        return self.write_image_item(PROPOSALS, key, image_id, arrays, item_attrs, dims, overwrite)

    def read_proposals(self, key: str, image_id: str, verify: bool = True) -> StoredProposals:
        item = self.read_image_item(PROPOSALS, key, image_id, verify)
        hw = tuple(int(v) for v in item.attrs["image_hw"])
        rles = [{"size": list(hw), "counts": s} for s in item.arrays["rle"].tolist()]
        a = item.arrays
        return StoredProposals(rles, a["predicted_iou"], a["stability_score"], a["bbox"], a["area"], hw, item.attrs)

    def write_features(
        self,
        key: str,
        image_id: str,
        features: np.ndarray,
        geometry: PatchGeometry,
        attrs: Mapping | None = None,
        overwrite: bool = False,
    ) -> str:
        """Store one image's ``[Hp, Wp, C]`` patch features as float16 with its :class:`PatchGeometry`."""
        f = np.asarray(features)
        if f.ndim != 3 or f.shape[:2] != tuple(geometry.grid_hw):
            raise ValueError(f"features {f.shape} do not match the token grid {geometry.grid_hw} (need [Hp, Wp, C])")
        if f.size and not (np.isfinite(f).all() and np.abs(f).max() <= np.finfo(np.float16).max):
            raise ValueError("features must be finite and within float16 range (+-65504)")
        f16 = f.astype(np.float16)
        geo = {
            "image_hw": list(geometry.image_hw),
            "resized_hw": list(geometry.resized_hw),
            "patch_size": int(geometry.patch_size),
            "grid_hw": list(geometry.grid_hw),
        }
        return self.write_image_item(
            FEATURES, key, image_id, {"features": f16}, {**(attrs or {}), **geo},
            {"features": ("y", "x", "channel")}, overwrite,
        )

    def read_features(self, key: str, image_id: str, verify: bool = True) -> tuple[np.ndarray, PatchGeometry]:
        """``(features float16 [Hp, Wp, C], geometry)``."""
        item = self.read_image_item(FEATURES, key, image_id, verify)
        a = item.attrs
        geometry = PatchGeometry(
            tuple(a["image_hw"]), tuple(a["resized_hw"]), int(a["patch_size"]), tuple(a["grid_hw"])
        )
        return item.arrays["features"], geometry

    # ----- dataset manifests ---------------------------------------------------------------------

    def write_manifest(self, dataset: Dataset, hash_cache: str | Path | None = None) -> str:
        """Record ``dataset`` under ``datasets/<fingerprint>/manifest`` (once); returns the fingerprint."""
        fp = dataset.fingerprint(hash_cache)
        recs = dataset.records
        k = len(dataset.class_names)
        multi_hot = np.zeros((len(recs), k), np.uint8)
        for i, r in enumerate(recs):
            multi_hot[i, list(r.labels or ())] = 1
        root = Path(dataset.root).absolute()
        arrays = {
            "image": np.array([r.image_id for r in recs], dtype=np.dtypes.StringDType()),
            "class": np.array(dataset.class_names, dtype=np.dtypes.StringDType()),
            "labels": multi_hot,
            "labelled": np.array([r.labels is not None for r in recs], bool),
            "has_truth": np.array([r.has_truth for r in recs], bool),
            "height": np.array([-1 if r.height is None else r.height for r in recs], np.int32),
            "width": np.array([-1 if r.width is None else r.width for r in recs], np.int32),
        }
        dims = {"image": ("image",), "class": ("class",), "labels": ("image", "class"), "labelled": ("image",),
                "has_truth": ("image",), "height": ("image",), "width": ("image",)}
        attrs = {
            "name": dataset.name,
            "root": str(root),
            "fingerprint": fp,
            "class_names": dataset.class_names,
            "image_ids": [r.image_id for r in recs],
            "labels": [None if r.labels is None else list(r.labels) for r in recs],
            "sizes": [None if r.height is None else [r.height, r.width] for r in recs],
            "has_truth": [r.has_truth for r in recs],
            "paths": [_relative_to(r.path, root) for r in recs],
            "exif_transpose": dataset.exif_transpose,
        }
        self.write_item(self.manifest_path(fp), arrays, attrs, dims)
        return fp

    @staticmethod
    def manifest_path(fingerprint: str) -> str:
        """Store path of a dataset's manifest item."""
        return f"datasets/{_checked_key(fingerprint)}/manifest"

    def read_manifest(self, fingerprint: str) -> Manifest:
        item = self.read_item(self.manifest_path(fingerprint))
        a = item.attrs
        root = Path(a["root"])
        records = [
            ImageRecord(
                image_id, root / p, None if lab is None else tuple(lab),
                None if size is None else size[0], None if size is None else size[1], bool(t),
            )
            for image_id, p, lab, size, t in zip(
                a["image_ids"], a["paths"], a["labels"], a["sizes"], a["has_truth"], strict=True
            )
        ]
        return Manifest(a["fingerprint"], a["name"], root, list(a["class_names"]), records, bool(a["exif_transpose"]))

    def list_manifests(self) -> list[str]:
        """Fingerprints of the datasets recorded in this store."""
        return [fp for fp in self.list_groups("datasets") if self._mark(f"datasets/{fp}/manifest") is not None]

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
        base = self.path / path
        if not base.is_dir():
            return False
        with os.scandir(base) as entries:
            for e in entries:
                try:
                    if e.is_dir() and _read_json(Path(e.path) / "zarr.json").get("node_type") == "group":
                        return True
                except (FileNotFoundError, ValueError):
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
    return f"{_check_stage(stage)}/{_checked_key(key)}"


def _checked_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"key must match {_KEY.pattern}, got {key!r}")
    return key


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _relative_to(path: Path, root: Path) -> str:
    p = Path(path).absolute()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _rle_size(rles: Sequence[Mapping]) -> tuple[int, int]:
    sizes = {tuple(int(v) for v in r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"proposals of one image must share one RLE size, got {sorted(sizes)}")
    return sizes.pop()


def _counts_str(counts: object) -> str:
    if isinstance(counts, bytes):
        return counts.decode("ascii")
    if isinstance(counts, str):
        return counts
    raise TypeError("RLE counts must be compressed (str or bytes, as from pycocotools.mask.encode)")


def _per_mask(name: str, values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan, np.float32)
    a = np.asarray(values, np.float32)
    if a.shape != (n,):
        raise ValueError(f"{name} must have one value per mask ({n}), got shape {a.shape}")
    return a
