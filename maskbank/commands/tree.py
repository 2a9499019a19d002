"""A store as a printed tree: groups, arrays (dims, shape, chunks, dtype, bytes on disk and in memory),
dataset manifests and versions. Reads only the Zarr metadata files and file sizes, never array data.

Per-image stage groups (``<stage>/<key>/<image>``) are summarised into one block per key unless every
item is asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskbank.storage.store import Store
from maskbank.storage.versions import VERSIONS, VersionInfo, list_versions

DATASETS = "datasets"
_INDENT = "  "


@dataclass(frozen=True)
class ArrayInfo:
    """One stored array as its metadata describes it."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    disk_bytes: int
    memory_bytes: int | None
    """``None`` for variable-length strings."""

    @classmethod
    def read(cls, directory: Path) -> ArrayInfo:
        meta = _json(directory / "zarr.json")
        shape = tuple(meta["shape"])
        chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        dtype = meta["data_type"] if isinstance(meta["data_type"], str) else json.dumps(meta["data_type"])
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = None
        memory = None if itemsize is None or dtype == "string" else int(np.prod(shape, dtype=np.int64)) * itemsize
        dims = tuple(meta.get("dimension_names") or (f"dim_{i}" for i in range(len(shape))))
        return cls(directory.name, dims, shape, chunks, dtype, _chunk_bytes(directory), memory)


def item_arrays(directory: Path) -> list[ArrayInfo]:
    """The arrays directly inside a group directory, by name."""
    return [ArrayInfo.read(directory / n) for n in _children(directory) if _node_type(directory / n) == "array"]


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def store_tree(store: Store, show_all: bool = False) -> Iterator[str]:
    """Lines of the tree of ``store``; per-image stage keys are summarised unless ``show_all``."""
    versions = list_versions(store)
    yield f"{store.path}  maskbank store, {human_bytes(_tree_bytes(store.path))} on disk"
    for top in store.list_groups():
        yield f"{top}/"
        if top == DATASETS:
            yield from _datasets(store)
        elif top == VERSIONS:
            yield from _versions(store, versions)
        else:
            yield from _stage(store, top, versions, show_all)


def headline(version: VersionInfo, versions: list[VersionInfo]) -> str:
    """The one metric that says most about a version: mIoU of an evaluation (or of a label version's
    evaluation), a bank's prototype count."""
    m = version.metrics or {}
    if "classes" in m:
        text = f"mIoU {m['classes']['miou']:.4f} over {m.get('images', '?')} images"
        if "voc21" in m:
            text += f", VOC-21 mIoU {m['voc21']['miou']:.4f}"
        return text
    if "prototypes" in m:
        return f"{m['prototypes']} prototypes"
    evaluations = [v for v in versions if v.kind == "evaluation" and version.id in v.parents and v.metrics]
    return f"evaluated: {headline(evaluations[-1], versions)}" if evaluations else ""


def _datasets(store: Store) -> Iterator[str]:
    for fp in store.list_manifests():
        path = f"{DATASETS}/{fp}/manifest"
        a = store.read_attrs(path)
        labelled = sum(lab is not None for lab in a["labels"])
        yield (f"{_INDENT}{fp}/manifest  dataset {a['name']!r}: {len(a['image_ids'])} images ({labelled} labelled, "
               f"{sum(a['has_truth'])} with truth), {len(a['class_names'])} classes, root {a['root']}")
        yield from _array_lines(item_arrays(store.path / path), 3)


def _versions(store: Store, versions: list[VersionInfo]) -> Iterator[str]:
    for v in versions:
        parents = ",".join(v.parents) or "-"
        metric = headline(v, versions)
        yield f"{_INDENT}{v.id}  {v.kind}  created {v.created[:19]}  parents {parents}" + (f"  {metric}" if metric else "")
        yield from _array_lines(item_arrays(store.path / v.path), 3)


def _stage(store: Store, stage: str, versions: list[VersionInfo], show_all: bool) -> Iterator[str]:
    by_id = {v.id: v for v in versions}
    for key in store.list_groups(stage):
        base = store.path / stage / key
        items = store.list_groups(f"{stage}/{key}")
        arrays = [item_arrays(base / i) for i in items]
        disk = sum(a.disk_bytes for arrs in arrays for a in arrs)
        known = [a.memory_bytes for arrs in arrays for a in arrs if a.memory_bytes is not None]
        note = _key_note(key, by_id, versions)
        yield (f"{_INDENT}{key}/  {len(items)} items, {human_bytes(disk)} on disk, {human_bytes(sum(known))} in memory"
               + (f"  ({note})" if note else ""))
        if show_all:
            for item, arrs in zip(items, arrays):
                source = _source(store, f"{stage}/{key}/{item}")
                yield f"{_INDENT * 2}{item}" + (f"  {source}" if source else "")
                yield from _array_lines(arrs, 3)
        else:
            yield from _summary_lines(arrays, 2)


def _key_note(key: str, by_id: dict[str, VersionInfo], versions: list[VersionInfo]) -> str:
    if key in by_id:
        v = by_id[key]
        return f"{v.kind} version, created {v.created[:19]}"
    users = [f"{v.kind} {v.id}" for v in versions if key in v.params.values()]
    return f"used by {', '.join(users)}" if users else ""


def _source(store: Store, path: str) -> str:
    attrs = store.read_attrs(path) if store.item_complete(path) else {}
    if "source_image_id" in attrs:
        return f"image {attrs['source_image_id']}"
    return str(attrs.get("path", "incomplete" if not attrs else ""))


def _array_lines(arrays: list[ArrayInfo], depth: int) -> Iterator[str]:
    for a in arrays:
        shape = "[" + ", ".join(f"{d}={n}" for d, n in zip(a.dims, a.shape)) + "]"
        yield (f"{_INDENT * depth}{a.name:<16} {shape:<30} {a.dtype:<8} chunks {list(a.chunks)}  "
               f"{human_bytes(a.disk_bytes)} on disk, {human_bytes(a.memory_bytes)} in memory")


def _summary_lines(per_item: list[list[ArrayInfo]], depth: int) -> Iterator[str]:
    """One line per array name over all items: dims with the range of each length, dtype, total bytes."""
    names = list(dict.fromkeys(a.name for arrs in per_item for a in arrs))
    for name in names:
        same = [a for arrs in per_item for a in arrs if a.name == name]
        first = same[0]
        lengths = []
        for i, d in enumerate(first.dims):
            sizes = [a.shape[i] for a in same if len(a.shape) > i]
            lo, hi = min(sizes), max(sizes)
            lengths.append(f"{d}={lo}" if lo == hi else f"{d}={lo}..{hi}")
        dtypes = "/".join(dict.fromkeys(a.dtype for a in same))
        memory = None if any(a.memory_bytes is None for a in same) else sum(a.memory_bytes for a in same)
        shape = "[" + ", ".join(lengths) + "]"
        yield (f"{_INDENT * depth}{name:<16} {shape:<30} {dtypes:<8} in {len(same)} items, "
               f"{human_bytes(sum(a.disk_bytes for a in same))} on disk, {human_bytes(memory)} in memory")


def _children(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _node_type(directory: Path) -> str | None:
    try:
        return _json(directory / "zarr.json").get("node_type")
    except (FileNotFoundError, ValueError):
        return None


def _chunk_bytes(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f != "zarr.json" or root != str(directory))
    return total


def _tree_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def _json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
