"""Arrays as one stored item: normalisation, content hash, and a Zarr group written or read whole.

Numeric and bool arrays are stored little-endian, strings as variable-length UTF-8; every array carries
``dimension_names`` so that ``xarray.open_zarr`` reads the group.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np
import zarr

_STRING = np.dtypes.StringDType()


def is_string(a: np.ndarray) -> bool:
    return a.dtype.kind in "UT"


def normalise(name: str, value: object) -> np.ndarray:
    """``value`` as a storable array: bool/int/uint/float little-endian, or strings."""
    a = np.asarray(value)
    if a.dtype.kind == "O":
        flat = a.ravel().tolist()
        if not all(isinstance(x, str) for x in flat):
            raise TypeError(f"array {name!r}: object arrays must hold only str")
        return np.array(flat, dtype=_STRING).reshape(a.shape)
    if a.dtype.kind in "UT":
        return a.astype(_STRING)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"array {name!r}: cannot store dtype {a.dtype} (bool, int, uint, float or str only)")
    return np.asarray(a.astype(a.dtype.newbyteorder("<"), copy=False), order="C")


def default_dims(name: str, a: np.ndarray) -> tuple[str, ...]:
    return tuple(f"{name}_dim_{i}" for i in range(a.ndim))


def check_dims(arrays: Mapping[str, np.ndarray], dims: Mapping[str, tuple[str, ...]]) -> None:
    """Each array has one name per axis, and a name means the same length everywhere."""
    sizes: dict[str, tuple[int, str]] = {}
    for name, a in arrays.items():
        d = dims[name]
        if len(d) != a.ndim:
            raise ValueError(f"array {name!r} has {a.ndim} axes but dims {d}")
        if len(set(d)) != len(d):
            raise ValueError(f"array {name!r} repeats a dimension name: {d}")
        for dim, n in zip(d, a.shape, strict=True):
            if dim in sizes and sizes[dim][0] != n:
                raise ValueError(f"dimension {dim!r} is {sizes[dim][0]} long in {sizes[dim][1]!r} but {n} in {name!r}")
            sizes.setdefault(dim, (n, name))


def content_sha256(arrays: Mapping[str, np.ndarray], attrs: Mapping, dims: Mapping[str, tuple[str, ...]]) -> str:
    """sha256 over attrs, dims and every array's dtype, shape and values (strings length-prefixed)."""
    h = hashlib.sha256(b"maskbank-item-1\0")
    h.update(canonical_json([attrs, {k: list(v) for k, v in dims.items()}]))
    for name in sorted(arrays):
        a = arrays[name]
        if is_string(a):
            h.update(canonical_json([name, "str", list(a.shape)]))
            for s in a.ravel().tolist():
                b = s.encode("utf-8")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
        else:
            a = normalise(name, a)
            h.update(canonical_json([name, a.dtype.str, list(a.shape)]))
            h.update(a.tobytes())
    return h.hexdigest()


def plain_json(obj: object) -> object:
    """``obj`` as plain JSON data (numpy scalars and arrays, tuples and paths converted); else ``TypeError``."""

    def convert(o: object) -> object:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, PurePath):
            return str(o)
        raise TypeError(f"not JSON data: {type(o).__name__} {o!r}")

    return json.loads(json.dumps(obj, default=convert))


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode() + b"\n"


def error_reason(e: BaseException) -> str:
    """The first line of an exception's message: what went wrong, without a storage engine's trace."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__).strip().removeprefix("x ").strip()


def fill_value(dtype: np.dtype) -> object:
    """The fill value of a stored array of ``dtype``: "" for strings, False for bool, else 0."""
    if dtype.kind in "UT":
        return ""
    if dtype.kind == "b":
        return False
    return 0


def write_group(
    root: zarr.Group, path: str, arrays: Mapping[str, np.ndarray], dims: Mapping[str, tuple[str, ...]], attrs: Mapping
) -> zarr.Group:
    """Write a group at ``path`` under ``root`` holding ``arrays`` (each one chunk), replacing what was there."""
    if path in root:
        del root[path]
    group = root.require_group(path)
    for name, a in arrays.items():
        group.create_array(
            name,
            shape=a.shape,
            dtype=a.dtype,
            chunks=tuple(max(1, n) for n in a.shape),
            fill_value=fill_value(a.dtype),
            dimension_names=dims[name],
        )
        if a.size:
            group[name][...] = a
    group.attrs.update(dict(attrs))
    return group


def read_group(group: zarr.Group) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]], dict]:
    """``(arrays, dims, attrs)`` of ``group`` (arrays only, no subgroups)."""
    arrays, dims = {}, {}
    for name, z in group.arrays():
        arrays[name] = np.asarray(z[...])
        dims[name] = tuple(z.metadata.dimension_names or default_dims(name, arrays[name]))
    return arrays, dims, dict(group.attrs)
