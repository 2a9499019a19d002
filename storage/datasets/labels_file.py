"""Image-level labels files: CSV (``image,labels``) or JSON (mapping or list of rows).

CSV: a header row with columns ``image`` and ``labels``; labels separated by ``;`` or ``|``; an empty
field is an empty label set. JSON: ``{"a.jpg": ["dog", "person"]}`` or
``[{"image": "a.jpg", "labels": ["dog"]}]``; ``null`` labels mean unlabelled. Image names are paths
relative to the images folder; absolute paths and ``..`` are refused.
"""

from __future__ import annotations

import difflib

import csv
import json
import re
from pathlib import Path, PurePosixPath

from maskbank.storage.datasets.classes import ClassMap, DatasetError

_LABEL_SEPARATORS = re.compile(r"[;|]")


def read_labels_file(path: str | Path) -> dict[str, tuple[str, ...] | None]:
    """``{relative image path: label names or None}`` in file order; duplicates and traversal raise."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".json":
        rows = _json_rows(path)
    else:
        raise DatasetError(f"labels file must be .csv or .json, got {path.name!r}")
    out: dict[str, tuple[str, ...] | None] = {}
    refused, dupes = [], []
    for name, labels in rows:
        rel = safe_relative(name)
        if rel is None:
            refused.append(name)
        elif rel in out:
            dupes.append(name)
        else:
            out[rel] = labels
    if refused:
        raise DatasetError(f"{path}: image names must be relative paths inside the images folder: {refused[:10]}")
    if dupes:
        raise DatasetError(f"{path}: duplicate image entries: {dupes[:10]}")
    return out


def safe_relative(name: str) -> str | None:
    """Normalised posix relative path, or ``None`` for empty, absolute or parent-escaping names."""
    name = str(name).strip().replace("\\", "/")
    p = PurePosixPath(name)
    if not name or p.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in p.parts:
        return None
    parts = [s for s in p.parts if s != "."]
    return "/".join(parts) if parts else None


def _csv_rows(path: Path) -> list[tuple[str, tuple[str, ...] | None]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "image" not in fields or "labels" not in fields:
            raise DatasetError(f"{path}: CSV needs a header with columns 'image' and 'labels', got {fields}")
        reader.fieldnames = fields
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["image"] is None or not row["image"].strip():
                raise DatasetError(f"{path}:{line}: empty image name")
            rows.append((row["image"], _split(row["labels"] or "")))
        return rows


def _json_rows(path: Path) -> list[tuple[str, tuple[str, ...] | None]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise DatasetError(f"{path}: invalid JSON: {e}") from e
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = []
        for i, row in enumerate(data):
            if not isinstance(row, dict) or "image" not in row:
                raise DatasetError(f"{path}: row {i} must be an object with 'image' and 'labels'")
            items.append((row["image"], row.get("labels")))
    else:
        raise DatasetError(f"{path}: expected a JSON object or list, got {type(data).__name__}")
    rows = []
    for name, labels in items:
        if not isinstance(name, str):
            raise DatasetError(f"{path}: image name must be a string, got {name!r}")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise DatasetError(f"{path}: labels of {name!r} must be a list of class names or null, got {labels!r}")
        rows.append((name, None if labels is None else tuple(dict.fromkeys(x.strip() for x in labels if x.strip()))))
    return rows


def _split(field: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in _LABEL_SEPARATORS.split(field) if s.strip()))


def to_indices(
    rows: dict[str, tuple[str, ...] | None], classes: ClassMap, skip_unknown: bool, source: str | Path
) -> tuple[dict[str, tuple[int, ...] | None], list[str]]:
    """Label names -> dataset indices; unknown names raise (listing them) unless ``skip_unknown``."""
    out: dict[str, tuple[int, ...] | None] = {}
    unknown: dict[str, int] = {}
    for name, labels in rows.items():
        if labels is None:
            out[name] = None
            continue
        found, missing = classes.lookup(labels)
        for m in missing:
            unknown[m] = unknown.get(m, 0) + 1
        out[name] = classes.labels(found)
    notes = []
    if unknown:
        listed = ", ".join(f"{n!r} ({c}x)" for n, c in sorted(unknown.items()))
        if not skip_unknown:
            close = {n: difflib.get_close_matches(n, classes.source_names, n=1) for n in sorted(unknown)}
            hints = [f"{n!r} -> {c[0]!r}" for n, c in close.items() if c]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            known = list(classes.source_names)
            shown = f"{known[:20]} and {len(known) - 20} more" if len(known) > 20 else f"{known}"
            raise DatasetError(f"{source}: unknown class names {listed}{hint}; known: {shown}; skip-unknown drops "
                               "them, rename maps them")
        notes.append(f"{source}: dropped unknown class names {listed}")
    return out, notes


def empty_label_notes(labels: dict[str, tuple[int, ...] | None]) -> list[str]:
    """A note naming images whose label set is empty: they count as labelled with no foreground."""
    empty = [k for k, v in labels.items() if v == ()]
    if not empty:
        return []
    return [f"{len(empty)} image(s) have an empty label set and count as labelled with no foreground: {empty[:5]}"]
