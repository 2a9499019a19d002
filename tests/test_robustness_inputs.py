"""Bad and unusual input through the main flow: unreadable items are skipped with a reason and the run goes
on; odd image modes, EXIF rotation, a 1x1 image and an empty label set are labelled; bad labels files and
a store path that is not a store stop the run with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskbank.storage.datasets import MAX_WORKING_PIXELS, DatasetError, load_rgb, open_dataset, working_size

pytestmark = [pytest.mark.real]

PHOTOS = ["000000196610", "000000204805", "000000425988", "000000278528", "000000565248"]
EXIF_ROTATE_90 = 6  # shown rotated 90 degrees clockwise


def _photo(sample: Path, i: int, long_side: int = 320) -> Image.Image:
    im = Image.open(sample / "train2017" / f"{PHOTOS[i]}.jpg").convert("RGB")
    im.thumbnail((long_side, long_side))
    return im


def _rotated_jpeg(im: Image.Image, path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90
    im.save(path, exif=exif, quality=90)


def _light_params():
    from maskbank.flows.params import EmbedParams, ProposeParams, RunParams

    return RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224), shard_size=4)


def _run(datasets, store: Path, **kwargs):
    from maskbank.flows.label import label_images
    from maskbank.flows.stages.ingest import DatasetInput

    inputs = [DatasetInput(**d) for d in datasets]
    return label_images(datasets=inputs, store=str(store), params=_light_params(), device="cpu", **kwargs)


def _label_maps(store: Path, version: str) -> dict[str, np.ndarray]:
    """Label maps of a version by source image id."""
    from maskbank.storage.layout import LABELS
    from maskbank.storage.store import Store

    st = Store.open(store, create=False)
    out = {}
    for key in st.list_items(LABELS, version):
        arrays = st.read_image(LABELS, version, key, verify=True).arrays
        out[str(arrays["source_image_id"])] = arrays["labels"]
    return out


def test_images_over_the_bound_load_at_their_working_size(tmp_path):
    a = np.zeros((1000, 2000, 3), np.uint8)
    a[:, :1000] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90
    Image.fromarray(a).save(tmp_path / "wide.jpg", exif=exif, quality=90)
    Image.fromarray(a).save(tmp_path / "wide.png")
    h, w = working_size((1000, 2000), max_pixels=500_000)
    assert h * w <= 500_000 and abs(w / h - 2) < 0.01
    assert load_rgb(tmp_path / "wide.png", max_pixels=500_000).shape == (h, w, 3)
    shown = load_rgb(tmp_path / "wide.jpg", max_pixels=500_000)
    assert shown.shape == (w, h, 3)  # rotated by its EXIF tag after scaling
    assert np.abs(shown[10, h // 2].astype(int) - (255, 0, 0)).max() < 40  # the left half went to the top
    assert load_rgb(tmp_path / "wide.png", max_pixels=None).shape == (1000, 2000, 3)
    assert load_rgb(tmp_path / "wide.png").shape == (1000, 2000, 3)  # under the default bound
    assert working_size((6000, 8000)) == (1732, 2309) and 1732 * 2309 <= MAX_WORKING_PIXELS


# ----- a folder of odd and broken images -----------------------------------------------------------


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, sample_root) -> Path:
    root = tmp_path_factory.mktemp("odd")
    images = root / "images"
    images.mkdir()
    _photo(sample_root, 0).convert("L").save(images / "grey.png")
    rgba = _photo(sample_root, 1).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(images / "rgba.png")
    _photo(sample_root, 2).convert("CMYK").save(images / "cmyk.jpg", quality=90)
    grey16 = np.asarray(_photo(sample_root, 3).convert("L"), np.uint16) * 257
    Image.fromarray(grey16).save(images / "sixteen.png")
    _photo(sample_root, 4).quantize(64).save(images / "palette.png")
    _rotated_jpeg(_photo(sample_root, 0), images / "rotated.jpg")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(images / "tiny.png")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    full = (sample_root / "train2017" / f"{PHOTOS[1]}.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(full[: len(full) // 2])
    rows = {"grey.png": "bicycle", "rgba.png": "person", "cmyk.jpg": "bird", "sixteen.png": "person",
            "palette.png": "", "rotated.jpg": "bicycle", "tiny.png": "bird", "corrupt.jpg": "bird",
            "truncated.jpg": "person", "gone.jpg": "person"}
    (root / "labels.csv").write_text("image,labels\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    return root


@pytest.fixture(scope="module")
def odd_run(prefect_harness, odd_folder, tmp_path_factory):
    store = tmp_path_factory.mktemp("odd-store") / "s.mb"
    # Images go through the models in batches of 3, so the unreadable one meets readable ones in a batch.
    return store, _run([{"path": str(odd_folder)}], store, batch=3)


def test_unreadable_images_are_skipped_with_reasons(odd_run):
    _, summary = odd_run
    reasons = " | ".join(why for _, why in summary.skipped)
    skipped_ids = {k for k, _ in summary.skipped}
    assert {"corrupt.jpg", "gone.jpg"} <= skipped_ids  # refused when the dataset is read
    assert "missing image file" in dict(summary.skipped)["gone.jpg"]
    assert "truncated.jpg" in reasons  # its header reads, its pixels do not: skipped by the propose stage
    assert len(summary.skipped) == 3
    assert summary.computed == {"propose": 7, "embed": 7, "pool": 7}


def test_odd_modes_rotation_tiny_and_empty_labels_are_labelled(odd_run, odd_folder):
    store, summary = odd_run
    maps = _label_maps(store, summary.pseudo_labels)
    assert set(maps) == {"grey.png", "rgba.png", "cmyk.jpg", "sixteen.png", "palette.png", "rotated.jpg", "tiny.png"}
    for image_id, labels in maps.items():
        assert labels.shape == load_rgb(odd_folder / "images" / image_id).shape[:2], image_id
    with Image.open(odd_folder / "images" / "rotated.jpg") as im:
        stored_wh = im.size
    assert maps["rotated.jpg"].shape == stored_wh  # (h, w) of the shown image = (w, h) of the stored one
    assert maps["tiny.png"].shape == (1, 1) and maps["tiny.png"][0, 0] == 0
    assert not maps["palette.png"].any()  # an empty label set: background only
    assert any(maps[i].any() for i in ("grey.png", "rgba.png", "cmyk.jpg", "sixteen.png", "rotated.jpg"))


# ----- VOC truth: unreadable, mis-sized, and EXIF-rotated photos -----------------------------------


def _voc(root: Path, sample_root: Path) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = ["good", "badpng", "wrongsize", "rotated"]
    for i, image_id in enumerate(ids):
        photo = _photo(sample_root, i)
        if image_id == "rotated":
            _rotated_jpeg(photo, root / "JPEGImages" / f"{image_id}.jpg")
        else:
            photo.save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        w, h = photo.size
        truth = np.zeros((h, w), np.uint8)
        truth[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 15  # person
        if image_id == "wrongsize":
            truth = truth[: h // 2]
        Image.fromarray(truth, mode="L").save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "SegmentationClass" / "badpng.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "labels.json").write_text(json.dumps({i: ["person"] for i in ids}))
    return root


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory, sample_root) -> Path:
    return _voc(tmp_path_factory.mktemp("voc") / "VOC", sample_root)


def test_voc_bad_truth_is_skipped_by_evaluation(prefect_harness, voc_root, tmp_path):
    summary = _run([{"path": str(voc_root), "labels": str(voc_root / "labels.json")}], tmp_path / "s.mb")
    m = summary.pseudo_label_metrics
    assert m["images"] == 2  # good and rotated
    skipped = dict(summary.skipped)
    assert set(skipped) == {"badpng", "wrongsize"}
    assert "truth cannot be read" in skipped["badpng"]
    assert "but the image is" in skipped["wrongsize"]
    assert dict(map(tuple, m["skipped"])) == skipped
    with Image.open(voc_root / "JPEGImages" / "rotated.jpg") as im:
        stored_hw = im.size[::-1]
    # VOC truth refers to the stored pixels: the label map follows them, not the EXIF rotation
    assert _label_maps(tmp_path / "s.mb", summary.pseudo_labels)["rotated"].shape == stored_hw


def test_voc_without_labels_file_skips_image_with_unreadable_truth(voc_root):
    ds = open_dataset(voc_root)
    assert dict(ds.skipped).keys() == {"badpng"} and "cannot read truth" in dict(ds.skipped)["badpng"]
    assert set(ds.image_ids) == {"good", "rotated", "wrongsize"}


# ----- errors that stop a run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, labels, message",
    [
        ("voc", '{"good": ["person"], "rotated": ["unicorn"]}', "unknown class names 'unicorn'"),
        ("coco", json.dumps({"images": [{"id": 1, "file_name": "grey.png", "height": 240, "width": 320},
                                        {"id": 1, "file_name": "rgba.png", "height": 240, "width": 320}],
                             "annotations": [], "categories": [{"id": 1, "name": "bicycle"}]}),
         "duplicate image id 1"),
        ("folder", "image,labels\ngrey.png,bicycle\n./grey.png,person\n", "duplicate image entries"),
        ("folder", "image,labels\ngrey.png,bicycle\n../secret.png,person\n", "must be relative paths"),
    ],
)
def test_bad_labels_file_stops_the_run_before_any_work(
    prefect_harness, odd_folder, voc_root, tmp_path, kind, labels, message
):
    from maskbank.storage.store import Store

    if kind == "coco":
        instances = tmp_path / "annotations" / "instances_odd.json"
        instances.parent.mkdir()
        instances.write_text(labels)
        spec = {"path": str(instances), "images": str(odd_folder / "images")}
    else:
        labels_file = tmp_path / ("labels.json" if kind == "voc" else "labels.csv")
        labels_file.write_text(labels)
        spec = {"path": str(voc_root if kind == "voc" else odd_folder), "labels": str(labels_file)}
    store = tmp_path / "s.mb"
    with pytest.raises(DatasetError, match=message):
        _run([spec], store)
    assert Store.open(store).list_groups() == []  # nothing was written


def test_not_a_store_is_refused_by_run(prefect_harness, odd_folder, tmp_path):
    from typer.testing import CliRunner

    from maskbank.cli import app

    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "holiday.jpg").write_bytes(b"keep me")
    result = CliRunner().invoke(app, ["run", "--store", str(elsewhere), "--bank", str(odd_folder)])
    assert result.exit_code != 0
    said = result.output + str(result.exception)
    assert "exists and is not a maskbank store" in said
    assert sorted(p.name for p in elsewhere.iterdir()) == ["holiday.jpg"]  # untouched
