import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskbank.storage.datasets import (
    VOC_CLASSES,
    DatasetError,
    DatasetSpec,
    ImageError,
    hashing,
    image_size,
    load_rgb,
    open_dataset,
)
from maskbank.tasks import rle

COCO_TINY = next(
    (p for p in (Path(__file__).resolve().parents[2] / "shared/data/coco-tiny", Path("/work/shared/data/coco-tiny"))
     if p.is_dir()),
    None,
)


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def rgb(h: int, w: int, color=(10, 20, 30)) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (h, w, 3)).copy()


# ----- image decoding ------------------------------------------------------------------------------


def test_modes_load_as_rgb(tmp_path):
    grey = Image.new("L", (5, 4), 100)
    grey.save(tmp_path / "l.png")
    Image.new("LA", (5, 4), (100, 50)).save(tmp_path / "la.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    Image.fromarray(np.array([[0, 65535, 32768]], np.uint16)).save(tmp_path / "i16.png")
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=1)

    with Image.open(tmp_path / "i16.png") as im:
        assert im.mode == "I;16"
    expect = {
        "l.png": (100, 100, 100),
        "la.png": (100, 100, 100),
        "rgba.png": (10, 20, 30),
        "cmyk.tif": (255, 0, 0),
    }
    for name, color in expect.items():
        a = load_rgb(tmp_path / name)
        assert a.dtype == np.uint8 and a.shape == (4, 5, 3), name
        assert (a == np.array(color, np.uint8)).all(), name
    i16 = load_rgb(tmp_path / "i16.png")
    assert i16.shape == (1, 3, 3) and i16[0, :, 0].tolist() == [0, 255, 128]
    for name in ("p.png", "pt.png"):
        p = load_rgb(tmp_path / name)
        assert p[0, 1].tolist() == [200, 100, 50] and p[0, 0].tolist() == [0, 0, 0], name


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rot.jpg"
    Image.fromarray(a).save(path, exif=exif, quality=95)

    shown = load_rgb(path)
    assert shown.shape == (60, 40, 3)
    assert image_size(path) == (60, 40)
    assert np.abs(shown[10, 20].astype(int) - (255, 0, 0)).max() < 40  # left half went to the top
    assert np.abs(shown[50, 20].astype(int) - (0, 0, 255)).max() < 40
    stored = load_rgb(path, exif_transpose=False)
    assert stored.shape == (40, 60, 3) and image_size(path, exif_transpose=False) == (40, 60)


def test_corrupt_truncated_missing_raise(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = save(tmp_path / "full.jpg", noise, quality=95).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) * 6 // 10])
    for name in ("junk.jpg", "cut.jpg", "absent.jpg"):
        with pytest.raises(ImageError):
            load_rgb(tmp_path / name)
    assert load_rgb(tmp_path / "full.jpg").shape == (64, 64, 3)


# ----- folder + labels file ------------------------------------------------------------------------


def make_folder(root: Path, labels_text: str | None = None, labels_name: str = "labels.csv") -> Path:
    for i, name in enumerate(["a.jpg", "b.png", "c.jpg", "sub/d.jpg", "free.jpg"]):
        save(root / "images" / name, rgb(8 + i, 10, (i * 40, 0, 0)))
    if labels_text is not None:
        (root / labels_name).write_text(labels_text)
    return root


def test_folder_csv(tmp_path):
    root = make_folder(tmp_path / "set", "image,labels\na.jpg,dog;person\nb.png,cat|dog\nc.jpg,\nsub/d.jpg, person \n")
    ds = open_dataset(root)
    assert ds.class_names == ["background", "cat", "dog", "person"]
    lab = {r.image_id: r.labels for r in ds.records}
    assert lab == {"a.jpg": (2, 3), "b.png": (1, 2), "c.jpg": (), "sub/d.jpg": (3,), "free.jpg": None}
    assert ds.record("b.png").height == 9 and ds.record("b.png").width == 10
    assert not any(r.has_truth for r in ds.records) and ds.skipped == []
    assert any("empty label set" in n and "c.jpg" in n for n in ds.notes)
    assert ds.image("sub/d.jpg").shape == (11, 10, 3)
    with pytest.raises(LookupError):
        ds.truth("a.jpg")


def test_folder_json_forms_and_class_list(tmp_path):
    root = make_folder(tmp_path / "set", json.dumps({"a.jpg": ["dog"], "c.jpg": ["cat", "dog"]}), "labels.json")
    ds = open_dataset(root, classes=["dog", "cat", "bird"])
    assert ds.class_names == ["background", "dog", "cat", "bird"]
    assert ds.record("c.jpg").labels == (1, 2) and ds.record("b.png").labels is None

    rows = [{"image": "a.jpg", "labels": ["dog"]}, {"image": "b.png", "labels": None}]
    (root / "labels.json").write_text(json.dumps(rows))
    ds = open_dataset(root / "labels.json")
    assert ds.class_names == ["background", "dog"] and ds.record("b.png").labels is None


def test_folder_unknown_names_error_or_skip(tmp_path):
    root = make_folder(tmp_path / "set", "image,labels\na.jpg,dog;unicorn\nb.png,gryphon\n")
    with pytest.raises(DatasetError, match="unknown class names") as e:
        open_dataset(root, classes=["dog"])
    assert "gryphon" in str(e.value) and "unicorn" in str(e.value)
    ds = open_dataset(root, classes=["dog"], skip_unknown=True)
    assert ds.record("a.jpg").labels == (1,) and ds.record("b.png").labels == ()
    assert any("unicorn" in n for n in ds.notes)


@pytest.mark.parametrize("bad", ["../x.jpg", "/etc/x.jpg", "sub/../../x.jpg", "C:/x.jpg"])
def test_folder_traversal_refused(tmp_path, bad):
    root = make_folder(tmp_path / "set", f"image,labels\na.jpg,dog\n{bad},dog\n")
    with pytest.raises(DatasetError, match="relative paths"):
        open_dataset(root)


def test_folder_duplicates_missing_corrupt(tmp_path):
    root = make_folder(tmp_path / "set", "image,labels\na.jpg,dog\n./a.jpg,cat\n")
    with pytest.raises(DatasetError, match="duplicate"):
        open_dataset(root)
    (root / "labels.csv").write_text("image,labels\na.jpg,dog\ngone.jpg,dog\nbroken.jpg,dog\n")
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    ds = open_dataset(root)
    skipped = dict(ds.skipped)
    assert set(skipped) == {"gone.jpg", "broken.jpg"}
    assert "missing" in skipped["gone.jpg"] and "broken.jpg" not in ds
    assert len(ds) == 5


def test_rename_merges_classes(tmp_path):
    root = make_folder(tmp_path / "set", "image,labels\na.jpg,dog;person\nb.png,cat\nc.jpg,person\n")
    ds = open_dataset(root, rename={"cat": "pet", "dog": "pet", "person": "background"})
    assert ds.class_names == ["background", "pet"]
    assert [ds.record(i).labels for i in ("a.jpg", "b.png", "c.jpg")] == [(1,), (1,), ()]
    with pytest.raises(DatasetError, match="unknown classes"):
        open_dataset(root, rename={"horse": "pet"})


def test_spec_forms(tmp_path):
    root = make_folder(tmp_path / "set", "image,labels\na.jpg,dog\n")
    a = open_dataset({"path": str(root), "name": "mine"})
    b = open_dataset(DatasetSpec(path=root), name="mine")
    assert a.name == b.name == "mine" and a.image_ids == b.image_ids
    with pytest.raises(DatasetError, match="unknown dataset spec keys"):
        open_dataset({"path": str(root), "colour": 1})
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "nowhere")


# ----- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_stable_and_sensitive(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "set", "image,labels\na.jpg,dog\nb.png,cat\n")
    cache = tmp_path / "hashes.json"
    fp = open_dataset(root).fingerprint(cache)
    assert len(fp) == 64 and cache.is_file()

    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    assert open_dataset(root).fingerprint(cache) == fp
    assert calls == []  # every file hash came from the sidecar
    assert open_dataset(root).fingerprint(tmp_path / "fresh.json") == fp
    assert len(calls) == 5

    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert open_dataset(moved, name="other").fingerprint(cache) == fp

    (root / "labels.csv").write_text("image,labels\na.jpg,dog\nb.png,dog\n")
    relabelled = open_dataset(root).fingerprint(cache)
    assert relabelled != fp

    (root / "labels.csv").write_text("image,labels\na.jpg,dog\nb.png,cat\n")
    save(root / "images" / "a.jpg", rgb(8, 10, (1, 2, 3)))
    os.utime(root / "images" / "a.jpg", ns=(1, 1))
    changed = open_dataset(root).fingerprint(cache)
    assert changed not in (fp, relabelled)

    ds = open_dataset(moved)
    sub = ds.subset(["b.png", "a.jpg"])
    assert sub.image_ids == ["a.jpg", "b.png"] and sub.fingerprint(cache) != fp
    with pytest.raises(KeyError):
        ds.subset(["zzz.jpg"])


# ----- COCO ----------------------------------------------------------------------------------------


def make_coco(root: Path, split: str = "train") -> Path:
    save(root / split / "one.jpg", rgb(20, 30))
    save(root / split / "two.jpg", rgb(20, 30))
    crowd_mask = np.pad(np.ones((4, 4), np.uint8), ((14, 2), (24, 2)))
    crowd = mask_utils.encode(np.asfortranarray(crowd_mask))
    crowd_uncompressed = {"size": [20, 30], "counts": _uncompressed_counts(crowd_mask)}
    decoded = rle.decode([mask_utils.frPyObjects(crowd_uncompressed, 20, 30)], (20, 30))
    assert decoded.sum() == mask_utils.area(crowd) == 16
    data = {
        "images": [
            {"id": 1, "file_name": "one.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": "two.jpg", "height": 20, "width": 30},
            {"id": 3, "file_name": "gone.jpg", "height": 20, "width": 30},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            # a small dog inside a large cat: the dog must stay visible
            {"id": 10, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": [[5, 5, 10, 5, 10, 10, 5, 10]]},
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": [[0, 0, 20, 0, 20, 15, 0, 15]]},
            {"id": 12, "image_id": 1, "category_id": 2, "iscrowd": 1, "segmentation": crowd_uncompressed},
        ],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _uncompressed_counts(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_coco_synthetic(tmp_path):
    ds = open_dataset(make_coco(tmp_path / "coco"))
    assert ds.class_names == ["background", "cat", "dog"]  # ascending category id: 2 then 7
    assert ds.image_ids == ["one", "two"] and ds.skipped[0][0] == "gone"
    assert ds.record("one").labels == (1, 2) and ds.record("two").labels == ()
    assert ds.exif_transpose is False
    t = ds.truth("one")
    assert t.dtype == np.uint8 and t.shape == (20, 30)
    assert t[7, 7] == 2 and t[2, 2] == 1 and t[18, 5] == 0
    assert (t[14:18, 24:28] == 255).all() and (t == 255).sum() == 16
    assert (ds.truth("two") == 0).all()

    merged = open_dataset(tmp_path / "coco" / "annotations" / "instances_train.json", rename={"dog": "cat"})
    assert merged.class_names == ["background", "cat"]
    assert merged.truth("one")[7, 7] == 1 and merged.record("one").labels == (1,)
    assert merged.fingerprint(tmp_path / "h.json") != ds.fingerprint(tmp_path / "h.json")


def test_coco_split_required_when_ambiguous(tmp_path):
    root = make_coco(tmp_path / "coco", "train")
    make_coco(root, "val")
    with pytest.raises(DatasetError, match="choose a COCO split"):
        open_dataset(root)
    assert open_dataset(root, split="val").name == "val"


@pytest.mark.skipif(COCO_TINY is None, reason="coco-tiny (shared/data/coco-tiny beside the repository) is not here")
def test_coco_tiny_real():
    for split in ("train2017", "val2017"):
        ds = open_dataset(COCO_TINY, split=split)  # ends on val2017, checked below
        assert len(ds) == 80 and ds.skipped == [] and len(ds.class_names) == 81
        assert ds.class_names[1] == "person" and ds.class_names[80] == "toothbrush"
        assert set().union(*(r.labels for r in ds.records)) == set(range(1, 81))
    data = json.loads((COCO_TINY / "annotations" / "instances_val2017.json").read_text())
    crowd_files = {i["file_name"][:-4] for i in data["images"]} & {
        f"{a['image_id']:012d}" for a in data["annotations"] if a["iscrowd"]
    }
    values = set()
    for image_id in sorted(crowd_files)[:4] + ds.image_ids[:4]:
        t = ds.truth(image_id)
        r = ds.record(image_id)
        assert t.dtype == np.uint8 and t.shape == (r.height, r.width)
        present = set(np.unique(t).tolist())
        assert present - {0, 255} <= set(r.labels)
        values |= present
    assert 255 in values and values <= set(range(81)) | {255} and len(values) > 5
    assert ds.image(ds.image_ids[0]).shape == (ds.records[0].height, ds.records[0].width, 3)


# ----- VOC -----------------------------------------------------------------------------------------


def make_voc(root: Path) -> Path:
    for i, image_id in enumerate(["2007_000001", "2007_000002", "2007_000003"]):
        save(root / "JPEGImages" / f"{image_id}.jpg", rgb(12, 16, (i * 50, 10, 10)))
    for image_id, values in [("2007_000001", (0, 15, 255)), ("2007_000002", (0, 1, 12))]:
        idx = np.zeros((12, 16), np.uint8)
        idx[2:6, 2:6] = values[1]
        idx[6:9, 6:9] = values[2]
        png = Image.fromarray(idx, mode="P")
        png.putpalette(list(np.random.default_rng(0).integers(0, 255, 768).astype(np.uint8)))
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n2007_000003\n2007_000009\n")
    return root


def test_voc(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    ds = open_dataset(root)
    assert ds.class_names == ["background", *VOC_CLASSES] and ds.class_names[15] == "person"
    assert ds.skipped[0][0] == "2007_000009"
    assert [r.labels for r in ds.records] == [(15,), (1, 12), None]
    assert [r.has_truth for r in ds.records] == [True, True, False]
    t = ds.truth("2007_000001")
    assert t.dtype == np.uint8 and t[3, 3] == 15 and t[7, 7] == 255 and t[0, 0] == 0

    (tmp_path / "cls.json").write_text(json.dumps({"2007_000001.jpg": ["dog"], "2007_000003": ["cat", "person"]}))
    lab = open_dataset(root, split="train", labels=tmp_path / "cls.json")
    assert [r.labels for r in lab.records] == [(12,), None, (8, 15)]
    assert lab.truth("2007_000001")[3, 3] == 15

    merged = open_dataset(root, rename={"person": "dog"})
    assert len(merged.class_names) == 20 and merged.truth("2007_000001")[3, 3] == merged.class_names.index("dog")


def test_write_coco_subset_by_name_or_first(tmp_path, sample_root):
    from maskbank.storage.datasets.coco import write_coco_subset

    first = write_coco_subset(sample_root, "val2017", tmp_path / "first", first=2)
    data = json.loads(first.read_text())
    assert [im["file_name"] for im in data["images"]] == ["000000055299.jpg", "000000184324.jpg"]
    assert {a["image_id"] for a in data["annotations"]} == {im["id"] for im in data["images"]}
    assert not (tmp_path / "first" / "val2017").exists()
    ds = open_dataset(DatasetSpec(path=str(first), images=str(sample_root / "val2017")))
    assert ds.image_ids == ["000000055299", "000000184324"]

    named = write_coco_subset(sample_root, "val2017", tmp_path / "named", ["000000184324"], copy_images=True)
    assert [im["file_name"] for im in json.loads(named.read_text())["images"]] == ["000000184324.jpg"]
    assert (tmp_path / "named" / "val2017" / "000000184324.jpg").is_file()
    assert len(open_dataset(DatasetSpec(path=str(tmp_path / "named"), split="val2017")).records) == 1

    with pytest.raises(DatasetError, match="no images"):
        write_coco_subset(sample_root, "val2017", tmp_path / "x", ["nope"])
    with pytest.raises(DatasetError, match="fewer than"):
        write_coco_subset(sample_root, "val2017", tmp_path / "x", first=1000)
    with pytest.raises(ValueError, match="exactly one"):
        write_coco_subset(sample_root, "val2017", tmp_path / "x")
