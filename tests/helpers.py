"""Helpers shared by tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def coco_slice(sample: Path, dest: Path, split: str, stems: list[str]) -> Path:
    """Copy the images ``stems`` of a COCO ``split`` (and their annotations) under ``dest``; returns the json."""
    coco = json.loads((sample / "annotations" / f"instances_{split}.json").read_text())
    images = [im for im in coco["images"] if im["file_name"][:-4] in stems]
    ids = {im["id"] for im in images}
    coco["images"], coco["annotations"] = images, [a for a in coco["annotations"] if a["image_id"] in ids]
    (dest / "annotations").mkdir(parents=True, exist_ok=True)
    (dest / split).mkdir(parents=True, exist_ok=True)
    for im in images:
        shutil.copy2(sample / split / im["file_name"], dest / split / im["file_name"])
    path = dest / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(coco))
    return path
