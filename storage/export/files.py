"""Files of an export folder: each written atomically, images linked or copied, and the folder's record of
the export it holds.

Every file is written under a temporary name beside its final one and renamed into place, so a killed
export never leaves a half-written file under a final name; its temporary files are removed by the next
export into the folder. ``maskbank-export.json`` records the export a folder holds (format, store, version,
options). An export goes into a missing or empty folder, or into one holding an export of the same format:
the same export is completed, another one is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

MARKER = "maskbank-export.json"
"""The record of the export a folder holds."""

MARKER_FORMAT = 1
TEMPORARY = ".maskbank-tmp-"
"""Prefix of the temporary name a file is written under before it is renamed into place."""


class FolderError(ValueError):
    """The output folder cannot take this export (the message says why)."""


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)`` beside ``path``, then rename it to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMPORARY}{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: object, indent: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A single-channel PNG of ``array``: mode L for uint8, I;16 for uint16; with ``palette``
    (``uint8[n, 3]``), a palette PNG of the uint8 indices."""
    if array.dtype == np.uint8:
        im = Image.fromarray(array)
        if palette is not None:
            im.putpalette(np.asarray(palette, np.uint8).tobytes())
    elif array.dtype == np.uint16 and palette is None:
        im = Image.fromarray(array)
    else:
        raise ValueError(f"no PNG for a {array.dtype} map{' with a palette' if palette is not None else ''}")
    write_atomic(path, lambda tmp: im.save(tmp, format="PNG"))


def place_image(source: Path, dest: Path, mode: str) -> None:
    """Put the image file ``source`` at ``dest``: a symbolic link to it (``link``; a copy where the file
    system has no links), a copy (``copy``), or nothing (``none``)."""
    if mode == "none":
        return
    if mode == "link":
        try:
            write_atomic(dest, lambda tmp: os.symlink(source.absolute(), tmp))
            return
        except OSError:
            pass  # no symbolic links here: copy instead
    write_atomic(dest, lambda tmp: shutil.copyfile(source, tmp))


def exist(paths: list[Path]) -> bool:
    """Whether every path is there (a link counts, whether or not its target is)."""
    return all(os.path.lexists(p) for p in paths)


def remove(paths: list[Path]) -> None:
    """Delete files and folders (a folder with what is in it; links, not what they point to)."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()


def check_folder(out: Path, fmt: str) -> None:
    """Raise :class:`FolderError` unless ``out`` is missing, an empty folder, or a ``fmt`` export's folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FolderError(f"{out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    record = read_record(out)
    if record is None:
        raise FolderError(f"{out} is not empty and holds no maskbank export ({MARKER}); choose a new or empty folder")
    if record.get("format") != fmt:
        raise FolderError(f"{out} holds a {record.get('format')} export, not {fmt}; choose a new or empty folder")


def read_record(out: Path) -> dict | None:
    """The export record of the folder ``out``, None when it has none (or one that does not read)."""
    try:
        record = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("maskbank_export") == MARKER_FORMAT else None


def claim_folder(out: Path, record: Mapping, owned: Callable[[Mapping], list[Path]]) -> bool:
    """Make ``out`` hold the export ``record`` describes; returns whether it held it already.

    What killed exports left under temporary names is removed. When the folder records this very export,
    its files are kept (each is complete: a rerun writes only what is missing). Otherwise the files the
    recorded export owns (``owned(old record)``) are removed before the new record is written, so the
    folder never holds files of two exports under one record.
    """
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.rglob(f"{TEMPORARY}*"):
        leftover.unlink(missing_ok=True)
    record = {"maskbank_export": MARKER_FORMAT, **record}
    previous = read_record(out)
    if previous == record:
        return True
    if previous is not None:
        remove(owned(previous))
    write_json(out / MARKER, record, indent=2)
    return False
