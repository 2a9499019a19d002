import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskbank.storage.datasets import DatasetError, DatasetSpec, detect_format, open_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MSRC21 = DATA / "msrc21-dev"
CAMVID = DATA / "camvid-train"
MSRC21_CLASSES = [
    "building", "grass", "tree", "cow", "sheep", "sky", "aeroplane", "water", "face", "car", "bicycle",
    "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body", "boat",
]


def save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode="P" if palette else None)
    if palette:  # colours unrelated to the indices: a reader must use the index
        im.putpalette(list(np.random.default_rng(1).integers(0, 255, 768).astype(np.uint8)))
    im.save(path)
    return path


def photo(h: int = 12, w: int = 16, shade: int = 40) -> np.ndarray:
    return np.full((h, w, 3), shade, np.uint8)


def mask(values: tuple[int, ...], h: int = 12, w: int = 16) -> np.ndarray:
    """Column bands of ``values`` (the first fills what is left)."""
    m = np.full((h, w), values[0], np.uint8)
    for i, v in enumerate(values[1:], start=1):
        m[:, 4 * i : 4 * i + 3] = v
    return m


def make_masks(root: Path, classes: list[str] | None, masks: dict[str, np.ndarray], palette: bool = False,
               extra_images: tuple[str, ...] = ()) -> Path:
    """``images/<id>.jpg`` for every mask and extra id, ``masks/<id>.png``, and ``classes.txt``."""
    for image_id, m in masks.items():
        save(root / "images" / f"{image_id}.jpg", photo(*m.shape))
        save(root / "masks" / f"{image_id}.png", m, palette)
    for image_id in extra_images:
        save(root / "images" / f"{image_id}.jpg", photo())
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def one_line_error(match: str, *args, **kw) -> None:
    with pytest.raises(DatasetError, match=match) as e:
        open_dataset(*args, **kw)
    assert "\n" not in str(e.value)


# ----- masks folders -------------------------------------------------------------------------------


def test_masks_with_background_read_labels_and_truth_from_masks(tmp_path):
    a, b = mask((0, 1, 255)), mask((0, 2, 1))
    root = make_masks(tmp_path / "ds", ["background", "cat", "dog"], {"a": a, "b": b})
    assert detect_format(root) == "masks"
    ds = open_dataset(root)
    assert ds.class_names == ["background", "cat", "dog"] and ds.has_background
    assert ds.image_ids == ["a", "b"] and ds.skipped == [] and not ds.exif_transpose
    assert [r.labels for r in ds.records] == [(1,), (1, 2)] and all(r.has_truth for r in ds.records)
    for image_id, m in (("a", a), ("b", b)):
        t = ds.truth(image_id)
        assert t.dtype == np.uint8 and (t == m).all()  # background at 0, ignore 255 is the truth's ignore
    assert ds.ignore_index == 255 and (ds.truth("a")[a == 255] == ds.ignore_index).all()
    assert ds.records[0].path.name == "a.jpg" and (ds.records[0].height, ds.records[0].width) == (12, 16)


def test_palette_masks_without_background_shift_behind_the_placeholder(tmp_path):
    a, b = mask((0, 2, 255)), mask((1, 1, 0))
    root = make_masks(tmp_path / "ds", ["sky", "road", "car"], {"a": a, "b": b}, palette=True)
    ds = open_dataset(root)
    assert ds.class_names == ["background", "sky", "road", "car"] and not ds.has_background
    assert [r.labels for r in ds.records] == [(1, 3), (1, 2)]
    t = ds.truth("a")
    assert (t[a == 255] == 255).all() and (t[a != 255] == a[a != 255] + 1).all()
    assert (ds.truth("b") == b + 1).all() and 0 not in np.unique(ds.truth("b"))


def test_background_named_anywhere_or_chosen_in_the_spec(tmp_path):
    a = mask((1, 0, 2, 255))
    root = make_masks(tmp_path / "ds", None, {"a": a})
    (root / "classes.json").write_text(json.dumps(["sky", "_Background_", "car"]))
    ds = open_dataset(root)
    assert ds.class_names == ["background", "sky", "car"] and ds.has_background
    t = ds.truth("a")
    assert t[0, 0] == 0 and t[0, 4] == 1 and t[0, 8] == 2 and t[0, 12] == 255
    assert ds.records[0].labels == (1, 2)

    (root / "classes.json").unlink()
    (root / "classes.txt").write_text("void\nsky\ncar\n")
    assert not open_dataset(root).has_background
    first = open_dataset(root, background=True)  # the first class is the background, whatever its name
    assert first.class_names == ["background", "sky", "car"] and first.has_background
    assert first.truth("a")[0, 0] == 1 and first.truth("a")[0, 4] == 0

    folded = open_dataset(root, rename={"void": "background"})
    assert folded.class_names == ["background", "sky", "car"] and folded.has_background


def test_ignore_index_option(tmp_path):
    a = mask((0, 1, 7))
    root = make_masks(tmp_path / "ds", ["background", "cat"], {"a": a})
    ds = open_dataset({"path": str(root), "ignore_index": 7})
    assert ds.records[0].labels == (1,) and ds.truth("a")[0, 8] == 255
    skipped = open_dataset(root)  # 7 is neither a class nor the default ignore 255
    assert skipped.image_ids == [] and "values [7]" in skipped.skipped[0][1]
    one_line_error("also class 'cat'", root, ignore_index=1)
    one_line_error("masks datasets only", root, format="folder", ignore_index=7)


def test_labels_file_labels_images_and_masks_give_truth(tmp_path):
    root = make_masks(tmp_path / "ds", ["background", "cat", "dog"], {"a": mask((0, 1)), "b": mask((0, 2))},
                      extra_images=("c", "d"))
    (root / "labels.csv").write_text("image,labels\na.jpg,dog\nb,cat;dog\nc.jpg,cat\n")
    ds = open_dataset(root, labels=root / "labels.csv")
    assert ds.image_ids == ["a", "b", "c", "d"] and ds.skipped == []
    assert [r.labels for r in ds.records] == [(2,), (1, 2), (1,), None]
    assert [r.has_truth for r in ds.records] == [True, True, False, False]
    assert ds.truth("a")[0, 4] == 1  # truth stays the mask's
    with pytest.raises(LookupError):
        ds.truth("c")

    bare = open_dataset(root)  # without a labels file an image without a mask cannot be labelled
    assert bare.image_ids == ["a", "b"]
    assert [i for i, _ in bare.skipped] == ["c", "d"] and "no mask" in bare.skipped[0][1]

    (root / "twice.csv").write_text("image,labels\na.jpg,dog\na,cat\n")
    one_line_error("listed twice", root, labels=root / "twice.csv")
    (root / "unknown.csv").write_text("image,labels\na.jpg,horse\n")
    one_line_error("unknown class names", root, labels=root / "unknown.csv")


def test_wrong_size_or_unreadable_mask_loses_its_truth(tmp_path):
    root = make_masks(tmp_path / "ds", ["background", "cat"], {"a": mask((0, 1)), "b": mask((0, 1))})
    save(root / "masks" / "b.png", mask((0, 1), 6, 8))
    save(root / "images" / "c.jpg", photo())
    save(root / "masks" / "c.png", photo())  # an RGB mask
    save(root / "masks" / "orphan.png", mask((0, 1)))
    ds = open_dataset(root)
    assert ds.image_ids == ["a"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {"b", "c", "orphan"}
    assert "8x6" in reasons["b"] and "16x12" in reasons["b"] and "mode RGB" in reasons["c"]
    assert "no image file" in reasons["orphan"]
    assert all("\n" not in why for why in reasons.values())

    (root / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "b.jpg": ["cat"], "c.jpg": []}))
    lab = open_dataset(root, labels=root / "labels.json")
    assert lab.image_ids == ["a", "b", "c"] and [r.has_truth for r in lab.records] == [True, False, False]
    assert [r.labels for r in lab.records] == [(1,), (1,), ()]
    assert any(n.startswith("b: no truth: ") and "8x6" in n for n in lab.notes)
    assert any(n.startswith("c: no truth: ") for n in lab.notes)


def test_bad_values_in_a_mask_labelled_from_a_file_fail_when_its_truth_is_read(tmp_path):
    root = make_masks(tmp_path / "ds", ["background", "cat"], {"a": mask((0, 1, 9))})
    (root / "labels.csv").write_text("image,labels\na.jpg,cat\n")
    ds = open_dataset(root, labels=root / "labels.csv")
    assert ds.records[0].has_truth
    with pytest.raises(DatasetError, match=r"values \[9\] are neither classes 0..1 nor ignore 255"):
        ds.truth("a")


@pytest.mark.parametrize(
    ("name", "text", "match", "options"),
    [
        ("classes.txt", "cat\n\ndog\n", "empty class name at index", {}),
        ("classes.txt", "cat\ndog\ncat\n", "duplicate class names", {}),
        ("classes.txt", "\n\n", "no class names", {}),
        ("classes.txt", "background\ncat\n_background_\n", "several background classes", {}),
        ("classes.txt", "background\ncat\n", "background=False", {"background": False}),
        ("classes.json", '{"0": "cat"}', "JSON list of class names", {}),
        ("classes.json", "[\"cat\", ", "invalid JSON", {}),
    ],
)
def test_bad_class_list_is_a_one_line_error(tmp_path, name, text, match, options):
    root = make_masks(tmp_path / "ds", None, {"a": mask((0, 1))})
    (root / name).write_text(text)
    one_line_error(match, root, **options)


def test_class_list_given_in_the_spec_and_class_file_problems(tmp_path):
    root = make_masks(tmp_path / "ds", ["background", "cat"], {"a": mask((0, 1))})
    (root / "classes.json").write_text('["background", "cat"]')
    one_line_error("both classes.txt and classes.json", root)
    listed = open_dataset(DatasetSpec.from_dict({"path": root, "format": "masks", "classes": ["bg", "dog"]}))
    assert listed.class_names == ["background", "bg", "dog"] and listed.records[0].labels == (1, 2)
    (root / "classes.json").unlink()
    (root / "classes.txt").unlink()
    assert detect_format(root) == "folder"  # images/ and masks/ without a class list are a plain folder
    one_line_error("no class list", root, format="masks")
    one_line_error("class list file not found", root, format="masks", classes=root / "nope.txt")


def test_two_images_of_one_stem_are_an_error(tmp_path):
    root = make_masks(tmp_path / "ds", ["background", "cat"], {"a": mask((0, 1))})
    save(root / "images" / "a.png", photo())
    one_line_error("share the id 'a'", root)


def test_fingerprint_follows_the_class_list_not_only_the_files(tmp_path):
    root = make_masks(tmp_path / "ds", ["background", "cat", "dog"], {"a": mask((0, 1)), "b": mask((1, 0))})
    (root / "labels.csv").write_text("image,labels\na.jpg,cat\nb.jpg,dog\n")
    with_bg = open_dataset(root, labels=root / "labels.csv")
    fp = with_bg.fingerprint(tmp_path / "h.json")
    assert fp == open_dataset(root, labels=root / "labels.csv").fingerprint(tmp_path / "h.json")
    (root / "classes.txt").write_text("cat\ndog\n")  # same files, names and labels; other truth
    without = open_dataset(root, labels=root / "labels.csv")
    assert without.class_names == with_bg.class_names and without.classes.source_names == ("cat", "dog")
    assert [r.labels for r in without.records] == [r.labels for r in with_bg.records]
    assert (without.truth("a") != with_bg.truth("a")).all()
    assert without.fingerprint(tmp_path / "h.json") != fp


# ----- VOC layout with another class list ---------------------------------------------------------


def make_voc_layout(root: Path, classes: str | None) -> Path:
    for image_id, values in (("img1", (0, 1, 255)), ("img2", (2, 0))):
        save(root / "JPEGImages" / f"{image_id}.jpg", photo())
        save(root / "SegmentationClass" / f"{image_id}.png", mask(values), palette=True)
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_voc_layout_reads_its_class_list(tmp_path):
    root = make_voc_layout(tmp_path / "voc", "sky\nroad\ncar\n")
    assert detect_format(root) == "voc"
    ds = open_dataset(root)
    assert ds.class_names == ["background", "sky", "road", "car"] and not ds.has_background
    assert [r.labels for r in ds.records] == [(1, 2), (1, 3)]
    t = ds.truth("img1")
    assert t[0, 0] == 1 and t[0, 4] == 2 and t[0, 8] == 255

    (root / "classes.txt").write_text("background\nroad\ncar\n")
    bg = open_dataset(root)
    assert bg.class_names == ["background", "road", "car"] and bg.has_background
    assert [r.labels for r in bg.records] == [(1,), (2,)] and bg.truth("img1")[0, 0] == 0

    (root / "labels.csv").write_text("image,labels\nimg1.jpg,car\n")
    lab = open_dataset(root, labels=root / "labels.csv")
    assert [r.labels for r in lab.records] == [(2,), None]

    (root / "classes.txt").write_text("background\nroad\n")
    skipped = open_dataset(root)  # img2 holds value 2, past the list
    assert skipped.image_ids == ["img1"] and "values [2]" in skipped.skipped[0][1]


def test_voc_layout_reads_images_of_any_type(tmp_path):
    root = make_voc_layout(tmp_path / "voc", "sky\nroad\ncar\n")
    jpgs = sorted((root / "JPEGImages").glob("*.jpg"))
    Image.open(jpgs[0]).save(jpgs[0].with_suffix(".png"))
    jpgs[0].rename(jpgs[0].with_suffix(".unused"))
    jpgs[1].rename(jpgs[1].with_suffix(".JPG"))
    ds = open_dataset(root)
    assert [r.path.name for r in ds.records] == [jpgs[0].with_suffix(".png").name, jpgs[1].with_suffix(".JPG").name]
    assert not ds.skipped


def test_voc_layout_without_a_class_list_keeps_voc_classes(tmp_path):
    root = make_voc_layout(tmp_path / "voc", None)
    ds = open_dataset(root)
    assert len(ds.class_names) == 21 and ds.class_names[1] == "aeroplane" and ds.has_background
    assert [r.labels for r in ds.records] == [(1,), (2,)]
    one_line_error("needs a class list", root, background=False)
    listed = open_dataset(root, classes=["background", "road", "car"])
    assert listed.class_names == ["background", "road", "car"]


# ----- real datasets ------------------------------------------------------------------------------


def mask_labels(ds, image_id: str) -> tuple[int, ...]:
    m = np.asarray(Image.open(ds.root / "masks" / f"{image_id}.png"))
    return tuple(int(v) + 1 for v in np.unique(m) if v != 255)


def test_msrc21_reads_without_background_and_void_as_ignore():
    if not MSRC21.is_dir():
        pytest.skip(f"{MSRC21} not present")
    ds = open_dataset(MSRC21)
    assert detect_format(MSRC21) == "masks" and len(ds) == 295 and ds.skipped == []
    assert ds.class_names == ["background", *MSRC21_CLASSES] and len(ds.classes.source_names) == 21
    assert not ds.has_background and all(r.has_truth for r in ds.records)
    for r in ds.records:
        assert r.labels == mask_labels(ds, r.image_id), r.image_id
    with_file = open_dataset(MSRC21, labels=MSRC21 / "labels.csv")
    assert [r.labels for r in with_file.records] == [r.labels for r in ds.records]
    void = 0
    for image_id in ds.image_ids[::30]:
        m = np.asarray(Image.open(MSRC21 / "masks" / f"{image_id}.png"))
        t = ds.truth(image_id)
        assert t.shape == m.shape and (t[m == 255] == ds.ignore_index).all() and (t[m != 255] == m[m != 255] + 1).all()
        void += int((m == 255).sum())
    assert void > 0


def test_camvid_reads_without_background():
    if not CAMVID.is_dir():
        pytest.skip(f"{CAMVID} not present")
    ds = open_dataset(CAMVID)
    assert len(ds) == 123 and ds.skipped == [] and len(ds.class_names) == 12 and not ds.has_background
    assert ds.class_names[1] == "sky" and ds.class_names[-1] == "bicyclist"
    for r in ds.records[::20]:
        assert r.labels == mask_labels(ds, r.image_id)
        assert 0 not in ds.truth(r.image_id)


def test_options_of_other_formats_are_refused_not_ignored():
    sample = Path(__file__).resolve().parents[1] / "maskbank" / "sample" / "coco"
    for option in (dict(classes=["a"]), dict(ignore_index=3)):
        with pytest.raises(DatasetError, match=f"{next(iter(option))} applies to .* not coco"):
            open_dataset(sample, split="train2017", **option)
    with pytest.raises(DatasetError, match="background applies to masks and voc and coco datasets only, not folder"):
        open_dataset(sample / "train2017", background=False)


def test_coco_without_background_reads_unannotated_pixels_as_ignore():
    sample = Path(__file__).resolve().parents[1] / "maskbank" / "sample" / "coco"
    plain = open_dataset(sample, split="train2017")
    scene = open_dataset(sample, split="train2017", background=False)
    assert plain.has_background and not scene.has_background and scene.class_names == plain.class_names
    assert scene.fingerprint() != plain.fingerprint()
    image_id = plain.image_ids[0]
    a, b = plain.truth(image_id), scene.truth(image_id)
    assert (a == 0).any() and np.array_equal(b == scene.ignore_index, (a == 0) | (a == plain.ignore_index))
    assert np.array_equal(a[a != 0], b[a != 0])
