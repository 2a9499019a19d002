"""``maskbank export`` and the ``maskbank-export`` flow on a store written with the store API: two bundled
COCO images, and a folder dataset (VOC's classes) of EXIF-rotated photos, one over the working-size bound.
Label versions are painted from their proposals by the writer the stages use. Every export is read back
(pycocotools, maskbank's COCO and VOC readers, PIL) and compared, pixel for pixel, with the stored label
maps brought to each image file's size and orientation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps
from typer.testing import CliRunner

from maskbank.flows.stages.labels import LabelVersionWriter
from maskbank.storage.datasets import DatasetSpec, VOC_CLASSES, image_size, load_rgb, open_dataset, working_size
from maskbank.storage.datasets.coco import write_coco_subset
from maskbank.storage.datasets.hashing import sha256_file
from maskbank.storage.export import ExportError, ExportOptions, plan_export, write_export
from maskbank.storage.export.files import MARKER, TEMPORARY, write_atomic
from maskbank.storage.layout import image_key
from maskbank.storage.store import Store
from maskbank.storage.versions import publish_version, version_id
from maskbank.tasks import rle
from maskbank.tasks.export import ignore_index, resize_nearest, to_file_frame, undo_orientation
from maskbank.tasks.metrics import fit_to_truth
from maskbank.tasks.paint import owner_labels, paint_owner
from maskbank.tasks.paint import paint_by_score

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # pycocotools

COCO_IMAGES = ["000000184324", "000000208901"]
PK = "p" * 24
DOG, CAT, PERSON = (VOC_CLASSES.index(n) + 1 for n in ("dog", "cat", "person"))
TURNED = (160, 240)  # stored height, width of the small photo; shown turned (EXIF 6)
BIG = (1800, 2400)  # stored size of the photo over the working-size bound; shown turned (EXIF 8)


@dataclass
class Built:
    store: Path
    coco_ann: Path
    seeds: str
    bank: str
    predictions: str
    folder_seeds: str
    proposals: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # image key -> masks, labels, scores
    coco_keys: dict[str, str]
    folder_keys: dict[str, str]
    folder_paths: dict[str, Path]


def _rect(hw, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def _keys(ds) -> list[str]:
    """The content keys ingest gives the dataset's images."""
    out = []
    for r in ds.records:
        hw = (r.height, r.width) if r.height is not None else image_size(r.path, exif_transpose=ds.exif_transpose)
        out.append(image_key(sha256_file(r.path), ds.exif_transpose, hw))
    return out


def _photo(path: Path, hw: tuple[int, int], orientation: int) -> None:
    """A JPEG with a red and a blue block, stored at ``hw`` with the EXIF ``orientation``."""
    h, w = hw
    a = np.full((h, w, 3), 128, np.uint8)
    a[h // 8 : h // 2, w // 8 : w // 2] = (230, 20, 20)
    a[h // 2 : 7 * h // 8, w // 2 : 7 * w // 8] = (20, 20, 230)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(a).save(path, format="JPEG", quality=95, exif=exif)


def _red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)


def _blue(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 2] > 180) & (rgb[..., 0] < 90) & (rgb[..., 1] < 90)


def _version(st: Store, kind: str, params: dict, parents: list[str], fps: list[str], num_classes: int,
             items: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]], nms_iou: float | None) -> str:
    """A label version published as the stages publish one: each map painted from its proposals."""
    vid = version_id(kind, params, parents, fps, code_version="test")
    writer = LabelVersionWriter(st, kind, vid, PK, num_classes, nms_iou)
    for key, image_id, _, labels, scores in sorted(items):
        writer.add(key, image_id, labels, scores)
    return writer.publish(params, parents, fps, "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_root) -> Built:
    tmp = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(7)
    st = Store.open(str(tmp / "store.mb"))
    proposals = {}

    ann = write_coco_subset(sample_root, "val2017", tmp / "coco", COCO_IMAGES, copy_images=True)
    coco = open_dataset(DatasetSpec(path=ann))
    coco_keys = dict(zip(coco.image_ids, _keys(coco)))
    coco_fp = st.write_manifest(coco, [coco_keys[i] for i in coco.image_ids], tmp / "hashes.json")
    seeds, predictions = [], []
    for r in coco.records:
        truth = coco.truth(r.image_id)
        hw = truth.shape
        present = [int(c) for c in np.unique(truth) if 0 < c < 255]
        masks = [truth == c for c in present]
        labels = list(present)
        h, w = hw
        for _ in range(6):  # overlapping boxes: some background, some unassigned, some a present class
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            masks.append(_rect(hw, y0, y0 + rng.integers(20, h // 2), x0, x0 + rng.integers(20, w // 2)))
            labels.append(int(rng.choice(present + [0, -1])))
        masks.append(masks[0] & _rect(hw, 0, h, 0, w // 2 + 3))  # a near copy: NMS drops it in predictions
        labels.append(labels[0])
        masks.append(_rect(hw, h - 6, h, 0, w))  # a background strip: covered, left background
        labels.append(0)
        masks, labels = np.stack(masks), np.array(labels, np.int32)
        scores = rng.permutation(len(labels)).astype(np.float32) / len(labels) + 0.01
        key = coco_keys[r.image_id]
        proposals[key] = (masks, labels, scores)
        st.write_proposals(PK, [st.proposals_output(key, rle.encode(masks), image_hw=hw)])
        seeds.append((key, r.image_id, masks, labels, scores))
        predictions.append((key, r.image_id, masks, labels, scores[::-1].copy()))
    n = len(coco.class_names)
    seeds_id = _version(st, "pseudo_labels", {"seed": {"rounds": 0}, "proposals": PK}, [], [coco_fp], n, seeds, None)
    bank = publish_version(st, "bank", {"features": "f" * 24}, [seeds_id], [coco_fp], code_version="test", arrays={
        "vectors": np.zeros((1, 4), np.float32), "labels": np.zeros(1, np.int32), "prototype_image": np.zeros(1, np.int32),
        "image_key": np.array(sorted(coco_keys.values())), "class_name": np.array(coco.class_names)},
        dims={"vectors": ("prototype", "channel"), "labels": ("prototype",), "prototype_image": ("prototype",),
              "image_key": ("image",), "class_name": ("class",)}).id
    pred_id = _version(st, "predictions", {"retrieve": {"nms_iou": 0.4}, "proposals": PK}, [bank], [coco_fp], n,
                       predictions, 0.4)

    photos = tmp / "photos"
    photos.mkdir()
    _photo(photos / "turned.jpg", TURNED, 6)
    _photo(photos / "big.jpg", BIG, 8)
    folder = open_dataset(DatasetSpec(path=photos, format="folder", classes=VOC_CLASSES))
    folder_keys = dict(zip(folder.image_ids, _keys(folder)))
    folder_fp = st.write_manifest(folder, [folder_keys[i] for i in folder.image_ids], tmp / "hashes.json")
    items = []
    for r in folder.records:
        shown = load_rgb(r.path)  # the shown orientation, at the working size
        hw = shown.shape[:2]
        h, w = hw
        masks = np.stack([_red(shown), _blue(shown), _rect(hw, 0, h // 3, 0, w), _rect(hw, h // 4, h // 2, 0, w),
                          _rect(hw, 0, h, 0, w // 10), _rect(hw, 0, h // 5, 0, w // 5)])
        labels = np.array([DOG, CAT, PERSON, 0, -1, PERSON], np.int32)
        scores = np.array([0.9, 0.8, 0.5, 0.95, 0.3, 0.2], np.float32)
        key = folder_keys[r.image_id]
        proposals[key] = (masks, labels, scores)
        st.write_proposals(PK, [st.proposals_output(key, rle.encode(masks), image_hw=hw)])
        items.append((key, r.image_id, masks, labels, scores))
    folder_seeds = _version(st, "pseudo_labels", {"seed": {"rounds": 1}, "proposals": PK}, [], [folder_fp],
                            len(folder.class_names), items, None)
    return Built(Path(st.url), ann, seeds_id, bank, pred_id, folder_seeds, proposals, coco_keys, folder_keys,
                 {r.image_id: r.path for r in folder.records})


def _export(built: Built, out: Path, version: str | None, **options):
    st = Store.open(built.store, create=False)
    return write_export(plan_export(st, out, version, ExportOptions(**options)))


def _stored(built: Built, version: str, key: str) -> np.ndarray:
    return Store.open(built.store, create=False, version=version).read_label_map(version, key)


def _expected(built: Built, version: str, key: str, path: Path, exif: bool) -> np.ndarray:
    """The stored label map at the file's size and in its stored orientation, checked against PIL's own
    EXIF turning: turned as the dataset shows the file, it is the stored map scaled up."""
    with Image.open(path) as im:
        hw, orientation = (im.height, im.width), (im.getexif().get(ExifTags.Base.Orientation, 1) if exif else 1)
    stored = _stored(built, version, key)
    expected = to_file_frame(stored, hw, orientation)
    turned = Image.fromarray(expected)
    turned.getexif()[ExifTags.Base.Orientation] = orientation
    shown = np.asarray(ImageOps.exif_transpose(turned))
    assert np.array_equal(shown, resize_nearest(stored, shown.shape))
    return expected


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _cli(*args):
    from maskbank.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# ----- pure per-image computation ------------------------------------------------------------------------


@pytest.mark.parametrize("nms_iou", [None, 0.4])
def test_paint_owner_is_the_painting_of_paint_by_score(nms_iou):
    rng = np.random.default_rng(3)
    for _ in range(20):
        n, hw = int(rng.integers(0, 12)), (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        masks = rng.random((n, *hw)) < rng.random((n, 1, 1))
        labels = rng.integers(-1, 5, n).astype(np.int32)
        scores = rng.choice([0.1, 0.5, 0.9], n) if n % 2 else rng.random(n)  # ties too
        owner = paint_owner(masks, labels, scores, nms_iou=nms_iou, min_area=3)
        painted = paint_by_score(masks, labels, scores, nms_iou=nms_iou, min_area=3, num_classes=5)
        assert np.array_equal(owner_labels(owner, labels, 5), painted)
        assert (owner >= -1).all() and (labels[owner[owner >= 0]] > 0).all()  # painted by a class


@pytest.mark.parametrize("orientation", range(1, 9))
def test_undo_orientation_inverts_pils_exif_transpose(orientation):
    stored = np.arange(35, dtype=np.uint8).reshape(5, 7)
    im = Image.fromarray(stored)
    im.getexif()[ExifTags.Base.Orientation] = orientation
    shown = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(undo_orientation(shown, orientation), stored)
    assert to_file_frame(shown, stored.shape, orientation).shape == stored.shape


def test_resize_nearest_scales_as_the_evaluation_does():
    small = np.random.default_rng(0).integers(0, 9, (37, 51)).astype(np.uint8)
    full = (80, 110)
    fitted, _ = fit_to_truth(small, np.zeros(full, np.uint8), full, small.shape)
    assert np.array_equal(resize_nearest(small, full), fitted)


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    def half(tmp: Path) -> None:
        tmp.write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "a.png", half)
    assert list(tmp_path.iterdir()) == []


def test_ignore_is_255_then_65535():
    assert ignore_index(81) == 255 and ignore_index(255) == 255 and ignore_index(256) == 65535


def test_painting_again_gives_every_stored_label_map(built):
    """The painting an export reads each pixel's proposal from is the one the version stored."""
    for vid, nms, keys in ((built.seeds, None, built.coco_keys), (built.predictions, 0.4, built.coco_keys),
                           (built.folder_seeds, None, built.folder_keys)):
        for key in keys.values():
            masks, labels, scores = built.proposals[key]
            scores = scores[::-1].copy() if vid == built.predictions else scores
            stored = _stored(built, vid, key)
            assert np.array_equal(owner_labels(paint_owner(masks, labels, scores, nms_iou=nms), labels, 81), stored)


# ----- formats, read back --------------------------------------------------------------------------------


def test_voc_export_equals_the_stored_label_maps(built, tmp_path):
    out = tmp_path / "voc"
    result = _export(built, out, built.seeds, format="voc")
    assert (result.images, result.skipped, result.split) == (2, [], "pseudo_labels")
    coco = open_dataset(DatasetSpec(path=built.coco_ann))
    assert (out / "classes.txt").read_text().splitlines() == coco.class_names
    assert (out / "ImageSets/Segmentation/pseudo_labels.txt").read_text().split() == COCO_IMAGES
    for image_id in COCO_IMAGES:
        with Image.open(out / "SegmentationClass" / f"{image_id}.png") as im:
            assert im.mode == "P"
            assert im.getpalette()[3 * 15 : 3 * 16] == [192, 128, 128]  # VOC's colour of class 15
            got = np.asarray(im)
        key = built.coco_keys[image_id]
        assert np.array_equal(got, _stored(built, built.seeds, key))
        link = out / "JPEGImages" / f"{image_id}.jpg"
        assert link.is_symlink() and link.resolve() == coco.record(image_id).path.resolve()


def test_voc_export_reads_back_with_the_voc_reader(built, tmp_path):
    """COCO's 81 classes in a VOC layout: the VOC reader takes them from classes.txt."""
    out = tmp_path / "voc"
    _export(built, out, built.seeds, format="voc", split="train")
    try:
        ds = open_dataset(DatasetSpec(path=out, format="voc", split="train"))
    except TypeError:
        pytest.skip("needs a VOC reader with a class list")
    if ds.class_names != (out / "classes.txt").read_text().splitlines():
        pytest.skip("needs a VOC reader with a class list")
    assert sorted(ds.image_ids) == COCO_IMAGES
    for image_id in COCO_IMAGES:
        assert np.array_equal(ds.truth(image_id), _stored(built, built.seeds, built.coco_keys[image_id]))


def test_rotated_and_large_photos_export_in_their_files_pixel_frame(built, tmp_path):
    """The folder dataset applies EXIF orientation and one photo is over the working-size bound: the
    exported masks have each file's stored size and line up with its stored pixels, and the VOC reader
    (VOC's classes; it reads stored pixels) gets them back as truth of the right size."""
    out = tmp_path / "voc"
    result = _export(built, out, built.folder_seeds, format="voc", images="copy")
    assert result.images == 2 and result.skipped == []
    ds = open_dataset(DatasetSpec(path=out, format="voc", split="pseudo_labels"))
    assert ds.class_names == ["background", *VOC_CLASSES]
    for image_id, stored_hw in (("turned.jpg", TURNED), ("big.jpg", BIG)):
        path = built.folder_paths[image_id]
        key = built.folder_keys[image_id]
        got = _png(out / "SegmentationClass" / f"{Path(image_id).stem}.png")
        assert got.shape == stored_hw and image_size(path, exif_transpose=False) == stored_hw
        assert np.array_equal(got, _expected(built, built.folder_seeds, key, path, exif=True))
        assert np.array_equal(ds.truth(Path(image_id).stem), got)
        pixels = load_rgb(path, exif_transpose=False, max_pixels=None)  # as the file stores them
        agree = np.mean((got == DOG) == _red(pixels))
        assert agree == 1.0 if image_id == "turned.jpg" else agree > 0.995
        copied = out / "JPEGImages" / image_id
        assert not copied.is_symlink() and copied.read_bytes() == path.read_bytes()
    assert _stored(built, built.folder_seeds, built.folder_keys["big.jpg"]).shape == working_size(BIG[::-1])


def test_coco_export_keeps_the_sources_ids_and_reads_back(built, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco"
    _export(built, out, built.seeds, format="coco", split="val2017")
    source = json.loads(built.coco_ann.read_text())
    exported = COCO(str(out / "annotations/instances_val2017.json"))
    assert exported.dataset["categories"] == sorted(source["categories"], key=lambda c: c["id"])
    by_name = {im["file_name"]: im for im in source["images"]}
    coco = open_dataset(DatasetSpec(path=built.coco_ann))
    position = {c["id"]: i for i, c in enumerate(exported.dataset["categories"], start=1)}
    for im in exported.dataset["images"]:
        src = by_name[im["file_name"]]
        assert (im["id"], im["height"], im["width"]) == (src["id"], src["height"], src["width"])
        stored = _stored(built, built.seeds, built.coco_keys[Path(im["file_name"]).stem])
        rebuilt = np.zeros_like(stored)
        anns = exported.loadAnns(exported.getAnnIds(imgIds=[im["id"]]))
        assert len(anns) == len(set(np.unique(stored)) - {0})  # one per class present
        for a in anns:
            mask = exported.annToMask(a).astype(bool)
            assert not rebuilt[mask].any() and a["area"] == mask.sum() and "score" not in a
            rebuilt[mask] = position[a["category_id"]]
        assert np.array_equal(rebuilt, stored)
    back = open_dataset(out)  # maskbank's COCO reader: annotations/ + val2017/
    assert back.class_names == coco.class_names and sorted(back.image_ids) == COCO_IMAGES
    for image_id in COCO_IMAGES:
        assert np.array_equal(back.truth(image_id), _stored(built, built.seeds, built.coco_keys[image_id]))


def test_coco_instances_are_the_painted_proposals_with_their_scores(built, tmp_path):
    out = tmp_path / "coco"
    _export(built, out, built.predictions, format="coco", instances=True, images="none")
    data = json.loads((out / "annotations/instances_predictions.json").read_text())
    assert not (out / "predictions").exists()
    ids = {im["file_name"]: im["id"] for im in data["images"]}
    category = [c["id"] for c in data["categories"]]  # the source's ids, by class index - 1
    for image_id in COCO_IMAGES:
        key = built.coco_keys[image_id]
        masks, labels, scores = built.proposals[key]
        scores = scores[::-1].copy()  # the predictions' scores
        owner = paint_owner(masks, labels, scores, nms_iou=0.4)
        anns = [a for a in data["annotations"] if a["image_id"] == ids[f"{image_id}.jpg"]]
        assert sorted(a["score"] for a in anns) == sorted(float(scores[p]) for p in set(np.unique(owner)) - {-1})
        stored = _stored(built, built.predictions, key)
        rebuilt = np.zeros_like(stored)
        for a in anns:
            mask = rle.decode([a["segmentation"]], stored.shape)[0]
            p = int(np.flatnonzero(np.isclose(scores, a["score"]))[0])
            assert np.array_equal(mask, owner == p) and a["category_id"] == category[labels[p] - 1]
            rebuilt[mask] = labels[p]
        assert np.array_equal(rebuilt, stored)


def test_coco_export_of_a_folder_dataset_numbers_images_and_classes(built, tmp_path):
    out = tmp_path / "coco"
    _export(built, out, built.folder_seeds, format="coco")
    data = json.loads((out / "annotations/instances_pseudo_labels.json").read_text())
    assert [(im["id"], im["file_name"], im["height"], im["width"]) for im in data["images"]] == [
        (1, "big.jpg", *BIG), (2, "turned.jpg", *TURNED)]
    assert [(c["id"], c["name"]) for c in data["categories"]] == list(enumerate(VOC_CLASSES, start=1))
    assert (out / "pseudo_labels" / "big.jpg").is_symlink()


def test_png_export_reads_back(built, tmp_path):
    out = tmp_path / "png"
    _export(built, out, built.folder_seeds, format="png")
    assert (out / "classes.txt").read_text().splitlines() == ["background", *VOC_CLASSES]
    record = json.loads((out / MARKER).read_text())
    assert (record["version"], record["format"], record["ignore_index"]) == (built.folder_seeds, "png", 255)
    for image_id in ("big.jpg", "turned.jpg"):
        with Image.open(out / "masks" / f"{Path(image_id).stem}.png") as im:
            assert im.mode == "L"
            got = np.asarray(im)
        path = built.folder_paths[image_id]
        assert np.array_equal(got, _expected(built, built.folder_seeds, built.folder_keys[image_id], path, exif=True))
        assert (out / "images" / image_id).resolve() == path.resolve()


def test_png_export_reads_back_with_the_masks_reader(built, tmp_path):
    out = tmp_path / "png"
    _export(built, out, built.folder_seeds, format="png")
    pytest.importorskip("maskbank.storage.datasets.masks", reason="needs the masks dataset reader")
    ds = open_dataset(DatasetSpec(path=out, format="masks"))
    assert sorted(ds.image_ids) == ["big", "turned"] and ds.class_names == ["background", *VOC_CLASSES]
    for image_id in ds.image_ids:
        assert np.array_equal(ds.truth(image_id), _png(out / "masks" / f"{image_id}.png"))


def test_png_past_255_classes_is_16_bit(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photos / "a.png")
    names = [f"c{i}" for i in range(300)]
    ds = open_dataset(DatasetSpec(path=photos, format="folder", classes=names))
    st = Store.open(str(tmp_path / "store.mb"))
    key = _keys(ds)[0]
    fp = st.write_manifest(ds, [key], tmp_path / "hashes.json")
    masks = np.stack([_rect((20, 30), 0, 10, 0, 30), _rect((20, 30), 5, 20, 0, 10)])
    st.write_proposals(PK, [st.proposals_output(key, rle.encode(masks), image_hw=(20, 30))])
    vid = _version(st, "pseudo_labels", {"proposals": PK}, [], [fp], 301,
                   [(key, "a.png", masks, np.array([299, 7], np.int32), np.array([0.2, 0.9], np.float32))], None)
    out = tmp_path / "png"
    write_export(plan_export(st, out, None, ExportOptions(format="png", min_score=0.5)))
    with Image.open(out / "masks/a.png") as im:
        assert im.mode in ("I;16", "I")
        got = np.asarray(im)
    stored = st.read_label_map(vid, key)
    assert stored.dtype == np.uint16
    assert np.array_equal(got, np.where(stored == 299, 65535, stored))
    with pytest.raises(ExportError, match="255 classes"):
        plan_export(st, tmp_path / "voc", None, ExportOptions(format="voc"))


# ----- ignore: scores and coverage -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["seeds", "predictions"])
def test_min_score_and_unlabelled_write_ignore(built, tmp_path, version):
    vid = getattr(built, version)
    nms = 0.4 if version == "predictions" else None
    threshold = 0.5
    out = tmp_path / "png"
    _export(built, out, vid, format="png", min_score=threshold, unlabelled="ignore")
    for image_id in COCO_IMAGES:
        key = built.coco_keys[image_id]
        masks, labels, scores = built.proposals[key]
        scores = scores[::-1].copy() if version == "predictions" else scores
        stored = _stored(built, vid, key)
        sure = scores >= threshold  # painting only the proposals at or over the threshold paints exactly their pixels
        kept = paint_by_score(masks[sure], labels[sure], scores[sure], nms_iou=nms, num_classes=81)
        expected = np.where(kept > 0, kept, np.where(stored > 0, 255, 0))
        expected[~masks.any(axis=0)] = 255
        got = _png(out / "masks" / f"{image_id}.png")
        assert np.array_equal(got, expected)
        assert (got == 255).any() and (got == 0).any() and (got > 0).any()
    _export(built, out, vid, format="png", unlabelled="background")  # the same folder, other options: replaced
    assert np.array_equal(_png(out / "masks" / f"{COCO_IMAGES[0]}.png"), _stored(built, vid, built.coco_keys[COCO_IMAGES[0]]))


# ----- versions, folders and errors ----------------------------------------------------------------------


def test_default_version_is_the_newest_pseudo_labels(built, tmp_path):
    st = Store.open(built.store, create=False)
    assert plan_export(st, tmp_path / "x", None, ExportOptions(format="png")).version == built.folder_seeds
    assert not (tmp_path / "x").exists()  # planning writes nothing


def test_cli_exports_and_reports(built, tmp_path):
    out = tmp_path / "cli"
    result = _cli("export", built.store, built.predictions[:8], "--format", "voc", "--out", out, "--split", "val")
    assert result.exit_code == 0, result.output
    assert f"exported 2 images of predictions version {built.predictions} as voc (split val)" in result.output
    assert (out / "ImageSets/Segmentation/val.txt").read_text().split() == COCO_IMAGES
    result = _cli("export", built.store, "--format", "png", "--out", tmp_path / "default")
    assert result.exit_code == 0 and f"pseudo_labels version {built.folder_seeds}" in result.output
    assert "--min-score" in _cli("export", "--help").output


@pytest.mark.parametrize("case", ["bank", "missing store", "no such version", "format", "instances", "images",
                                  "split", "not an export", "another format"])
def test_errors_are_one_line_before_any_work(built, tmp_path, case):
    out = tmp_path / "out"
    args = [built.store, "--format", "png", "--out", out]
    if case == "bank":
        args.insert(1, built.bank)
    elif case == "missing store":
        args[0] = tmp_path / "nowhere"
    elif case == "no such version":
        args.insert(1, "0123456789abcdef")
    elif case == "format":
        args[2] = "tiff"
    elif case == "instances":
        args.append("--instances")
    elif case == "images":
        args += ["--images", "hardlink"]
    elif case == "split":
        args += ["--split", "../up"]
    elif case == "not an export":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "another format":
        _export(built, out, built.seeds, format="coco")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = _cli("export", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if case == "bank":
        assert "bank version" in lines[0]


def test_rerun_completes_a_killed_export_and_keeps_what_was_written(built, tmp_path):
    out = tmp_path / "png"
    _export(built, out, built.seeds, format="png")
    done, lost = (out / "masks" / f"{i}.png" for i in COCO_IMAGES)
    kept_mtime = done.stat().st_mtime_ns
    lost_bytes = lost.read_bytes()
    lost.unlink()  # as if killed after the first image: the second never got its final name
    leftover = out / "masks" / f"{TEMPORARY}0123-{lost.name}"
    leftover.write_bytes(lost_bytes[:100])
    result = _export(built, out, built.seeds, format="png")
    assert result.images == 2
    assert lost.read_bytes() == lost_bytes and not leftover.exists()
    assert done.stat().st_mtime_ns == kept_mtime  # complete files of the same export are kept
    os.utime(done, ns=(0, 0))
    _export(built, out, built.predictions, format="png")  # another export of the format replaces this one
    assert done.stat().st_mtime_ns > 0
    assert json.loads((out / MARKER).read_text())["version"] == built.predictions


def test_an_image_whose_file_changed_is_skipped_with_the_reason(built, tmp_path, sample_root):
    root = tmp_path / "coco"
    ann = write_coco_subset(sample_root, "val2017", root, COCO_IMAGES, copy_images=True)
    ds = open_dataset(DatasetSpec(path=ann))
    st = Store.open(str(tmp_path / "store.mb"))
    keys = _keys(ds)
    fp = st.write_manifest(ds, keys, tmp_path / "hashes.json")
    items = []
    for r, key in zip(ds.records, keys):
        m = _rect((r.height, r.width), 0, 10, 0, 10)[None]
        st.write_proposals(PK, [st.proposals_output(key, rle.encode(m), image_hw=(r.height, r.width))])
        items.append((key, r.image_id, m, np.array([1], np.int32), np.array([1.0], np.float32)))
    _version(st, "pseudo_labels", {"proposals": PK}, [], [fp], len(ds.class_names), items, None)
    Image.new("RGB", (50, 40)).save(ds.records[0].path, format="JPEG")  # replaced by a smaller picture
    result = write_export(plan_export(st, tmp_path / "out", None, ExportOptions(format="png")))
    assert result.images == 1 and [i for i, _ in result.skipped] == [ds.records[0].image_id]
    assert "changed since it was labelled" in result.skipped[0][1]


def test_export_flow(built, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from maskbank.flows.export import export_labels

    out = tmp_path / "flow"
    result = export_labels(store=str(built.store), out=str(out), options=ExportOptions(format="voc"),
                           version=built.seeds)
    assert (result["images"], result["version"], result["format"], result["skipped"]) == (2, built.seeds, "voc", [])
    assert sorted(p.name for p in (out / "SegmentationClass").iterdir()) == [f"{i}.png" for i in COCO_IMAGES]
    with get_client(sync_client=True) as client:
        bars = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-export"])))
    assert bars and bars[-1].data == 100.0  # the run page's progress bar, full


def test_without_background_shifts_classes_and_ignores_the_placeholder():
    from maskbank.tasks.export import without_background

    stored = np.array([[0, 1, 2, 255]], np.uint8)
    out = without_background(stored, 255, 2)
    assert out.dtype == np.uint8 and out.tolist() == [[255, 0, 1, 255]]
    wide = np.array([[0, 256, 65535]], np.uint16)  # 256 real classes: still 16-bit, ignore 65535
    assert without_background(wide, 65535, 256).tolist() == [[65535, 255, 65535]]
    narrow = np.array([[0, 1, 255, 65535]], np.uint16)  # 255 real classes: back to 8 bits, ignore 255
    out = without_background(narrow, 65535, 255)
    assert out.dtype == np.uint8 and out.tolist() == [[255, 0, 254, 255]]


# ----- html: a page to review the labels ------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000",
                  "--window-size=1400,3000", "--allow-file-access-from-files"]


def _gallery(out: Path) -> dict:
    text = (out / "gallery.js").read_text(encoding="utf-8")
    prefix = "window.MASKBANK_GALLERY = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix):].strip().removesuffix(";"))


def test_html_cards_describe_each_image(built, tmp_path):
    from maskbank.tasks.render import label_palette, overlay_labels, thumbnail, thumbnail_size

    out = tmp_path / "html"
    result = _export(built, out, built.seeds, format="html", images="copy")
    assert result.images == 2 and result.notes == [] and result.skipped == []
    data = _gallery(out)
    coco = open_dataset(DatasetSpec(path=built.coco_ann))
    assert [c["name"] for c in data["cards"]] == sorted(COCO_IMAGES) and data["background"]
    assert [c["name"] for c in data["classes"]] == coco.class_names[1:]  # background is the photo, not a class
    assert data["classes"][0]["color"] == "#%02x%02x%02x" % tuple(label_palette(2)[1])
    for card in data["cards"]:
        key = built.coco_keys[card["id"]]
        stored = _stored(built, built.seeds, key)
        masks, labels, scores = built.proposals[key]
        owner = paint_owner(masks, labels, scores, nms_iou=None)  # seeding paints without NMS
        assert card["confidence"] == pytest.approx(float(scores[owner[owner >= 0]].mean()), abs=1e-4)
        values, counts = np.unique(stored, return_counts=True)
        shares = {int(v): n / stored.size for v, n in zip(values, counts) if v != 0}
        assert {v: s for v, s in card["classes"]} == pytest.approx(shares, abs=1e-4)
        assert [s for _, s in card["classes"]] == sorted((s for _, s in card["classes"]), reverse=True)
        truth = coco.truth(card["id"])
        both = truth != coco.ignore_index
        assert card["truth"] and card["disagreement"] == pytest.approx(float((stored[both] != truth[both]).mean()), abs=1e-4)
        assert card["labels"] == [coco.class_names[k] for k in coco.record(card["id"]).labels]
        def jpeg(folder: str) -> np.ndarray:
            with Image.open(out / folder / f"{card['name']}.jpg") as im:
                return np.asarray(im.convert("RGB"))

        photo = jpeg("thumbs")
        full = thumbnail(load_rgb(coco.record(card["id"]).path, exif_transpose=False, max_pixels=None))
        assert photo.shape == full.shape and photo.shape[:2] == thumbnail_size(stored.shape, 320)
        assert np.abs(photo.astype(int) - full).mean() < 8  # resampled another way, and JPEG
        for folder, labels_shown in (("overlays", stored), ("truth", np.where(truth == 255, 0, truth))):
            want = overlay_labels(photo, labels_shown, unlabelled=0).astype(int)
            assert np.abs(jpeg(folder).astype(int) - want).mean() < 4  # JPEG
        assert (out / "images" / f"{card['name']}.jpg").is_file()


def test_html_of_classes_without_background_colours_by_store_index(tmp_path):
    from maskbank.tasks.gallery import class_shares, colour_values, disagreement, truth_as_exported

    exported = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)  # exported values: 0 is a class (sky)
    assert colour_values(exported, 255, background=False).tolist() == [[1, 2, 0], [2, 2, 1]]
    assert colour_values(exported, 255, background=True).tolist() == [[0, 1, 0], [1, 1, 0]]
    assert class_shares(exported, 255) == [(1, pytest.approx(0.5)), (0, pytest.approx(2 / 6))]
    truth = np.array([[1, 1, 2], [2, 255, 0]], np.uint8)  # store indices: placeholder 0, ignore 255
    t = truth_as_exported(truth, 255, background=False, ignore=255, num_classes=2)
    assert t.tolist() == [[0, 0, 1], [1, 255, 255]]
    assert disagreement(exported, t, 255) == pytest.approx(1 / 3)  # labelled in both: 4 pixels, wrong: 1 ... of 3
    assert disagreement(np.full((1, 2), 255, np.uint8), np.zeros((1, 2), np.uint8), 255) is None


def _dom(page: Path, fragment: str, profile: Path) -> str:
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    run = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri() + fragment],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_html_page_renders_offline_in_chromium_and_sorts(built, tmp_path):
    import re

    out = tmp_path / "html"
    _export(built, out, built.predictions, format="html")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from the network
    cards = _gallery(out)["cards"]
    assert all(c["truth"] and c["confidence"] is not None for c in cards)
    orders = {
        "confidence": sorted(cards, key=lambda c: (c["confidence"], c["name"])),
        "confidence-desc": sorted(cards, key=lambda c: (-c["confidence"], c["name"])),
        "disagreement": sorted(cards, key=lambda c: (-c["disagreement"], c["name"])),
    }
    for sort, want in orders.items():
        dom = _dom(out / "index.html", f"#sort={sort}", tmp_path / "chromium")
        assert re.findall(r'<article class="card" data-name="([^"]+)"', dom) == [c["name"] for c in want], sort
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 3 * len(cards)  # photo, labels, truth
    assert all('data-state="loaded"' in img for img in images), images
    assert f"{len(cards)} of {len(cards)} images" in dom
    first = _gallery(out)["classes"]
    name = next(c["name"] for c in first if any(v == c["value"] for v, _ in cards[0]["classes"]))
    dom = _dom(out / "index.html", f"#class={name}", tmp_path / "chromium")
    having = [c["name"] for c in cards if any(next(k["name"] for k in first if k["value"] == v) == name for v, _ in c["classes"])]
    assert sorted(re.findall(r'<article class="card" data-name="([^"]+)"', dom)) == sorted(having)
    assert f'data-class="{name}"' in dom
