"""A store as a printed tree: dataset manifests, the per-image stage keys (how many images have an output,
the settings the key stands for, each array's dims, shape, chunks, dtype, bytes stored and in memory), the
label maps of versions, and the versions with their tags. Reads the Zarr metadata and the small per-image
bookkeeping arrays (which images have an output, their valid extents), never the data arrays.

A per-image group (``<stage>/<key>``, ``labels/<version id>``) holds every image of the collection along
an ``image`` dimension; its bookkeeping arrays (``image``, ``content_sha256``, ``offset``, ``count``,
``<name>_shape``, ``<element>_image``) are listed only when every image is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from maskbank.commands.describe import Datasets, listed, stage_settings_lines, version_lines
from maskbank.storage import layout
from maskbank.storage.store import Store
from maskbank.storage.versions import VersionInfo, list_versions

_INDENT = "  "
BOOKKEEPING = frozenset({"image", "content_sha256", "offset", "count"})
SCHEMA_ATTR = "maskbank_schema"
USERS_SHOWN = 3
"""Versions named in a stage key's "used by" note; the rest are counted."""


@dataclass(frozen=True)
class ArrayInfo:
    """One stored array as its metadata describes it."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    stored_bytes: int | None
    """Bytes of its chunks and metadata in the store (``None`` when the store cannot tell)."""
    memory_bytes: int | None
    """``None`` for variable-length strings."""

    @classmethod
    def read(cls, name: str, array: zarr.Array) -> ArrayInfo:
        string = isinstance(array.dtype, np.dtypes.StringDType) or array.dtype.kind in "OTU"
        dtype = "string" if string else str(array.dtype)
        memory = None if string else int(array.nbytes)
        try:
            stored = int(array.nbytes_stored())
        except Exception:  # a store that cannot size its objects
            stored = None
        shape = tuple(int(n) for n in array.shape)
        dims = tuple(array.metadata.dimension_names or (f"dim_{i}" for i in range(len(shape))))
        return cls(name, dims, shape, tuple(int(c) for c in array.chunks), dtype, stored, memory)


def group_arrays(group: zarr.Group) -> list[ArrayInfo]:
    """The arrays directly inside a group, by name."""
    return [ArrayInfo.read(name, a) for name, a in sorted(group.arrays())]


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def store_tree(store: Store, show_all: bool = False) -> Iterator[str]:
    """Lines of the tree of ``store`` (as of its version when it was opened at one); with ``show_all``
    every image of each per-image group and the bookkeeping arrays too."""
    root = store.root()
    present = set(root.group_keys())
    in_snapshot = set(store.list_groups(layout.VERSIONS))
    versions = [v for v in list_versions(store) if v.id in in_snapshot]
    yield _header(store)
    order = [g for g in (layout.DATASETS, *layout.IMAGE_STAGES, layout.LABELS, layout.VERSIONS) if g in present]
    image_ids = _image_ids(store) if show_all else {}
    for top in order + sorted(present - set(order)):
        yield f"{top}/"
        if top == layout.DATASETS:
            yield from _datasets(store)
        elif top == layout.VERSIONS:
            yield from _versions(store, versions)
        elif top in (*layout.IMAGE_STAGES, layout.LABELS):
            yield from _stage(store, root, top, versions, image_ids if show_all else None)
        else:
            for name in store.list_groups(top):
                yield f"{_INDENT}{name}/"
                yield from _array_lines(group_arrays(root[f"{top}/{name}"]), 2)


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
    evaluations = [v for v in versions if v.kind == layout.EVALUATION and version.id in v.parents and v.metrics]
    return f"evaluated: {headline(evaluations[-1], versions)}" if evaluations else ""


def _header(store: Store) -> str:
    snapshot = store.snapshot_id
    info = store.repo.lookup_snapshot(snapshot)
    when = info.written_at.strftime("%Y-%m-%dT%H:%M:%S")
    if store.version_id is not None:
        where = f"as of version {store.version_id} (snapshot {snapshot}, {when})"
    else:
        where = f"branch {layout.BRANCH} at snapshot {snapshot} ({when}: {info.message})"
    size = f" ({human_bytes(_tree_bytes(store.location.path))} on disk)" if store.location.is_local else ""
    return f"{store.url}  maskbank store{size}, {where}"


def _datasets(store: Store) -> Iterator[str]:
    for fp in store.list_manifests():
        path = store.manifest_path(fp)
        a = store.read_attrs(path)
        labelled = sum(lab is not None for lab in a["labels"])
        yield (f"{_INDENT}{fp}  dataset {a['name']!r}: {len(a['image_ids'])} images ({labelled} labelled, "
               f"{sum(a['has_truth'])} with truth), {len(a['class_names'])} classes, root {a['root']}")
        yield f"{_INDENT * 2}classes: {listed(list(a['class_names'])) or 'none'}"
        yield from _array_lines(group_arrays(store.root()[path]), 2)


def _versions(store: Store, versions: list[VersionInfo]) -> Iterator[str]:
    datasets = Datasets(store)
    for v in versions:
        parents = ",".join(v.parents) or "-"
        metric = headline(v, versions)
        yield (f"{_INDENT}{v.id}  {v.kind}  tag {v.tag}  created {v.created[:19]}  parents {parents}"
               + (f"  {metric}" if metric else ""))
        for line in version_lines(v, datasets):
            yield f"{_INDENT * 2}{line}"
        yield from _array_lines(group_arrays(store.root()[v.path]), 2)


def _stage(store: Store, root: zarr.Group, stage: str, versions: list[VersionInfo],
           image_ids: dict[str, list[str]] | None) -> Iterator[str]:
    by_id = {v.id: v for v in versions}
    for key in store.list_groups(stage):
        group = root[f"{stage}/{key}"]
        arrays = group_arrays(group)
        shas = np.asarray(group["content_sha256"][...]) if "content_sha256" in group else np.zeros(0, str)
        written = np.flatnonzero(shas != "")
        schema = group.attrs.get(SCHEMA_ATTR) or {}
        element = schema.get("element_dim")
        padded = set(schema.get("padded") or ())
        stored = [a.stored_bytes for a in arrays]
        memory = [a.memory_bytes for a in arrays if a.memory_bytes is not None]
        counts = np.asarray(group["count"][...]) if element and "count" in group else None
        parts = [f"{len(written)} images"]
        if len(shas) > len(written):
            parts[0] += f" ({len(shas) - len(written)} rows without output)"
        if counts is not None:
            parts.append(f"{int(counts[written].sum())} {element}s")
        parts += [f"{human_bytes(None if None in stored else sum(stored))} stored",
                  f"{human_bytes(sum(memory))} in memory"]
        note = _key_note(key, by_id, versions)
        yield f"{_INDENT}{key}/  " + ", ".join(parts) + (f"  ({note})" if note else "")
        for line in _key_settings(stage, group, arrays, written):
            yield f"{_INDENT * 2}{line}"
        extents = {name: np.asarray(group[f"{name}_shape"][...])[written] for name in padded
                   if f"{name}_shape" in group}
        for a in arrays:
            if image_ids is None and _bookkeeping(a.name, padded, element):
                continue
            yield _array_line(a, 2) + (_extent(a, extents[a.name]) if a.name in extents else "")
        if image_ids is not None:
            yield from _images(group, written, counts, extents, element, image_ids)


def _images(group: zarr.Group, written: np.ndarray, counts: np.ndarray | None, extents: dict[str, np.ndarray],
            element: str | None, image_ids: dict[str, list[str]]) -> Iterator[str]:
    """One line per image with an output: its content key, the dataset images it is, and its size."""
    yield f"{_INDENT * 2}images:"
    keys = np.asarray(group["image"][...])[written].tolist()
    sources = np.asarray(group["source_image_id"][...])[written].tolist() if "source_image_id" in group else None
    for i, key in enumerate(keys):
        ids = image_ids.get(key) or ([sources[i]] if sources else [])
        parts = [f"image {', '.join(ids)}" if ids else "in no recorded dataset"]
        if counts is not None:
            parts.append(f"{int(counts[written[i]])} {element}s")
        parts += [f"{name} {'x'.join(str(int(n)) for n in shape[i])}" for name, shape in extents.items()]
        yield f"{_INDENT * 3}{key}  " + "  ".join(parts)


def _key_settings(stage: str, group: zarr.Group, arrays: Sequence[ArrayInfo], written: np.ndarray) -> list[str]:
    """The settings a stage key stands for, as its group records them; for a features key, also the
    channels and patch size its data shows. A features group that records none (written before they were
    recorded) shows the embed settings its data shows instead; other such groups show none."""
    settings = group.attrs.get(layout.SETTINGS_ATTR)
    details = _features_details(group, arrays, written) if stage == layout.FEATURES and len(written) else ""
    if isinstance(settings, Mapping):
        return stage_settings_lines(stage, settings, details)
    if stage == layout.FEATURES and len(written):
        return [_features_settings(group, written) + (f"; {details}" if details else "")]
    return []


def _values(numbers: np.ndarray) -> str:
    """``448``, or ``224..448`` where the images differ."""
    unique = sorted({int(n) for n in numbers})
    return str(unique[0]) if len(unique) == 1 else f"{unique[0]}..{unique[-1]}"


def _features_settings(group: zarr.Group, written: np.ndarray) -> str:
    """The embed settings a features key's data shows, for a key that records none: the long side images
    were resized to and whether saliency was stored."""
    parts = []
    if "resized_hw" in group:
        parts.append(f"long_side={_values(np.asarray(group['resized_hw'][...])[written].max(axis=1))}")
    parts.append(f"saliency={'true' if 'saliency' in group else 'false'}")
    return f"embed: {', '.join(parts)} (read from its data)"


def _features_details(group: zarr.Group, arrays: Sequence[ArrayInfo], written: np.ndarray) -> str:
    """What a features key's data shows beyond its settings: the channels and the patch size."""
    details = []
    features = next((a for a in arrays if a.name == "features"), None)
    if features is not None and features.shape:
        details.append(f"{features.shape[-1]} channels")
    if "patch_size" in group:
        details.append(f"{_values(np.asarray(group['patch_size'][...])[written])} px patches")
    return ", ".join(details)


def _bookkeeping(name: str, padded: set[str], element: str | None) -> bool:
    return (name in BOOKKEEPING or (name.endswith("_shape") and name[: -len("_shape")] in padded)
            or (element is not None and name == f"{element}_image"))


def _extent(a: ArrayInfo, shapes: np.ndarray) -> str:
    """The range of the valid extent of a padded per-image array over its images."""
    if not len(shapes):
        return ""
    lengths = []
    for d, lo, hi in zip(a.dims[1:], shapes.min(0), shapes.max(0)):
        lengths.append(f"{d}={lo}" if lo == hi else f"{d}={lo}..{hi}")
    return "  padded; per image " + ", ".join(lengths)


def _image_ids(store: Store) -> dict[str, list[str]]:
    """Content key -> the dataset image ids recorded with it (over every manifest)."""
    out: dict[str, list[str]] = {}
    for fp in store.list_manifests():
        a = store.read_attrs(store.manifest_path(fp))
        for image_id, key in zip(a["image_ids"], a["image_keys"]):
            if image_id not in out.setdefault(key, []):
                out[key].append(image_id)
    return out


def _key_note(key: str, by_id: dict[str, VersionInfo], versions: list[VersionInfo]) -> str:
    if key in by_id:
        v = by_id[key]
        return f"{v.kind} version, created {v.created[:19]}"
    users = [f"{v.kind} {v.id}" for v in versions if key in v.params.values()]
    if len(users) > USERS_SHOWN:
        users = users[:USERS_SHOWN] + [f"{len(users) - USERS_SHOWN} more"]
    return f"used by {', '.join(users)}" if users else ""


def _array_line(a: ArrayInfo, depth: int) -> str:
    shape = "[" + ", ".join(f"{d}={n}" for d, n in zip(a.dims, a.shape)) + "]"
    return (f"{_INDENT * depth}{a.name:<16} {shape:<30} {a.dtype:<8} chunks {list(a.chunks)}  "
            f"{human_bytes(a.stored_bytes)} stored, {human_bytes(a.memory_bytes)} in memory")


def _array_lines(arrays: Sequence[ArrayInfo], depth: int) -> Iterator[str]:
    for a in arrays:
        yield _array_line(a, depth)


def _tree_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)
