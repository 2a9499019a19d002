"""README's "From a folder of photos to a VOC folder", run as written: a folder of photos with a
labels.csv, ``maskbank run`` on it, ``maskbank export --format voc``, and the VOC folder checked file by
file and read back with maskbank's own VOC reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doc_commands import documented

pytestmark = [pytest.mark.real]

PHOTOS = ["000000196610.jpg", "000000204805.jpg", "000000425988.jpg", "000000278528.jpg"]


def _true_labels(sample_root: Path) -> dict[str, list[str]]:
    """Each photo's COCO class names, from the sample's annotations."""
    coco = json.loads((sample_root / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    ids = {im["id"]: im["file_name"] for im in coco["images"] if im["file_name"] in PHOTOS}
    labels: dict[str, set[str]] = {f: set() for f in PHOTOS}
    for a in coco["annotations"]:
        if a["image_id"] in ids:
            labels[ids[a["image_id"]]].add(names[a["category_id"]])
    return {f: sorted(v) for f, v in labels.items()}


def _cli(*args):
    from typer.testing import CliRunner

    from maskbank.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_readme_folder_to_voc(prefect_harness, sample_root, tmp_path, monkeypatch):
    """The README's commands (check, run, export) on a folder of four sample photos; the run adds only speed settings
    (fewer SAM prompts, smaller feature maps, two images a shard, the CPU)."""
    from maskbank.storage.datasets import open_dataset

    monkeypatch.chdir(tmp_path)
    photos = Path("photos")
    photos.mkdir()
    truth = _true_labels(sample_root)
    for f in PHOTOS:
        shutil.copy(sample_root / "train2017" / f, photos / f)
    rows = "".join(f"{f},{';'.join(truth[f])}\n" for f in PHOTOS)
    (photos / "labels.csv").write_text("image,labels\n" + rows)
    assert any(len(v) > 1 for v in truth.values()) and any(" " in n for v in truth.values() for n in v)

    checked = _cli(*documented("maskbank check photos/labels.csv")[1:])
    assert checked.exit_code == 0 and f"{len(PHOTOS)} images, {len(PHOTOS)} labelled" in checked.output, checked.output
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"embed": {"long_side": 224}, "shard_size": 2}))
    ran = _cli(*documented("maskbank run --store photos-store --labelled photos/labels.csv")[1:],
               "--points-per-side", 4, "--params", speed, "--device", "cpu")
    assert ran.exit_code == 0, ran.output
    exported = _cli(*documented("maskbank export photos-store --format voc --out voc/")[1:])
    assert exported.exit_code == 0, exported.output

    voc = tmp_path / "voc"
    classes = (voc / "classes.txt").read_text().splitlines()
    csv_classes = {n for v in truth.values() for n in v}
    assert classes[0] == "background" and set(classes[1:]) == csv_classes and len(classes) == len(csv_classes) + 1
    lists = list((voc / "ImageSets" / "Segmentation").glob("*.txt"))
    assert len(lists) == 1 and sorted(lists[0].read_text().split()) == sorted(Path(f).stem for f in PHOTOS)
    assert sorted(p.name for p in (voc / "SegmentationClass").iterdir()) == sorted(f"{Path(f).stem}.png" for f in PHOTOS)

    read_back = open_dataset(voc)
    assert read_back.class_names == classes and sorted(read_back.image_ids) == sorted(Path(f).stem for f in PHOTOS)
    painted = set()
    for f in PHOTOS:
        stem, photo = Path(f).stem, (photos / f).resolve()
        with Image.open(voc / "SegmentationClass" / f"{stem}.png") as im, Image.open(photo) as source:
            assert im.mode == "P" and im.size == source.size, (f, im.mode, im.size, source.size)
            png = np.asarray(im)
        allowed = {0} | {classes.index(n) for n in truth[f]}
        present = {int(v) for v in np.unique(png)}
        assert present <= allowed, (f, [classes[v] if v < len(classes) else v for v in sorted(present - allowed)])
        painted |= present - {0}
        assert (voc / "JPEGImages" / f).resolve() == photo
        assert np.array_equal(read_back.truth(stem), png), f
    assert painted, "no photo got any of its labels"
