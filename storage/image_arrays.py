"""Per-image outputs of a whole collection as one group of dataset-level arrays.

A per-image stage (or a version's label maps) stores every image under one stage key in one group::

    image[image]                 str    the image's content key (the dimension's coordinate)
    content_sha256[image]        str    hash of the image's output; "" = no output (never written or dropped)
    <name>[image, ...]                  a per-image array; one image per chunk when it is large, padded to
                                        the largest image where its shape varies, its valid extent then in
    <name>_shape[image, <name>_axis]    int32
    offset[image], count[image]  int64  where an image's elements start and how many it has (CSR), for
    <name>[<element>, ...]              per-element arrays (a proposal's RLE, its pooled feature, ...),
    <element>_image[<element>]   int64  and the image (row of ``image``) each element belongs to

Appending images grows the arrays along ``image`` (and ``<element>``); an image written again (a damaged
output recomputed) keeps its row, its elements are appended anew and ``offset``/``count`` point at them.
The functions here read and write through a given icechunk session; :mod:`maskbank.storage.repository`
makes the transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import zarr

from maskbank.storage.arrays import content_sha256, error_reason, fill_value, normalise

IMAGE = "image"
SHA = "content_sha256"
OFFSET, COUNT = "offset", "count"
SMALL_CHUNK = 1024
"""Images per chunk of the small per-image arrays (keys, hashes, sizes, offsets)."""
LARGE_BYTES = 16384
"""A per-image array of at least this many bytes per image gets one chunk per image."""
ELEMENT_CHUNK_BYTES = 1 << 20
"""Target bytes of one chunk of a per-element array."""
READ_BLOCK = 65536
"""Elements read at once by :func:`read_elements`."""
BOOKKEEPING = frozenset({IMAGE, SHA, OFFSET, COUNT})


class MissingImageError(LookupError):
    """An image has no (intact) output in a group."""


@dataclass(frozen=True)
class ImageOutput:
    """One image's output: per-image arrays and, when the stage has elements, per-element arrays (all of the
    same length along their first axis)."""

    key: str
    arrays: Mapping[str, np.ndarray]
    elements: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Schema:
    """How a group's arrays are laid out.

    ``dims`` names the axes of every array after ``image`` (per-image arrays) or including the element
    axis (per-element arrays, whose first axis is ``element_dim``). ``padded`` lists the per-image arrays
    whose shape varies from image to image.
    """

    dims: Mapping[str, tuple[str, ...]]
    element_dim: str | None = None
    padded: frozenset[str] = frozenset()

    def is_element(self, name: str) -> bool:
        return self.element_dim is not None and self.dims[name][:1] == (self.element_dim,)

    @property
    def attrs(self) -> dict:
        return {"dims": {k: list(v) for k, v in self.dims.items()}, "element_dim": self.element_dim,
                "padded": sorted(self.padded)}

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> "Schema":
        a = attrs["maskbank_schema"]
        return cls({k: tuple(v) for k, v in a["dims"].items()}, a["element_dim"], frozenset(a["padded"]))


def output_sha256(out: ImageOutput, schema: Schema) -> str:
    """The content hash of one image's output (its arrays, elements and their dims)."""
    arrays = {**out.arrays, **out.elements}
    return content_sha256(arrays, {"image": out.key}, {k: schema.dims[k] for k in arrays})


# ----- writing --------------------------------------------------------------------------------------


def write_images(
    root: zarr.Group, path: str, schema: Schema, outputs: Sequence[ImageOutput], overwrite: bool = False,
    attrs: Mapping | None = None, index: Callable[[zarr.Group], tuple[list[str], list[str]]] | None = None,
) -> list[str]:
    """Write the outputs into the group at ``path`` under ``root`` (creating it); returns the keys written.

    An image whose output is already there is kept unless ``overwrite``. ``index(group)`` gives the
    group's ``image`` and ``content_sha256`` values as lists (default: read whole).
    """
    outputs = [_checked(o, schema) for o in outputs]
    group = _open_or_create(root, path, schema, outputs, attrs)
    keys, shas = (index or key_lists)(group)
    row_of = {k: i for i, k in enumerate(keys)}
    todo: list[tuple[int, ImageOutput]] = []
    n = len(keys)
    seen: set[str] = set()
    for o in outputs:
        if o.key in seen:
            continue
        seen.add(o.key)
        row = row_of.get(o.key)
        if row is not None and shas[row] and not overwrite:
            continue
        if row is None:
            row, n = n, n + 1
        todo.append((row, o))
    if not todo:
        return []
    rows = [r for r, _ in todo]
    _grow(group, schema, n, [o for _, o in todo])
    _write_rows(group[IMAGE], rows, [np.array(o.key, dtype=np.dtypes.StringDType()) for _, o in todo])
    for name in schema.dims:
        if schema.is_element(name):
            continue
        z = group[name]
        values = [_pad(o.arrays[name], z.shape[1:], z.fill_value) for _, o in todo]
        _write_rows(z, rows, values)
        if name in schema.padded:
            _write_rows(group[f"{name}_shape"], rows, [np.array(o.arrays[name].shape, np.int32) for _, o in todo])
    if schema.element_dim is not None:
        _append_elements(group, schema, todo)
    _write_rows(group[SHA], rows, [np.array(output_sha256(o, schema), dtype=np.dtypes.StringDType()) for _, o in todo])
    return [o.key for _, o in todo]


def drop_images(root: zarr.Group, path: str, keys: Sequence[str]) -> list[str]:
    """Mark the given images as having no output in the group (their data stays until overwritten)."""
    try:
        group = root[path]
    except KeyError:
        return []
    index = written_rows(group)
    rows = sorted(index[k] for k in set(keys) if k in index)
    _write_rows(group[SHA], rows, [np.array("", dtype=np.dtypes.StringDType())] * len(rows))
    return [k for k in keys if k in index]


def _checked(o: ImageOutput, schema: Schema) -> ImageOutput:
    per_image = [k for k in schema.dims if not schema.is_element(k)]
    elements = [k for k in schema.dims if schema.is_element(k)]
    if sorted(o.arrays) != sorted(per_image) or sorted(o.elements) != sorted(elements):
        raise ValueError(f"image {o.key}: arrays {sorted(o.arrays)} + {sorted(o.elements)}, expected "
                         f"{sorted(per_image)} + {sorted(elements)}")
    arrays = {k: normalise(k, v) for k, v in o.arrays.items()}
    elems = {k: normalise(k, v) for k, v in o.elements.items()}
    for k, a in {**arrays, **elems}.items():
        want = len(schema.dims[k])
        if a.ndim != want:
            raise ValueError(f"image {o.key}: array {k!r} has {a.ndim} axes, its dims are {schema.dims[k]}")
    lengths = {len(a) for a in elems.values()}
    if len(lengths) > 1:
        raise ValueError(f"image {o.key}: per-{schema.element_dim} arrays differ in length: {sorted(lengths)}")
    return ImageOutput(o.key, arrays, elems)


def _open_or_create(root: zarr.Group, path: str, schema: Schema, outputs: Sequence[ImageOutput],
                    attrs: Mapping | None) -> zarr.Group:
    try:
        group = root[path]
        if Schema.from_attrs(group.attrs) != schema:
            raise ValueError(f"group {path!r} holds arrays of another layout")
        return group
    except KeyError:
        pass
    group = root.require_group(path)
    group.attrs.update({**(attrs or {}), "maskbank_schema": schema.attrs})
    string = np.dtypes.StringDType()
    group.create_array(IMAGE, shape=(0,), chunks=(SMALL_CHUNK,), dtype=string, fill_value="", dimension_names=(IMAGE,))
    group.create_array(SHA, shape=(0,), chunks=(SMALL_CHUNK,), dtype=string, fill_value="", dimension_names=(IMAGE,))
    sample = outputs[0] if outputs else None
    for name, dims in schema.dims.items():
        if sample is None:
            raise ValueError(f"group {path!r} does not exist and there is nothing to write")
        src = sample.elements[name] if schema.is_element(name) else sample.arrays[name]
        a = normalise(name, src)
        if schema.is_element(name):
            row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * (a.dtype.itemsize if a.dtype.kind != "T" else 64))
            n = max(256, min(65536, ELEMENT_CHUNK_BYTES // row_bytes))
            group.create_array(name, shape=(0, *a.shape[1:]), chunks=(n, *[max(1, s) for s in a.shape[1:]]),
                               dtype=a.dtype, fill_value=fill_value(a.dtype), dimension_names=dims)
            continue
        shape = tuple(max(o.arrays[name].shape[i] for o in outputs) for i in range(a.ndim)) if a.ndim else ()
        chunk = [max(1, s) for s in shape]
        if name in schema.padded and a.ndim >= 2:  # square in (y, x), so that portrait and landscape images fit
            chunk[0] = chunk[1] = max(chunk[0], chunk[1])
        per_image = int(np.prod(chunk, dtype=np.int64)) * (a.dtype.itemsize if a.dtype.kind != "T" else 64)
        rows = 1 if per_image >= LARGE_BYTES else SMALL_CHUNK
        group.create_array(name, shape=(0, *shape), chunks=(rows, *chunk), dtype=a.dtype,
                           fill_value=fill_value(a.dtype), dimension_names=(IMAGE, *dims))
        if name in schema.padded:
            group.create_array(f"{name}_shape", shape=(0, a.ndim), chunks=(SMALL_CHUNK, max(1, a.ndim)),
                               dtype="int32", fill_value=0, dimension_names=(IMAGE, f"{name}_axis"))
    if schema.element_dim is not None:
        for name in (OFFSET, COUNT):
            group.create_array(name, shape=(0,), chunks=(SMALL_CHUNK,), dtype="int64", fill_value=0,
                               dimension_names=(IMAGE,))
        e = schema.element_dim
        group.create_array(f"{e}_image", shape=(0,), chunks=(8192,), dtype="int64", fill_value=0,
                           dimension_names=(e,))
    return group


def _grow(group: zarr.Group, schema: Schema, n: int, outputs: Sequence[ImageOutput]) -> None:
    """Resize the per-image arrays to ``n`` rows, and padded arrays to hold the new outputs."""
    for name in (IMAGE, SHA):
        if group[name].shape[0] < n:
            group[name].resize((n,))
    for name in schema.dims:
        if schema.is_element(name):
            continue
        z = group[name]
        inner = tuple(max([z.shape[1 + i]] + [o.arrays[name].shape[i] for o in outputs]) for i in range(z.ndim - 1))
        if (n, *inner) != z.shape and n >= z.shape[0]:
            z.resize((n, *inner))
        if name in schema.padded and group[f"{name}_shape"].shape[0] < n:
            group[f"{name}_shape"].resize((n, z.ndim - 1))
    if schema.element_dim is not None:
        for name in (OFFSET, COUNT):
            if group[name].shape[0] < n:
                group[name].resize((n,))


def _append_elements(group: zarr.Group, schema: Schema, todo: Sequence[tuple[int, ImageOutput]]) -> None:
    e = schema.element_dim
    names = [k for k in schema.dims if schema.is_element(k)]
    start = group[f"{e}_image"].shape[0]
    counts = [len(next(iter(o.elements.values()))) if o.elements else 0 for _, o in todo]
    total = int(sum(counts))
    offsets = start + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if todo else []
    rows = [r for r, _ in todo]
    _write_rows(group[OFFSET], rows, [np.int64(v) for v in offsets])
    _write_rows(group[COUNT], rows, [np.int64(c) for c in counts])
    if total == 0:
        return
    owner = np.concatenate([np.full(c, r, np.int64) for r, c in zip(rows, counts)])
    _append_from(group[f"{e}_image"], start, owner)
    for name in names:
        _append_from(group[name], start, np.concatenate([o.elements[name] for _, o in todo]))


def _append_from(z: zarr.Array, start: int, values: np.ndarray) -> None:
    """Write ``values`` at rows ``start:`` of ``z`` (growing it), replacing the chunk ``start`` falls in
    whole: its earlier rows are read and written back, or filled when that chunk is damaged (they belong to
    images whose hash then fails, so a verifying run recomputes them)."""
    lo = start // z.chunks[0] * z.chunks[0]
    try:
        head = np.asarray(z[lo:start])
    except Exception:  # a damaged chunk must not stop the images that replace what it held
        head = np.full((start - lo, *z.shape[1:]), z.fill_value, z.dtype)
    z.resize((start + len(values), *z.shape[1:]))
    z[lo:] = np.concatenate([head, np.asarray(values).astype(z.dtype, copy=False)])


def _write_rows(z: zarr.Array, rows: Sequence[int], values: Sequence[np.ndarray]) -> None:
    """Write one value per row; consecutive rows in one assignment (each chunk written once)."""
    if not rows:
        return
    order = np.argsort(rows, kind="stable")
    rows = [rows[i] for i in order]
    values = [values[i] for i in order]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        z[rows[0] : rows[-1] + 1] = np.stack([np.asarray(v) for v in values]).astype(z.dtype, copy=False)
        return
    for r, v in zip(rows, values):
        z[r] = v


def _pad(a: np.ndarray, shape: tuple[int, ...], fill) -> np.ndarray:
    if a.shape == tuple(shape):
        return a
    out = np.full(shape, fill, dtype=a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


# ----- reading --------------------------------------------------------------------------------------


def key_lists(group: zarr.Group) -> tuple[list[str], list[str]]:
    """The group's ``image`` and ``content_sha256`` values, read whole."""
    return np.asarray(group[IMAGE][...]).tolist(), np.asarray(group[SHA][...]).tolist()


def written_rows(group: zarr.Group) -> dict[str, int]:
    """Content key -> row of every image with an output in the group."""
    keys, shas = key_lists(group)
    return {k: i for i, (k, s) in enumerate(zip(keys, shas)) if s}


def read_image(group: zarr.Group, row: int, key: str, verify: bool = True) -> ImageOutput:
    """The output of the image at ``row``; with ``verify``, checked against its content hash."""
    schema = Schema.from_attrs(group.attrs)
    try:
        arrays = {}
        for name in schema.dims:
            if schema.is_element(name):
                continue
            a = np.asarray(group[name][row])
            if name in schema.padded:
                a = a[tuple(slice(0, int(s)) for s in group[f"{name}_shape"][row])]
            arrays[name] = a
        elements = {}
        if schema.element_dim is not None:
            lo = int(group[OFFSET][row])
            hi = lo + int(group[COUNT][row])
            elements = {name: np.asarray(group[name][lo:hi]) for name in schema.dims if schema.is_element(name)}
        sha = str(group[SHA][row])
    except Exception as e:  # a vanished or damaged chunk reads as missing, whatever the codec raised
        raise MissingImageError(f"image {key} cannot be read from {group.path!r}: {error_reason(e)}") from e
    out = ImageOutput(key, arrays, elements)
    if verify and output_sha256(out, schema) != sha:
        raise MissingImageError(f"image {key} in {group.path!r} does not match its content hash")
    return out


def element_index(group: zarr.Group) -> tuple[np.ndarray, np.ndarray]:
    """Every image's first element and number of elements (``offset``, ``count``), read whole."""
    return np.asarray(group[OFFSET][...]).astype(np.int64), np.asarray(group[COUNT][...]).astype(np.int64)


def read_elements(group: zarr.Group, rows: Sequence[int], names: Sequence[str],
                  index: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The per-element arrays ``names`` of the images at ``rows``, concatenated in that order, and for each
    element its position in ``rows``; ``index`` is the group's :func:`element_index` when the caller holds
    it. Reads in blocks of at most :data:`READ_BLOCK` elements that span no chunk without a wanted element,
    so that scattered rows cost the chunks they touch, not the spans between."""
    offsets, counts = element_index(group) if index is None else index
    rows = np.asarray(rows, np.int64)
    lo, n = offsets[rows], counts[rows]
    out_start = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    total = int(n.sum())
    result = {}
    for name in names:
        z = group[name]
        dst = np.empty((total, *z.shape[1:]), dtype=z.dtype)
        order = np.argsort(lo, kind="stable")
        i = 0
        while i < len(order):
            block_lo = int(lo[order[i]])
            j = i
            block_hi = block_lo
            # extend the block over the next images while they lie within a chunk of it (no chunk is
            # fetched for nothing) and the block stays within READ_BLOCK elements
            while (j < len(order) and int(lo[order[j]] + n[order[j]]) - block_lo <= READ_BLOCK
                   and (j == i or int(lo[order[j]]) - block_hi <= z.chunks[0])):
                block_hi = max(block_hi, int(lo[order[j]] + n[order[j]]))
                j += 1
            if j == i:  # one image with more elements than a block
                block_hi = int(lo[order[i]] + n[order[i]])
                j = i + 1
            block = np.asarray(z[block_lo:block_hi])
            for k in order[i:j]:
                s = int(lo[k]) - block_lo
                dst[out_start[k] : out_start[k] + n[k]] = block[s : s + n[k]]
            i = j
        result[name] = dst
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), n)
    return result, owner
