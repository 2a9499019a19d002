"""The run report's text and the per-class IoU rows, from a hand-made run summary; the one-line warnings of
what looks wrong in its label maps; the thumbnails of its pseudo-labels, read from a small store of photos
of flat colour blocks and label maps of blocks."""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from maskbank.flows.label import RunSummary
from maskbank.flows.params import ProposeParams, RunParams
from maskbank.flows.report import (
    check_section, class_iou_rows, coverage_warnings, evaluation_report, markdown_table, named, read_thumbnails,
    run_report, score, scores_section, summary_warnings,
)
from maskbank.flows.stages.ingest import DatasetInput
from maskbank.tasks.thumbnails import SIDE, choose_images, classes_shown, labels_picture


def _metrics(images: int, miou: float, iou: dict, voc: float | None = None) -> dict:
    m = {"images": images, "classes": {"miou": miou, "miou_absent_as_zero": miou,
                                       "classes_present": sum(v is not None for v in iou.values()), "iou": iou}}
    if voc is not None:
        m["voc21"] = {"miou": voc, "classes_present": 2, "iou": {"background": voc, "person": None}}
    return m


PSEUDO = _metrics(3, 0.5, {"background": 0.8, "cat": 0.2, "dog": None, "car": None}, voc=0.61234)
PRED = _metrics(1, 0.25, {"background": 0.5, "cat": None, "dog": 0.0, "car": None})


@pytest.fixture
def summary() -> RunSummary:
    return RunSummary(
        store="runs/x.zarr", labelled="f" * 64, pseudo_labels="0123456789abcdef", bank="1123456789abcdef",
        predictions="2123456789abcdef", pseudo_label_metrics=PSEUDO, prediction_metrics=PRED,
        computed={"propose": 1, "embed": 0, "pool": 1}, skipped=[("abc", "cannot read | truncated file")],
        images={"labelled": 3, "targets": 1, "distinct": 4},
        seconds={"ingest": 0.25, "propose": 12.34, "embed": 0.0, "pool": 0.5, "seed": 0.1, "evaluate": 0.2,
                 "bank": 0.3, "retrieve": 0.4},
    )


def test_class_iou_rows_join_evaluations_and_drop_classes_absent_everywhere():
    rows = class_iou_rows({"pseudo-labels": PSEUDO, "retrieval": PRED, "none": None})
    assert rows == [
        {"class": "background", "pseudo-labels": 0.8, "retrieval": 0.5},
        {"class": "cat", "pseudo-labels": 0.2, "retrieval": None},
        {"class": "dog", "pseudo-labels": None, "retrieval": 0.0},
    ]
    assert class_iou_rows({"a": None}) == []
    assert class_iou_rows({"p": _metrics(1, 0.1, {"x": 0.123456789})}) == [{"class": "x", "p": 0.1235}]
    assert class_iou_rows({"p": PSEUDO}, subset="voc21") == [{"class": "background", "p": 0.6123}]


def test_markdown_table_escapes_cells():
    assert markdown_table(["a", "b"], [[1, "x|y\nz"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y z |"


def test_score_formats_undefined_values():
    assert (score(0.123456), score(None), score(math.nan), score(0.0)) == ("0.1235", "-", "-", "0.0000")


def test_run_report(summary):
    params = RunParams(propose=ProposeParams(points_per_side=4))
    text = run_report(summary, [DatasetInput(path="data/coco", split="train2017")],
                      [DatasetInput(path="data/val.json")], params, "cpu")
    assert text.startswith("# maskbank run report\n")
    assert "| labelled | `data/coco` | train2017 | auto |" in text
    assert "| target | `data/val.json` | - | auto |" in text
    assert "| pseudo-labels | `0123456789abcdef` |" in text and "| prototype bank | `1123456789abcdef` |" in text
    assert "| predictions | `2123456789abcdef` |" in text
    assert "| propose | 1 of 4 | 12.3 |" in text and "| embed | 0 of 4 | 0.0 |" in text
    assert "| seed | - | 0.1 |" in text and "| retrieve | - | 0.4 |" in text
    assert "| pseudo-labels | 3 | 0.5000 | 2 | 0.6123 |" in text and "| retrieval | 1 | 0.2500 | 2 | - |" in text
    assert "| cat | 0.2000 | - |" in text and "| dog | - | 0.0000 |" in text and "| car |" not in text
    assert "| `abc` | cannot read \\| truncated file |" in text
    assert "points_per_side=4" in text and "| shard_size | 8 |" in text and "| device | cpu |" in text
    assert f"Images: 3 labelled (collection `{'f' * 64}`), 1 target, 4 distinct processed." in text


def test_run_report_without_truth_or_targets(summary):
    bare = summary.model_copy(update={"predictions": None, "pseudo_label_metrics": None, "prediction_metrics": None,
                                      "skipped": [], "seconds": {"ingest": 1.0}})
    text = run_report(bare, [DatasetInput(path="imgs", format="folder", labels="labels.csv")], None, RunParams(), "auto")
    assert "No ground truth: nothing to score." in text and "Per-class IoU" not in text
    assert "predictions" not in text and "## Skipped images\n\nNone." in text
    assert "| ingest | - | 1.0 |" in text and " of 4 |" not in text
    assert scores_section({"a": None}) == ""


def test_evaluation_report():
    text = evaluation_report("s.zarr", "0123456789abcdef", "predictions", [DatasetInput(path="v.json")], PRED)
    assert "Version `0123456789abcdef` (predictions)" in text
    assert "| predictions | 1 | 0.2500 | 2 |" in text and "| dog | 0.0000 |" in text
    assert "not scored" not in text
    text = evaluation_report("s.zarr", "0123456789abcdef", "predictions", [DatasetInput(path="v.json")],
                             {**PRED, "skipped": [["42", "truth cannot be read: bad png"]]})
    assert "## Images not scored\n\n| image | reason |\n|---|---|\n| `42` | truth cannot be read: bad png |" in text


def test_reports_name_the_store_by_its_location(summary):
    from pathlib import Path

    text = run_report(summary, [DatasetInput(path="imgs")], None, RunParams(), "cpu")
    local = Path("runs/x.zarr").absolute()
    assert f"Store: `{local}` (list its versions: `maskbank versions {local}`)" in text
    assert "Label maps: `labels/<version>` in the store" in text
    remote = summary.model_copy(update={"store": "s3://bucket/runs/x?region=eu-west-1"})
    text = run_report(remote, [DatasetInput(path="imgs")], None, RunParams(), "cpu")
    assert "Store: `s3://bucket/runs/x?region=eu-west-1`" in text
    text = evaluation_report("gs://bucket/store", "0123456789abcdef", "predictions", [DatasetInput(path="v.json")], PRED)
    assert "Version `0123456789abcdef` (predictions) of store `gs://bucket/store`." in text


# ----- what looks wrong in the label maps ----------------------------------------------------------------


def _coverage(images: int, empty: list[str], missing: list[tuple[str, list[str]]], never: list[tuple[str, int]],
              empty_count: int | None = None, missing_count: int | None = None) -> dict:
    return {"images": images,
            "all_background": {"count": len(empty) if empty_count is None else empty_count, "images": empty},
            "labels_missing": {"count": len(missing) if missing_count is None else missing_count,
                               "images": [{"image": i, "classes": cs} for i, cs in missing]},
            "classes_never_painted": [{"class": c, "images": n} for c, n in never]}


NOTHING_WRONG = _coverage(6, [], [], [])
FLOWERS = _coverage(6, ["img_2.jpg", "img_5.jpg"], [("img_3.jpg", ["cat", "dog"])], [("flower", 2)])


def test_named_shows_the_first_names_and_how_many_more():
    assert named(["a", "b"]) == "a, b"
    assert named([]) == ""
    assert named([f"i{k}" for k in range(12)]) == "i0, i1, i2, i3, i4, i5, i6, i7, i8, i9 and 2 more"
    assert named(["a", "b", "c"], total=40, shown=2) == "a, b and 38 more"


def test_coverage_warnings_one_line_per_check_that_found_something():
    assert coverage_warnings("pseudo-labels", FLOWERS) == [
        "pseudo-labels: 2 of 6 labelled images are all background (no pixel of any class): img_2.jpg, img_5.jpg",
        "pseudo-labels: 1 labelled image has labels with no pixel: img_3.jpg (cat, dog)",
        "pseudo-labels: 1 class got no pixel in any image labelled with it: flower (labels 2 images)",
    ]
    one = _coverage(1, ["x"], [], [("a", 1), ("b", 1)])
    assert coverage_warnings("predictions", one) == [
        "predictions: 1 of 1 labelled image is all background (no pixel of any class): x",
        "predictions: 2 classes got no pixel in any image labelled with them: a (labels 1 image), b (labels 1 image)",
    ]
    assert coverage_warnings("pseudo-labels", NOTHING_WRONG) == []
    assert coverage_warnings("pseudo-labels", None) == []


def test_coverage_warnings_name_at_most_ten_and_count_the_rest():
    many = _coverage(5000, [f"e{k:03d}" for k in range(100)], [(f"m{k:03d}", ["dog"]) for k in range(100)], [],
                     empty_count=1234, missing_count=101)
    empty, missing = coverage_warnings("pseudo-labels", many)
    assert empty.startswith("pseudo-labels: 1234 of 5000 labelled images are all background")
    assert empty.endswith(": e000, e001, e002, e003, e004, e005, e006, e007, e008, e009 and 1224 more")
    assert missing.startswith("pseudo-labels: 101 labelled images have labels with no pixel: m000 (dog), ")
    assert missing.endswith("m009 (dog) and 91 more") and missing.count("(dog)") == 10


def test_summary_warnings_cover_pseudo_labels_then_predictions(summary):
    assert summary_warnings(summary) == []  # a summary from before the counts existed
    assert summary_warnings(summary.model_copy(update={"pseudo_label_coverage": NOTHING_WRONG})) == []
    both = summary.model_copy(update={"pseudo_label_coverage": FLOWERS,
                                      "prediction_coverage": _coverage(1, ["t.jpg"], [], [])})
    lines = summary_warnings(both)
    assert len(lines) == 4 and [w.split(":")[0] for w in lines] == ["pseudo-labels"] * 3 + ["predictions"]
    assert "t.jpg" in lines[3]


def test_run_report_says_what_to_check_only_when_something_looks_wrong(summary):
    params = RunParams()
    assert "Check these" not in run_report(summary, [DatasetInput(path="imgs")], None, params, "cpu")
    calm = summary.model_copy(update={"pseudo_label_coverage": NOTHING_WRONG, "prediction_coverage": NOTHING_WRONG})
    assert "Check these" not in run_report(calm, [DatasetInput(path="imgs")], None, params, "cpu")
    wrong = summary.model_copy(update={"pseudo_label_coverage": FLOWERS})
    text = run_report(wrong, [DatasetInput(path="imgs")], None, params, "cpu")
    top = text.split("## Datasets")[0]
    assert "## Check these\n\n- pseudo-labels: 2 of 6 labelled images are all background" in top
    assert "img\\_2.jpg, img\\_5.jpg" in top and "img\\_3.jpg (cat, dog)" in top and "flower (labels 2 images)" in top
    assert f"maskbank export {Path('runs/x.zarr').absolute()} 0123456789abcdef --format html" in top
    assert "2123456789abcdef" not in top  # the predictions look fine: no gallery of theirs


def test_check_section():
    assert check_section([]) == ""
    text = check_section(["a *b* [c]"], ["maskbank export s v --format html --out g"])
    assert text.startswith("## Check these\n\n- a \\*b\\* \\[c\\]\n")
    assert text.endswith("```\nmaskbank export s v --format html --out g\n```")
    assert "```" not in check_section(["x"])


# ----- thumbnails of the pseudo-labels -------------------------------------------------------------------

GREY, RED, BLUE = (120, 120, 120), (220, 30, 30), (30, 30, 220)
PLAIN_HW = (60, 90)  # a.png, c.png, e.png (stored as shown)
TURNED_SHOWN_HW = (300, 120)  # b.jpg as its dataset shows it; stored turned, EXIF orientation 6


@dataclass
class Labelled:
    """A store with a folder dataset and a pseudo-label version of some of its images."""

    store: Path
    version: str
    photos: Path
    class_names: list[str]
    maps: dict[str, np.ndarray]  # image id -> stored label map
    shown: dict[str, np.ndarray]  # image id -> photo as shown (what was drawn before saving)


def _block(hw: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Labelled:
    """Photos of flat colour blocks, one saved turned with an EXIF orientation; label maps of blocks of
    classes; the version labels a, b, c and e (c's file is gone since) but not d."""
    from PIL import ExifTags, Image

    from maskbank.storage.datasets import VOC_CLASSES, DatasetSpec, image_size, open_dataset
    from maskbank.storage.datasets.hashing import sha256_file
    from maskbank.storage.layout import image_key
    from maskbank.storage.store import Store
    from maskbank.storage.versions import publish_version, version_id

    tmp = tmp_path_factory.mktemp("thumbnails")
    photos = tmp / "photos"
    photos.mkdir()
    shown, label_masks = {}, {}
    for i, name in enumerate(("a.png", "c.png", "d.png", "e.png")):
        h, w = PLAIN_HW
        photo = np.full((h, w, 3), GREY, np.uint8)
        photo[_block(PLAIN_HW, 0, h, 0, w // 2)] = BLUE
        photo[-1, -1] = i  # files of their own (same content would be one image key)
        shown[name] = photo
        Image.fromarray(photo).save(photos / name)
        label_masks[name] = {"person": _block(PLAIN_HW, 0, h, 0, w // 3),
                             "cat": _block(PLAIN_HW, 0, h // 2, 2 * w // 3, w)}
    h, w = TURNED_SHOWN_HW
    photo = np.full((h, w, 3), GREY, np.uint8)
    photo[_block(TURNED_SHOWN_HW, 0, h // 3, 0, w)] = RED
    shown["b.jpg"] = photo
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown = stored turned 90 degrees clockwise
    Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90).save(photos / "b.jpg", quality=95, exif=exif)
    label_masks["b.jpg"] = {"dog": _block(TURNED_SHOWN_HW, 0, h // 3, 0, w)}

    ds = open_dataset(DatasetSpec(path=photos, format="folder", classes=VOC_CLASSES))
    keys = {r.image_id: image_key(sha256_file(r.path), ds.exif_transpose, image_size(r.path, ds.exif_transpose))
            for r in ds.records}
    st = Store.open(str(tmp / "store.mb"))
    fp = st.write_manifest(ds, [keys[i] for i in ds.image_ids])
    maps = {}
    for image_id in ("a.png", "b.jpg", "c.png", "e.png"):
        m = np.zeros(shown[image_id].shape[:2], np.uint8)
        for name, mask in label_masks[image_id].items():
            m[mask] = ds.class_names.index(name)
        maps[image_id] = m
    params = {"seed": {"rounds": 0}}
    vid = version_id("pseudo_labels", params, [], [fp], code_version="test")
    st.write_label_maps(vid, [(keys[i], m, i) for i, m in maps.items()])
    publish_version(st, "pseudo_labels", params, [], [fp], code_version="test")
    (photos / "c.png").unlink()
    return Labelled(Path(st.url), vid, photos, list(ds.class_names), maps, shown)


def _decoded(uri: str) -> np.ndarray:
    from PIL import Image

    head, _, data = uri.partition(",")
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB")).astype(int)


def _blend(photo: tuple[int, int, int], class_index: int) -> np.ndarray:
    from maskbank.tasks.render import OVERLAY_ALPHA, label_palette

    color = label_palette(class_index + 1)[class_index].astype(float)
    return np.round(np.array(photo) * (1 - OVERLAY_ALPHA) + color * OVERLAY_ALPHA)


def _close(pixels: np.ndarray, expected, tolerance: int = 10) -> bool:
    """Every pixel of ``[..., 3]`` within ``tolerance`` (JPEG) of the colour ``expected`` on every channel."""
    return bool((np.abs(pixels.reshape(-1, 3) - np.asarray(expected, float)) <= tolerance).all())


def test_choose_images_takes_the_first_labelled_by_id_each_file_once():
    images = [("b", "k2"), ("a", "k1"), ("d", "k4"), ("c", "k3"), ("a2", "k1"), ("e", "k5")]
    assert choose_images(images, {"k1", "k3", "k4", "k5"}, 3) == [("a", "k1"), ("c", "k3"), ("d", "k4")]
    assert choose_images(images, {"k1", "k2"}, 4) == [("a", "k1"), ("b", "k2")]
    assert choose_images(images, set(), 4) == [] and choose_images(images, {"k1"}, 0) == []


def test_classes_shown_and_a_label_map_of_another_frame_is_refused():
    labels = np.array([[0, 3], [1, 7]], np.uint8)
    assert classes_shown(labels, ["background", "cat", "dog", "car"]) == ("cat", "car", "class 7")
    assert classes_shown(np.zeros((2, 2), np.uint8), ["background"]) == ()
    with pytest.raises(ValueError, match="changed since it was labelled"):
        labels_picture(np.zeros((4, 6, 3), np.uint8), np.zeros((6, 4), np.uint8))


def test_thumbnails_are_the_first_labelled_images_with_their_overlay(labelled):
    thumbs, not_shown = read_thumbnails(str(labelled.store), labelled.version)
    assert [t.image_id for t in thumbs] == ["a.png", "b.jpg", "e.png"]  # d is not labelled; c's file is gone
    assert [i for i, _ in not_shown] == ["c.png"] and "not found" in not_shown[0][1]
    for t in thumbs:
        present = sorted(set(np.unique(labelled.maps[t.image_id]).tolist()) - {0})
        assert t.classes == tuple(labelled.class_names[k] for k in present)
        pixels = _decoded(t.data_uri)
        h, w = labelled.shown[t.image_id].shape[:2]
        scale = min(1.0, SIDE / max(h, w))
        assert pixels.shape == (round(h * scale), round(w * scale), 3) and max(pixels.shape[:2]) <= SIDE

    a = _decoded(thumbs[0].data_uri)  # 60 x 90, not shrunk: photo blue left half, grey right; person | cat
    person, cat = labelled.class_names.index("person"), labelled.class_names.index("cat")
    assert _close(a[4:56, 4:26], _blend(BLUE, person))  # person over blue
    assert _close(a[4:56, 34:41], BLUE)  # background: the photo
    assert _close(a[4:56, 49:56], GREY)
    assert _close(a[4:26, 64:86], _blend(GREY, cat))  # cat over grey
    assert _close(a[34:56, 64:86], GREY)

    b = _decoded(thumbs[1].data_uri)  # shown 300 x 120 -> 200 x 80: red top third, labelled dog
    dog = labelled.class_names.index("dog")
    assert b.shape[:2] == (200, 80)
    assert _close(b[4:60, 4:76], _blend(RED, dog))
    assert _close(b[75:196, 4:76], GREY)


def test_thumbnails_stop_at_n_and_never_raise(labelled, tmp_path):
    thumbs, not_shown = read_thumbnails(str(labelled.store), labelled.version, n=2, side=50)
    assert [t.image_id for t in thumbs] == ["a.png", "b.jpg"] and not_shown == []
    assert max(_decoded(thumbs[1].data_uri).shape[:2]) == 50
    assert read_thumbnails(str(tmp_path / "no-store"), labelled.version) == ([], [])
    assert read_thumbnails(str(labelled.store), "0" * 16) == ([], [])


def test_run_report_shows_the_thumbnails_and_the_gallery_command(summary, labelled):
    thumbs, not_shown = read_thumbnails(str(labelled.store), labelled.version)
    run = summary.model_copy(update={"store": str(labelled.store), "pseudo_labels": labelled.version})
    text = run_report(run, [DatasetInput(path=str(labelled.photos))], None, RunParams(), "cpu", thumbs, not_shown)
    section = text[text.index("## Pseudo-labels"):text.index("## Stages")]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \| !\[([^\]]*)\]\((data:image/jpeg;base64,[A-Za-z0-9+/=]+)\) \|$",
                      section, flags=re.M)
    assert [(i, c, alt, uri) for i, c, alt, uri in rows] == [
        (t.image_id, ", ".join(t.classes), f"{t.image_id} with its pseudo-labels", t.data_uri) for t in thumbs]
    assert f"| `c.png` | {not_shown[0][1]} |" in section
    vid = labelled.version
    assert f"maskbank export {labelled.store} {vid} --format html --out gallery-{vid[:8]}" in section
    bare = run_report(run, [DatasetInput(path="imgs")], None, RunParams(), "cpu")
    assert "data:image" not in bare and "--format html" in bare and "| image | classes |" not in bare
