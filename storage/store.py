"""The maskbank store: one icechunk repository (a versioned Zarr 3 hierarchy) holding everything a run
produces, on a local path or in object storage (see :mod:`maskbank.storage.location`).

The layout is :mod:`maskbank.storage.layout`; per-image stages store a whole collection as dataset-level
arrays with an ``image`` dimension (:mod:`maskbank.storage.image_arrays`), so that::

    store = Store.open("runs/coco.mb")
    ds = store.open_xarray("features/<stage key>")     # lazy, [image, y, x, channel]
    ds.sel(image="<image key>")

Every write is a transaction (:func:`maskbank.storage.repository.transact`): nothing it writes is visible
before its commit. A store opened at a version (``Store.open(location, version=...)``) reads the
repository as of that version's commit, whatever was written since.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import icechunk
import numpy as np
import xarray as xr
import zarr

from maskbank.storage import layout
from maskbank.storage.arrays import (
    check_dims, content_sha256, default_dims, error_reason, normalise, plain_json, read_group, write_group,
)
from maskbank.storage.datasets.manifest import Dataset, ImageRecord
from maskbank.storage.image_arrays import (
    IMAGE, SHA, ImageOutput, MissingImageError, Schema, drop_images, element_index, key_lists, read_elements, read_image,
    write_images,
)
from maskbank.storage.layout import BRANCH, FEATURES, LABELS, POOLED, PROPOSALS, STORE_FORMAT
from maskbank.storage.location import Location, LocationError, parse_location
from maskbank.storage.repository import NotAStoreError, open_repository, transact
from maskbank.tasks import rle
from maskbank.tasks.geometry import PatchGeometry
from maskbank.tasks.proposals import Proposals

__all__ = [
    "FEATURES", "PROPOSALS", "POOLED", "LABELS", "STORE_FORMAT", "ImageOutput", "Item", "Manifest",
    "MissingItemError", "NotAStoreError", "Store", "LocationError",
]

T = TypeVar("T")
SHA_ATTR = "content_sha256"

PROPOSALS_SCHEMA = Schema(
    {"rle": ("proposal",), "predicted_iou": ("proposal",), "stability_score": ("proposal",),
     "bbox": ("proposal", "xywh"), "area": ("proposal",), "image_hw": ("hw",)},
    element_dim="proposal",
)
BOX_PROPOSALS_SCHEMA = Schema(
    {**PROPOSALS_SCHEMA.dims, "box_class": ("proposal",), "box_score": ("proposal",)}, element_dim="proposal",
)
"""Proposals made from a detector's boxes: each also has its box's class and score (see ``Proposals``)."""
POOLED_SCHEMA = Schema(
    {"features": ("proposal", "channel"), "saliency": ("proposal",), "area": ("proposal",), "image_hw": ("hw",)},
    element_dim="proposal",
)
_GEOMETRY_DIMS = {"image_hw": ("hw",), "resized_hw": ("hw",), "grid_hw": ("hw",), "patch_size": ()}
FEATURES_SCHEMA = Schema({"features": ("y", "x", "channel"), **_GEOMETRY_DIMS}, padded=frozenset({"features"}))
FEATURES_SALIENCY_SCHEMA = Schema(
    {"features": ("y", "x", "channel"), "saliency": ("saliency_y", "saliency_x"), **_GEOMETRY_DIMS},
    padded=frozenset({"features", "saliency"}),
)
LABELS_SCHEMA = Schema({"labels": ("y", "x"), "source_image_id": ()}, padded=frozenset({"labels"}))


class MissingItemError(LookupError):
    """No (intact) output where one was expected: absent, or its content does not match its hash."""


@dataclass(frozen=True)
class Item:
    """A stored group: its arrays, dims, attrs (without the content hash) and content hash."""

    arrays: dict[str, np.ndarray]
    dims: dict[str, tuple[str, ...]]
    attrs: dict
    content_sha256: str


@dataclass(frozen=True)
class Manifest:
    """A dataset as recorded in a store (no truth reader): what a stage needs to know about its images."""

    fingerprint: str
    name: str
    root: Path
    class_names: list[str]
    records: list[ImageRecord]
    exif_transpose: bool
    has_background: bool = True
    spec: dict | None = None
    """How the dataset was read (``DatasetSpec.to_dict``), to read it again; None in older stores."""

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]


class Store:
    """A maskbank store. Create with :meth:`open`."""

    def __init__(self, location: Location, repo: icechunk.Repository, pinned: str | None = None,
                 version_id: str | None = None) -> None:
        self.location = location
        self.repo = repo
        self.version_id = version_id
        self._pinned = pinned
        self._session: icechunk.Session | None = None
        self._rows: dict[str, dict[str, int]] = {}
        self._elements: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # ----- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, location: str | Path | Location, create: bool = True, *, version: str | None = None) -> Self:
        """Open the store at ``location`` (a path or URL), creating it when ``create`` and the place is
        empty. With ``version``, the store reads as of that version's commit and cannot be written."""
        loc = location if isinstance(location, Location) else parse_location(location)
        repo = open_repository(loc, create=create and version is None)
        store = cls(loc, repo)
        return store.at_version(version) if version is not None else store

    def at_version(self, version_id: str) -> Self:
        """This store read-only as of the commit that published ``version_id``."""
        layout.checked_version_id(version_id)
        tags = [t for t, v in self.version_tags().items() if v == version_id]
        if not tags:
            raise MissingItemError(f"no version {version_id} in {self.url}")
        return type(self)(self.location, self.repo, self.repo.lookup_tag(tags[0]), version_id)

    def version_tags(self) -> dict[str, str]:
        """Version tag -> version id, for every published version (tags that are not versions left out)."""
        parsed = {t: layout.parse_version_tag(t) for t in self.repo.list_tags()}
        return {t: p[1] for t, p in parsed.items() if p is not None}

    @property
    def url(self) -> str:
        """The store's location as a string (an absolute path for a local store)."""
        return str(self.location)

    @property
    def read_only(self) -> bool:
        return self._pinned is not None

    @property
    def snapshot_id(self) -> str:
        return self._read_session().snapshot_id

    def refresh(self) -> None:
        """See what was committed since this store was opened (no-op for a store opened at a version)."""
        self._session = None
        self._rows.clear()
        self._elements.clear()

    # ----- sessions and transactions -------------------------------------------------------------

    def _read_session(self) -> icechunk.Session:
        if self._session is None:
            if self._pinned is not None:
                self._session = self.repo.readonly_session(snapshot_id=self._pinned)
            else:
                self._session = self.repo.readonly_session(branch=BRANCH)
        return self._session

    def root(self) -> zarr.Group:
        """The root group as this store reads it (read-only)."""
        return zarr.open_group(self._read_session().store, mode="r")

    def transact(self, write: Callable[[zarr.Group], T], message: str, metadata: Mapping | None = None) -> tuple[T, str | None]:
        """Run ``write(root group)`` in one transaction (see :func:`~maskbank.storage.repository.transact`);
        returns its result and the commit's snapshot id (None when nothing changed)."""
        return self._transact_session(lambda s: write(zarr.open_group(s.store, mode="r+")), message, metadata)

    def _transact_session(self, write: Callable[[icechunk.Session], T], message: str,
                          metadata: Mapping | None = None) -> tuple[T, str | None]:
        """:meth:`transact` with ``write`` given the writable session itself."""
        if self.read_only:
            raise PermissionError(f"{self.url} is open read-only at version {self.version_id}")
        result, snapshot = transact(self.repo, self.location, write, message, plain_json(dict(metadata or {})))
        self.refresh()
        return result, snapshot

    def _group(self, path: str) -> zarr.Group | None:
        try:
            node = self.root()[path]
        except KeyError:
            return None
        return node if isinstance(node, zarr.Group) else None

    # ----- whole groups (manifests, versions) ----------------------------------------------------

    def write_item(self, path: str, arrays: Mapping[str, np.ndarray], attrs: Mapping | None = None,
                   dims: Mapping[str, Sequence[str]] | None = None, overwrite: bool = False,
                   message: str | None = None, metadata: Mapping | None = None) -> tuple[str, str | None]:
        """Write a group of arrays at ``path`` in one commit; returns its content hash and the commit's
        snapshot id (None when an existing item was kept). An existing intact item is kept unless
        ``overwrite``. ``dims`` names each array's axes (default ``<name>_dim_<i>``)."""
        attrs = plain_json(dict(attrs or {}))
        if SHA_ATTR in attrs:
            raise ValueError(f"attr {SHA_ATTR!r} is reserved for the content hash")
        prepared = {name: normalise(name, a) for name, a in arrays.items()}
        given = {k: tuple(v) for k, v in (dims or {}).items()}
        unknown = sorted(set(given) - set(prepared))
        if unknown:
            raise ValueError(f"dims given for arrays that are not written: {unknown}")
        full_dims = {n: given.get(n, default_dims(n, a)) for n, a in prepared.items()}
        check_dims(prepared, full_dims)
        sha = content_sha256(prepared, attrs, full_dims)

        def write(root: zarr.Group) -> str:
            if not overwrite:
                existing = _sha_of(root, path)
                if existing is not None:
                    return existing
            write_group(root, path, prepared, full_dims, {**attrs, SHA_ATTR: sha})
            return sha

        return self.transact(write, message or f"write {path}", metadata)

    def read_item(self, path: str, verify: bool = True) -> Item:
        """The group at ``path``; raises :class:`MissingItemError` if there is none or (with ``verify``) its
        content no longer matches its hash."""
        group = self._group(path)
        if group is None or not isinstance(group.attrs.get(SHA_ATTR), str):
            raise MissingItemError(f"nothing at {path!r} in {self.url}")
        try:
            arrays, dims, attrs = read_group(group)
        except Exception as e:  # a damaged chunk reads as missing, whatever the codec raised
            raise MissingItemError(f"{path!r} in {self.url} cannot be read: {error_reason(e)}") from e
        sha = attrs.pop(SHA_ATTR)
        if verify and content_sha256(arrays, attrs, dims) != sha:
            raise MissingItemError(f"{path!r} in {self.url} does not match its content hash")
        return Item(arrays, dims, attrs, sha)

    def read_attrs(self, path: str) -> dict:
        """Attrs of the group at ``path``, without reading its arrays."""
        group = self._group(path)
        if group is None or not isinstance(group.attrs.get(SHA_ATTR), str):
            raise MissingItemError(f"nothing at {path!r} in {self.url}")
        return {k: v for k, v in group.attrs.items() if k != SHA_ATTR}

    def read_array(self, path: str, name: str) -> np.ndarray:
        """One array of the group at ``path``, not verified."""
        group = self._group(path)
        if group is None or name not in group:
            raise MissingItemError(f"no array {name!r} at {path!r} in {self.url}")
        try:
            return np.asarray(group[name][...])
        except Exception as e:
            raise MissingItemError(f"array {name!r} of {path!r} in {self.url} cannot be read: {error_reason(e)}") from e

    def item_complete(self, path: str, verify: bool = False) -> bool:
        """Whether an item is at ``path`` (with ``verify``: and its arrays match its hash)."""
        if not verify:
            group = self._group(path)
            return group is not None and isinstance(group.attrs.get(SHA_ATTR), str)
        try:
            self.read_item(path, verify=True)
        except MissingItemError:
            return False
        return True

    def exists(self, path: str) -> bool:
        return self._group(path) is not None

    def delete_paths(self, paths: Sequence[str], message: str | None = None) -> list[str]:
        """Remove the groups at ``paths`` in one commit; returns those that were there."""

        def write(root: zarr.Group) -> list[str]:
            gone = [p for p in paths if p in root]
            for p in gone:
                del root[p]
            return gone

        return self.transact(write, message or f"delete {', '.join(paths)}")[0]

    def list_groups(self, path: str = "") -> list[str]:
        """Names of the groups directly under ``path`` (sorted)."""
        group = self.root() if not path else self._group(path)
        return [] if group is None else sorted(group.group_keys())

    def open_xarray(self, path: str, written_only: bool = False) -> xr.Dataset:
        """The group at ``path`` as a lazy ``xarray.Dataset``. In a per-image group, a row whose
        ``content_sha256`` is "" has no output; ``written_only`` leaves such rows out (``proposal_image``
        then still counts rows of the stored ``image`` array; ``offset``/``count`` stay right)."""
        if self._group(path) is None:
            raise MissingItemError(f"nothing at {path!r} in {self.url}")
        ds = xr.open_zarr(self._read_session().store, group=path, consolidated=False)
        if written_only and "content_sha256" in ds and ds["content_sha256"].dims == ("image",):
            ds = ds.isel(image=np.flatnonzero(ds["content_sha256"].values != ""))
        return ds

    # ----- per-image stages ----------------------------------------------------------------------

    def rows(self, stage: str, key: str) -> dict[str, int]:
        """Image key -> row of every image with an output under ``stage``/``key``.

        Kept per process and brought up to date from the commits since it was read (only the chunks of
        the key and hash arrays they changed are read again), so checking a shard of images costs about
        the same however large the collection is.
        """
        path = layout.stage_group(stage, key)
        if path not in self._rows:
            group = self._group(path)
            keys, shas = ([], []) if group is None else _ROW_INDEX.lists(self.repo, self.url, path, self.snapshot_id, group)
            self._rows[path] = {k: i for i, (k, s) in enumerate(zip(keys, shas)) if s}
        return self._rows[path]

    def has_item(self, stage: str, key: str, image_key: str, verify: bool = False) -> bool:
        if image_key not in self.rows(stage, key):
            return False
        if not verify:
            return True
        try:
            self.read_image(stage, key, image_key, verify=True)
        except MissingItemError:
            return False
        return True

    def missing(self, stage: str, key: str, image_keys: Sequence[str]) -> list[str]:
        """The ``image_keys`` without an output under ``stage``/``key`` (order kept)."""
        rows = self.rows(stage, key)
        return [k for k in image_keys if k not in rows]

    def list_keys(self, stage: str) -> list[str]:
        """Stage keys present under ``stage`` (sorted)."""
        return self.list_groups(layout.checked_stage(stage))

    def list_items(self, stage: str, key: str) -> list[str]:
        """Image keys with an output under ``stage``/``key`` (sorted)."""
        return sorted(self.rows(stage, key))

    def write_images(self, stage: str, key: str, schema: Schema, outputs: Sequence[ImageOutput],
                     overwrite: bool = False, attrs: Mapping | None = None) -> list[str]:
        """Write per-image outputs under ``stage``/``key`` in one commit; returns the keys written (an image
        with an output already is kept unless ``overwrite``). ``attrs`` are the group's when this write
        creates it (every writer of a key gives the same)."""
        if not outputs:
            return []
        path = layout.stage_group(stage, key)

        def write(session: icechunk.Session) -> list[str]:
            def index(group: zarr.Group) -> tuple[list[str], list[str]]:
                return _ROW_INDEX.lists(self.repo, self.url, path, session.snapshot_id, group)

            return write_images(zarr.open_group(session.store, mode="r+"), path, schema, outputs, overwrite, attrs,
                                index)

        written, _ = self._transact_session(write, f"{stage} {key[:12]}: {len(outputs)} image(s)",
                                            {"stage": stage, "key": key})
        return written

    def stage_settings(self, stage: str, key: str) -> dict | None:
        """The settings ``stage``/``key`` was computed with, as recorded with its group (see
        :data:`~maskbank.storage.layout.SETTINGS_ATTR`); None when it records none (written before they
        were recorded, or by a caller that gave none) or there is no such group."""
        group = self._group(layout.stage_group(stage, key))
        settings = None if group is None else group.attrs.get(layout.SETTINGS_ATTR)
        return dict(settings) if isinstance(settings, Mapping) else None

    def read_image(self, stage: str, key: str, image_key: str, verify: bool = True) -> ImageOutput:
        """One image's output under ``stage``/``key``; raises :class:`MissingItemError` when there is none
        or (with ``verify``) it does not match its content hash."""
        row = self.rows(stage, key).get(image_key)
        if row is None:
            raise MissingItemError(f"no {stage} output for image {image_key} under key {key} in {self.url}")
        try:
            return read_image(self._group(layout.stage_group(stage, key)), row, image_key, verify)
        except MissingImageError as e:
            raise MissingItemError(f"{e} ({self.url})") from e

    def read_elements(self, stage: str, key: str, image_keys: Sequence[str], names: Sequence[str]
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-element arrays of many images, concatenated in the order of ``image_keys``, and each
        element's position in ``image_keys``; read in blocks, not image by image."""
        rows, group, index = self._element_rows(stage, key, image_keys)
        try:
            return read_elements(group, rows, names, index)
        except Exception as e:
            raise MissingItemError(f"{stage}/{key} in {self.url} cannot be read: {error_reason(e)}") from e

    def element_counts(self, stage: str, key: str, image_keys: Sequence[str]) -> np.ndarray:
        """The number of elements (proposals) of each of ``image_keys`` under ``stage``/``key``."""
        rows, group, index = self._element_rows(stage, key, image_keys)
        return index[1][rows]

    def _element_rows(self, stage: str, key: str, image_keys: Sequence[str]
                      ) -> tuple[np.ndarray, zarr.Group, tuple[np.ndarray, np.ndarray]]:
        """Rows of ``image_keys``, the group and its element index (read once per snapshot)."""
        rows = self.rows(stage, key)
        absent = [k for k in image_keys if k not in rows]
        if absent:
            raise MissingItemError(f"no {stage} output for {len(absent)} image(s) under key {key} in {self.url}, "
                                   f"e.g. {absent[0]}")
        path = layout.stage_group(stage, key)
        group = self._group(path)
        if path not in self._elements:
            try:
                self._elements[path] = element_index(group)
            except Exception as e:
                raise MissingItemError(f"{stage}/{key} in {self.url} cannot be read: {error_reason(e)}") from e
        return np.array([rows[k] for k in image_keys], np.int64), group, self._elements[path]

    def drop_images(self, stage: str, key: str, image_keys: Sequence[str]) -> list[str]:
        """Mark images as having no output under ``stage``/``key`` (so they are computed again)."""
        path = layout.stage_group(stage, key)
        return self.transact(lambda root: drop_images(root, path, image_keys), f"drop {len(image_keys)} from {path}")[0]

    def delete_key(self, stage: str, key: str) -> bool:
        """Remove every output of one stage key."""
        return bool(self.delete_paths([layout.stage_group(stage, key)]))

    # ----- typed per-image outputs ---------------------------------------------------------------

    @staticmethod
    def proposals_output(image_key: str, rles: Sequence[Mapping], predicted_iou: np.ndarray | None = None,
                         stability_score: np.ndarray | None = None, bbox: np.ndarray | None = None,
                         area: np.ndarray | None = None, image_hw: tuple[int, int] | None = None,
                         box_class: np.ndarray | None = None, box_score: np.ndarray | None = None) -> ImageOutput:
        """One image's proposals: compressed COCO RLEs of one ``image_hw`` and per-mask values. Missing
        scores are NaN; missing ``bbox`` (xywh) and ``area`` are measured from the RLEs. ``image_hw`` is
        required when there are no proposals. Proposals from a detector's boxes also give ``box_class`` and
        ``box_score`` (together)."""
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
        elements = {
            "rle": np.array([c["counts"] for c in coded], dtype=np.dtypes.StringDType()),
            "predicted_iou": _per_mask("predicted_iou", predicted_iou, n),
            "stability_score": _per_mask("stability_score", stability_score, n),
            "bbox": np.asarray(bbox, np.int32).reshape(n, 4),
            "area": np.asarray(area, np.int64).reshape(n),
        }
        if (box_class is None) != (box_score is None):
            raise ValueError("box_class and box_score come together")
        if box_class is not None:
            if np.shape(box_class) != (n,):
                raise ValueError(f"box_class must have one value per mask ({n}), got shape {np.shape(box_class)}")
            elements["box_class"] = np.asarray(box_class, np.int32)
            elements["box_score"] = _per_mask("box_score", box_score, n)
        return ImageOutput(image_key, {"image_hw": np.array(hw, np.int32)}, elements)

    def write_proposals(self, key: str, outputs: Sequence[ImageOutput], overwrite: bool = False,
                        settings: Mapping | None = None) -> list[str]:
        """Store proposals made by :meth:`proposals_output` (all with box classes, or all without); ``settings``
        (what ``key`` hashes, see :data:`~maskbank.storage.layout.SETTINGS_ATTR`) is recorded with the key's group
        when it is created."""
        boxes = {"box_class" in o.elements for o in outputs}
        if len(boxes) > 1:
            raise ValueError("proposals of one key come all with box classes or all without")
        schema = BOX_PROPOSALS_SCHEMA if boxes == {True} else PROPOSALS_SCHEMA
        return self.write_images(PROPOSALS, key, schema, outputs, overwrite, _settings_attrs(settings))

    def read_proposals(self, key: str, image_key: str, verify: bool = True) -> Proposals:
        out = self.read_image(PROPOSALS, key, image_key, verify)
        hw = tuple(int(v) for v in out.arrays["image_hw"])
        e = out.elements
        rles = [{"size": list(hw), "counts": s} for s in e["rle"].tolist()]
        return Proposals(rles, e["predicted_iou"], e["stability_score"], e["bbox"], e["area"], hw,
                         e.get("box_class"), e.get("box_score"))

    @staticmethod
    def features_output(image_key: str, features: np.ndarray, geometry: PatchGeometry,
                        saliency: np.ndarray | None = None) -> ImageOutput:
        """One image's ``[Hp, Wp, C]`` patch features (stored as float16) with its :class:`PatchGeometry`
        and, when the backbone has one, its saliency map at the resized resolution."""
        f = np.asarray(features)
        if f.ndim != 3 or f.shape[:2] != tuple(geometry.grid_hw):
            raise ValueError(f"features {f.shape} do not match the token grid {geometry.grid_hw} (need [Hp, Wp, C])")
        if f.size and not (np.isfinite(f).all() and np.abs(f).max() <= np.finfo(np.float16).max):
            raise ValueError("features must be finite and within float16 range (+-65504)")
        arrays = {
            "features": f.astype(np.float16),
            "image_hw": np.array(geometry.image_hw, np.int32),
            "resized_hw": np.array(geometry.resized_hw, np.int32),
            "grid_hw": np.array(geometry.grid_hw, np.int32),
            "patch_size": np.array(geometry.patch_size, np.int32),
        }
        if saliency is not None:
            arrays["saliency"] = np.asarray(saliency, np.float32)
        return ImageOutput(image_key, arrays)

    def write_features(self, key: str, outputs: Sequence[ImageOutput], overwrite: bool = False,
                       settings: Mapping | None = None) -> list[str]:
        """Store features made by :meth:`features_output` (all with saliency, or all without); ``settings``
        as for :meth:`write_proposals`."""
        if not outputs:
            return []
        with_saliency = {"saliency" in o.arrays for o in outputs}
        if len(with_saliency) > 1:
            raise ValueError("features of one key come all with saliency or all without")
        schema = FEATURES_SALIENCY_SCHEMA if with_saliency.pop() else FEATURES_SCHEMA
        return self.write_images(FEATURES, key, schema, outputs, overwrite, _settings_attrs(settings))

    def read_features(self, key: str, image_key: str, verify: bool = True) -> tuple[np.ndarray, PatchGeometry]:
        """``(features float16 [Hp, Wp, C], geometry)``."""
        a = self.read_image(FEATURES, key, image_key, verify).arrays
        return a["features"], feature_geometry(a)

    def read_saliency(self, key: str, image_key: str, verify: bool = True) -> np.ndarray | None:
        """The image's saliency map at the backbone's resized resolution, None when the key has none."""
        return self.read_image(FEATURES, key, image_key, verify).arrays.get("saliency")

    def features_have_saliency(self, key: str) -> bool:
        group = self._group(layout.stage_group(FEATURES, key))
        return group is not None and "saliency" in group

    @staticmethod
    def pooled_output(image_key: str, features: np.ndarray, saliency: np.ndarray, area: np.ndarray,
                      image_hw: tuple[int, int]) -> ImageOutput:
        """One image's pooled proposal features ``[proposal, channel]``, mean saliency and area fraction."""
        return ImageOutput(image_key, {"image_hw": np.array(image_hw, np.int32)},
                           {"features": np.asarray(features, np.float32), "saliency": np.asarray(saliency, np.float32),
                            "area": np.asarray(area, np.float32)})

    def write_pooled(self, key: str, outputs: Sequence[ImageOutput], overwrite: bool = False,
                     settings: Mapping | None = None) -> list[str]:
        """Store pooled features made by :meth:`pooled_output`; ``settings`` as for :meth:`write_proposals`."""
        return self.write_images(POOLED, key, POOLED_SCHEMA, outputs, overwrite, _settings_attrs(settings))

    def read_pooled(self, key: str, image_key: str, verify: bool = True) -> dict[str, np.ndarray]:
        """``{"features", "saliency", "area"}`` of one image's proposals."""
        return dict(self.read_image(POOLED, key, image_key, verify).elements)

    # ----- label maps of versions ----------------------------------------------------------------

    def write_label_maps(self, version_id: str, maps: Sequence[tuple[str, np.ndarray, str]]) -> list[str]:
        """Store ``(image key, label map [H, W], source image id)`` triples of a version in one commit."""
        outputs = [ImageOutput(k, {"labels": np.asarray(m), "source_image_id": np.array(i, dtype=np.dtypes.StringDType())})
                   for k, m, i in maps]
        return self.write_images(LABELS, layout.checked_version_id(version_id), LABELS_SCHEMA, outputs)

    def label_map_writer(self, version_id: str, batch: int = 64) -> "LabelMapWriter":
        """A writer that stores a version's label maps ``batch`` at a time (one commit each)."""
        return LabelMapWriter(self, version_id, batch)

    def read_label_map(self, version_id: str, image_key: str, verify: bool = True) -> np.ndarray:
        return self.read_image(LABELS, version_id, image_key, verify).arrays["labels"]

    def label_maps_missing(self, version_id: str, image_keys: Sequence[str]) -> list[str]:
        return self.missing(LABELS, version_id, image_keys)

    # ----- dataset manifests ---------------------------------------------------------------------

    def write_manifest(self, dataset: Dataset, image_keys: Sequence[str], hash_cache: str | Path | None = None) -> str:
        """Record ``dataset`` and its images' content keys under ``datasets/<fingerprint>`` (once); returns
        the fingerprint."""
        fp = dataset.fingerprint(hash_cache)
        recs = dataset.records
        if len(image_keys) != len(recs):
            raise ValueError(f"{len(image_keys)} image keys for {len(recs)} images")
        k = len(dataset.class_names)
        multi_hot = np.zeros((len(recs), k), np.uint8)
        for i, r in enumerate(recs):
            multi_hot[i, list(r.labels or ())] = 1
        root = Path(dataset.root).absolute()
        arrays = {
            "image": np.array([r.image_id for r in recs], dtype=np.dtypes.StringDType()),
            "image_key": np.array(list(image_keys), dtype=np.dtypes.StringDType()),
            "class": np.array(dataset.class_names, dtype=np.dtypes.StringDType()),
            "labels": multi_hot,
            "labelled": np.array([r.labels is not None for r in recs], bool),
            "has_truth": np.array([r.has_truth for r in recs], bool),
            "height": np.array([-1 if r.height is None else r.height for r in recs], np.int32),
            "width": np.array([-1 if r.width is None else r.width for r in recs], np.int32),
        }
        dims = {"image": ("image",), "image_key": ("image",), "class": ("class",), "labels": ("image", "class"),
                "labelled": ("image",),
                "has_truth": ("image",), "height": ("image",), "width": ("image",)}
        attrs = {
            "name": dataset.name,
            "root": str(root),
            "fingerprint": fp,
            "class_names": dataset.class_names,
            "image_ids": [r.image_id for r in recs],
            "image_keys": list(image_keys),
            "labels": [None if r.labels is None else list(r.labels) for r in recs],
            "sizes": [None if r.height is None else [r.height, r.width] for r in recs],
            "has_truth": [r.has_truth for r in recs],
            "paths": [_relative_to(r.path, root) for r in recs],
            "exif_transpose": dataset.exif_transpose,
            "has_background": dataset.has_background,
            "spec": dataset.spec,
        }
        self.write_item(self.manifest_path(fp), arrays, attrs, dims, message=f"dataset {dataset.name} ({fp[:12]})")
        return fp

    @staticmethod
    def manifest_path(fingerprint: str) -> str:
        """Store path of a dataset's manifest."""
        return layout.manifest_group(fingerprint)

    def read_manifest(self, fingerprint: str) -> Manifest:
        a = self.read_item(self.manifest_path(fingerprint)).attrs
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
        return Manifest(a["fingerprint"], a["name"], root, list(a["class_names"]), records, bool(a["exif_transpose"]),
                        bool(a.get("has_background", True)), a.get("spec"))

    def list_manifests(self) -> list[str]:
        """Fingerprints of the datasets recorded in this store."""
        return [fp for fp in self.list_groups(layout.DATASETS) if self.item_complete(self.manifest_path(fp))]


class LabelMapWriter:
    """Buffers a version's label maps and writes them a batch at a time, so that memory stays bounded
    however many images the version has. Use as a context manager, or call :meth:`flush` at the end."""

    def __init__(self, store: Store, version_id: str, batch: int = 64) -> None:
        self.store, self.version_id, self.batch = store, version_id, batch
        self._pending: list[tuple[str, np.ndarray, str]] = []

    def add(self, image_key: str, label_map: np.ndarray, image_id: str) -> None:
        self._pending.append((image_key, label_map, image_id))
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.store.write_label_maps(self.version_id, self._pending)
            self._pending = []

    def __enter__(self) -> "LabelMapWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.flush()


class _RowIndex:
    """Process-wide image key -> row maps of per-image groups, updated incrementally between snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[str, list[str], list[str]]] = {}

    def lists(self, repo: icechunk.Repository, url: str, path: str, snapshot: str, group: zarr.Group
              ) -> tuple[list[str], list[str]]:
        """The ``image`` and ``content_sha256`` values of ``group`` (at ``path``) as of ``snapshot``."""
        with self._lock:
            cached = self._cache.get((url, path))
        if cached is not None and cached[0] != snapshot:
            cached = self._update(repo, group, path, cached, snapshot)
        if cached is None or cached[0] != snapshot:
            cached = (snapshot, *key_lists(group))
        with self._lock:
            self._cache[(url, path)] = cached
            if len(self._cache) > 256:
                self._cache.pop(next(iter(self._cache)))
        return list(cached[1]), list(cached[2])

    @staticmethod
    def _update(repo: icechunk.Repository, group: zarr.Group, path: str, cached: tuple, snapshot: str) -> tuple | None:
        """The cached lists patched with the chunks changed since; None when that cannot be done."""
        old, keys, shas = cached
        try:
            diff = repo.diff(from_snapshot_id=old, to_snapshot_id=snapshot)
        except icechunk.IcechunkError:  # not an ancestor (a store pinned at an older version)
            return None
        prefix = f"/{path}/"
        if any(p.startswith(prefix) or p == f"/{path}" for p in (*diff.deleted_groups, *diff.new_groups,
                                                                  *diff.deleted_arrays, *diff.new_arrays)):
            return None
        keys, shas = list(keys), list(shas)
        for name, values in ((IMAGE, keys), (SHA, shas)):
            z = group[name]
            n = z.shape[0]
            values.extend([""] * max(0, n - len(values)))
            del values[n:]
            for (c,) in diff.updated_chunks.get(f"/{path}/{name}", []):
                lo, hi = c * z.chunks[0], min(n, (c + 1) * z.chunks[0])
                values[lo:hi] = np.asarray(z[lo:hi]).tolist()
        return snapshot, keys, shas


_ROW_INDEX = _RowIndex()


def open_stage(location: str | Path, stage: str, key: str, *, version: str | None = None,
               dataset: str | None = None) -> xr.Dataset:
    """One stage of a whole collection as a lazy ``xarray.Dataset`` with an ``image`` dimension.

    ``stage`` is ``proposals``, ``features``, ``pooled`` (with its stage key as ``key``) or ``labels`` (with
    a version id as ``key``). With ``dataset`` (a fingerprint recorded in the store) only that dataset's
    images are kept and ``image`` is indexed by the dataset's own image ids, so ``.sel(image="<id>")``
    picks one; otherwise by content key. ``version`` reads the store as of that version.
    """
    store = Store.open(location, create=False, version=version)
    ds = store.open_xarray(layout.stage_group(stage, key), written_only=True)
    if dataset is None:
        return ds
    m = store.read_item(store.manifest_path(dataset), verify=False).attrs
    keys = m["image_keys"]
    have = {k: i for i, k in enumerate(ds["image"].values.tolist())}
    pairs = [(i, have[k]) for i, k in zip(m["image_ids"], keys) if k in have]
    ds = ds.isel(image=[r for _, r in pairs])
    return ds.assign_coords(image_key=("image", ds["image"].values), image=[i for i, _ in pairs])


def feature_geometry(a: Mapping[str, np.ndarray]) -> PatchGeometry:
    """The :class:`PatchGeometry` of one image's features output."""
    return PatchGeometry(tuple(int(v) for v in a["image_hw"]), tuple(int(v) for v in a["resized_hw"]),
                         int(a["patch_size"]), tuple(int(v) for v in a["grid_hw"]))


def _sha_of(root: zarr.Group, path: str) -> str | None:
    try:
        node = root[path]
    except KeyError:
        return None
    sha = node.attrs.get(SHA_ATTR) if isinstance(node, zarr.Group) else None
    return sha if isinstance(sha, str) else None


def _settings_attrs(settings: Mapping | None) -> dict | None:
    """The attrs that record a stage key's settings with its group."""
    return None if settings is None else {layout.SETTINGS_ATTR: plain_json(dict(settings))}


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
