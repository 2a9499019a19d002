"""Helpers of the benchmarks: scoring labelled proposals without painting, folding confusion matrices onto a
class subset and plain-text tables (pure), and publishing results with their provenance (I/O).

Disjoint proposals make painting a lookup: every pixel lies in at most one proposal, so a label map
painted from per-proposal labels (any score order, any mask NMS, since disjoint masks never overlap) is
that proposal's label inside it and background elsewhere. A confusion matrix is then a sum of
per-proposal truth histograms (``ProposalTruth``), which scores any labelling of the proposals in
microseconds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from maskbank.tasks.metrics import ConfusionMatrix


def owner_map(masks: np.ndarray) -> np.ndarray:
    """``int64[H, W]``: the index of the one ``[N, H, W]`` mask covering each pixel, -1 where none does;
    overlapping masks raise (scoring by proposal needs disjoint masks)."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    cover = masks.sum(0, dtype=np.int64)
    if cover.size and cover.max() > 1:
        raise ValueError("proposals overlap; scoring by proposal needs disjoint masks")
    return np.where(cover > 0, masks.argmax(0) if len(masks) else 0, -1).astype(np.int64)


def resize_nearest(values: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A ``[h, w]`` map resampled to ``hw`` by nearest neighbour (source row ``y * h // H``, as the flow's
    evaluation scales label maps)."""
    values = np.asarray(values)
    (h, w), (th, tw) = values.shape, hw
    return values[(np.arange(th) * h // th)[:, None], np.arange(tw) * w // tw]


@dataclass(frozen=True)
class ProposalTruth:
    """Truth pixel counts of one image's disjoint proposals: ``counts[i, t]`` pixels of proposal ``i`` whose
    truth is class ``t``, ``rest[t]`` pixels in no proposal. Ignored pixels are not counted."""

    counts: np.ndarray
    rest: np.ndarray

    @classmethod
    def measure(cls, owner: np.ndarray, count: int, truth: np.ndarray, num_classes: int,
                ignore_index: int = 255) -> ProposalTruth:
        """Count ``truth`` (``[H, W]`` class indices) under each of ``count`` proposals given as an ``owner``
        map (``[H, W]`` proposal index, -1 where no proposal is)."""
        owner, truth = np.asarray(owner), np.asarray(truth)
        if owner.shape != truth.shape:
            raise ValueError(f"owner map {owner.shape} must match truth {truth.shape}")
        if owner.size and (owner.min() < -1 or owner.max() >= count):
            raise ValueError(f"owner map must hold proposal indices in [-1, {count})")
        counted = truth != ignore_index
        t = truth[counted].astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"truth has labels outside [0, {num_classes}) other than ignore {ignore_index}")
        rows = np.where(owner[counted] < 0, count, owner[counted]).astype(np.int64)
        table = np.bincount(rows * num_classes + t, minlength=(count + 1) * num_classes)
        table = table.reshape(count + 1, num_classes)
        return cls(table[:count], table[count])

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def majority(self, allowed: Sequence[int] | None = None) -> np.ndarray:
        """``int32[N]``: each proposal's most frequent truth class among ``allowed`` (all by default).

        Ties go to the smaller class id; a proposal with no counted pixel among them gets the smallest
        allowed class (background when it is allowed).
        """
        ids = np.arange(self.counts.shape[1]) if allowed is None else np.unique(np.asarray(allowed, np.int64))
        if ids.size == 0:
            raise ValueError("allowed must name at least one class")
        return ids[self.counts[:, ids].argmax(1)].astype(np.int32) if len(self) else np.zeros(0, np.int32)


def proposal_confusion(truths: Sequence[ProposalTruth], labels: Sequence[np.ndarray], num_classes: int,
                       background: int = 0) -> np.ndarray:
    """``int64[K, K]`` confusion matrix (rows truth, columns prediction) of the label maps painted from
    per-proposal ``labels``: negative labels paint nothing, unpainted pixels are ``background``."""
    if len(truths) != len(labels):
        raise ValueError(f"{len(truths)} images but {len(labels)} label arrays")
    cm = np.zeros((num_classes, num_classes), np.int64)
    for truth, lab in zip(truths, labels):
        lab = np.asarray(lab, np.int64)
        if lab.shape != (len(truth),):
            raise ValueError(f"labels {lab.shape} for {len(truth)} proposals")
        lab = np.where(lab < 0, background, lab)
        if lab.size and lab.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes})")
        np.add.at(cm.T, lab, truth.counts)
        cm[:, background] += truth.rest
    return cm


def fold_confusion(matrix: np.ndarray, target: ConfusionMatrix) -> ConfusionMatrix:
    """Add a full confusion matrix to ``target`` through its ``remap`` (truth) and ``pred_remap``
    (prediction) lookups: the same counts ``target.update`` gives on the pixels ``matrix`` counted."""
    matrix = np.asarray(matrix, np.int64)
    k = matrix.shape[0]
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {matrix.shape}")
    rows = np.arange(k) if target.remap is None else target.remap
    cols = np.arange(k) if target.pred_remap is None else target.pred_remap
    if len(rows) != k or len(cols) != k:
        raise ValueError(f"target lookups cover {len(rows)} classes, matrix has {k}")
    t, p = np.divmod(np.arange(k * k), k)
    kept = rows[t] != target.ignore_index
    np.add.at(target.matrix, (rows[t][kept], cols[p][kept]), matrix.ravel()[kept])
    return target


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns; floats as 4 decimals, None as '-'."""
    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def provenance(script: str, argv: Sequence[str] | None = None) -> dict:
    """What produced a result: the command (``script`` with ``argv``, the process's arguments by default), the
    UTC date, the repository commit and the machine."""
    import torch

    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "flows", "tasks", "storage", "maskbank",
                  "bench")
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": shlex.join(["python", f"bench/{Path(script).name}", *args]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "uncommitted_changes": None if changed is None else bool(changed),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }


def publish(results: dict, out: Path, text: str, origin: dict) -> None:
    """Add ``origin`` (a :func:`provenance` taken when the run began) to ``results``, write them to ``out`` as
    JSON and ``text`` beside it (``.txt``), and print ``text``."""
    results["provenance"] = origin
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)
    print(f"\nwritten {out} and {out.with_suffix('.txt')}")
