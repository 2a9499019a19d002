"""``maskbank inspect``, ``show`` and ``compare`` on a small store holding every kind of item, written with
the store and versions APIs over two sample images (known masks, label maps and metrics)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from maskbank.commands.inspect import register
from maskbank.commands.tree import human_bytes
from maskbank.flows.stages.ingest import image_key
from maskbank.flows.stages.labelmaps import write_label_map
from maskbank.storage.datasets import Dataset, DatasetSpec, load_rgb, open_dataset, working_size
from maskbank.storage.datasets.hashing import sha256_file
from maskbank.storage.store import Store
from maskbank.storage.versions import publish_version
from maskbank.tasks import render, rle
from maskbank.tasks.geometry import PatchGeometry
from maskbank.storage.datasets.coco import write_coco_subset

IMAGES = ["000000184324", "000000208901"]
PK, FK, PLK = "p" * 24, "f" * 24, "q" * 24
PERSON, CAR = 1, 3
CHANNELS = 8
DOCS = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class Built:
    path: Path
    dataset: Dataset
    keys: dict[str, str]
    masks: dict[str, np.ndarray]
    seeds: str
    pred_a: str
    pred_b: str
    bank: str


def _labels_version(st: Store, kind: str, maps: dict[str, np.ndarray], params: dict, parents=(), fps=()) -> str:
    keys = sorted(maps)
    info = publish_version(st, kind, params, parents, fps, code_version="test", arrays={
        "image_key": np.array(keys), "proposal_image": np.arange(len(keys), dtype=np.int32),
        "proposal_label": np.ones(len(keys), np.int32), "proposal_score": np.ones(len(keys), np.float32),
    }, dims={"image_key": ("image",), "proposal_image": ("proposal",), "proposal_label": ("proposal",),
             "proposal_score": ("proposal",)})
    return info.id


def _evaluation(st: Store, parent: str, fp: str, person: float, car: float | None) -> None:
    iou = {"background": 0.9, "person": person, "car": car, "bus": None}
    miou = float(np.mean([v for v in iou.values() if v is not None]))
    metrics = {"images": 2, "classes": {"miou": miou, "iou": iou, "classes_present": 3}}
    publish_version(st, "evaluation", {}, [parent], [fp], code_version="test",
                    arrays={"confusion": np.eye(4, dtype=np.int64)}, dims={"confusion": ("truth", "prediction")},
                    metrics=metrics)


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_root) -> Built:
    tmp = tmp_path_factory.mktemp("inspect")
    ann = write_coco_subset(sample_root, "val2017", tmp / "coco", IMAGES, copy_images=True)
    ds = open_dataset(DatasetSpec(path=ann))
    st = Store.open(tmp / "store.zarr")
    fp = st.write_manifest(ds, tmp / "hashes.json")
    keys, masks, seeds, pred_a, pred_b = {}, {}, {}, {}, {}
    rng = np.random.default_rng(0)
    for rec in ds.records:
        key = image_key(sha256_file(rec.path), ds.exif_transpose, (rec.height, rec.width))
        keys[rec.image_id] = key
        h, w = rec.height, rec.width
        m = np.zeros((2, h, w), bool)
        m[0, 10:60, 20:120] = True
        m[1, 100:200, 50:90] = True
        masks[rec.image_id] = m
        st.write_proposals(PK, key, rle.encode(m), image_hw=(h, w), attrs={"path": str(rec.path)})
        geometry = PatchGeometry.for_image((h, w), long_side=112, patch_size=14)
        feats = rng.normal(size=(*geometry.grid_hw, CHANNELS)).astype(np.float32)
        feats[:, : geometry.grid_hw[1] // 2] += 3.0
        st.write_features(FK, key, feats, geometry, attrs={"path": str(rec.path)})
        sal = np.linspace(0, 1, geometry.resized_hw[0] * geometry.resized_hw[1], dtype=np.float32)
        st.write_image_item("saliency", FK, key, {"saliency": sal.reshape(geometry.resized_hw).astype(np.float16)},
                            dims={"saliency": ("y", "x")})
        st.write_image_item("pooled", PLK, key, {"features": rng.normal(size=(2, CHANNELS)).astype(np.float32),
                                                 "saliency": np.array([0.2, 0.8], np.float32),
                                                 "area": m.reshape(2, -1).mean(1).astype(np.float32)},
                            {"image_hw": [h, w]}, {"features": ("mask", "channel"), "saliency": ("mask",),
                                                   "area": ("mask",)})
        a = np.zeros((h, w), np.uint8)
        a[m[0]] = PERSON
        seeds[key] = a
        pred_a[key] = a
        b = a.copy()
        if rec.image_id == IMAGES[0]:
            b[m[1]] = CAR  # the only difference between the two prediction versions
        pred_b[key] = b
    ids = {k: i for i, k in keys.items()}
    vids = {}
    for name, kind, maps, extra in (("seeds", "pseudo_labels", seeds, {}), ("a", "predictions", pred_a, {"k": 25}),
                                    ("b", "predictions", pred_b, {"k": 3})):
        vids[name] = _labels_version(st, kind, maps, {"proposals": PK, "pooled": PLK, **extra}, fps=[fp])
        for key, lab in maps.items():
            write_label_map(st, vids[name], key, lab, ids[key])
    bank = publish_version(st, "bank", {"features": FK}, [vids["seeds"]], [fp], code_version="test", arrays={
        "vectors": rng.normal(size=(3, CHANNELS)).astype(np.float32), "labels": np.array([0, 1, 1], np.int32),
        "image": np.array([0, 0, 1], np.int32), "image_key": np.array(sorted(keys.values())),
        "class_name": np.array(ds.class_names)}, dims={"vectors": ("prototype", "channel"), "labels": ("prototype",),
                                                       "image": ("prototype",), "image_key": ("image",),
                                                       "class_name": ("class",)},
        metrics={"prototypes": 3, "per_class": [1, 2]})
    _evaluation(st, vids["seeds"], fp, 0.5, None)
    _evaluation(st, vids["a"], fp, 0.5, 0.0)
    _evaluation(st, vids["b"], fp, 0.75, 0.25)
    return Built(st.path, ds, keys, masks, vids["seeds"], vids["a"], vids["b"], bank.id)


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def _panel(png: Path, index: int, widths: list[int], hw: tuple[int, int]) -> np.ndarray:
    """Panel ``index`` of a picture laid out by ``render.side_by_side`` (with titles)."""
    img = np.asarray(Image.open(png).convert("RGB"))
    x = render.GAP + sum(w + render.GAP for w in widths[:index])
    y = render.GAP + render.TITLE_HEIGHT
    return img[y:y + hw[0], x:x + hw[1]]


def _photo(built: Built, image_id: str) -> np.ndarray:
    return load_rgb(built.dataset.record(image_id).path, exif_transpose=False)


# ----- inspect ------------------------------------------------------------------------------------


def test_inspect_prints_datasets_stage_summaries_and_versions(built):
    out = _cli("inspect", built.path)
    assert out.exit_code == 0, out.output
    text = out.output
    assert "dataset 'val2017': 2 images (2 labelled, 2 with truth), 81 classes" in text
    assert re.search(rf"{FK}/  2 items, .* on disk, .* in memory  \(used by bank {built.bank}\)", text)
    assert re.search(r"features\s+\[y=\d+, x=\d+, channel=8\]\s+float16\s+in 2 items", text)
    assert re.search(r"bbox\s+\[mask=2, xywh=4\]\s+int32\s+in 2 items", text)
    assert re.search(r"rle\s+\[mask=2\]\s+string\s+in 2 items, .* on disk, - in memory", text)
    assert f"{built.pred_b}/  2 items" in text and "(predictions version, created" in text
    hw = [(r.height, r.width) for r in built.dataset.records]
    labels_memory = human_bytes(sum(h * w for h, w in hw))
    assert re.search(rf"labels\s+\[y=\d+\.\.\d+, x=640\]\s+uint8\s+in 2 items, .* on disk, {labels_memory} in memory", text)
    assert re.search(rf"{built.pred_b}  predictions  created \S+  parents -  evaluated: mIoU 0\.6333 over 2 images", text)
    assert re.search(rf"{built.bank}  bank  created \S+  parents {built.seeds}  3 prototypes", text)
    assert re.search(r"vectors\s+\[prototype=3, channel=8\]\s+float32\s+chunks \[3, 8\]  .* on disk, 96 B in memory", text)
    assert re.search(r"evaluation  created \S+  parents \w+  mIoU 0\.7000 over 2 images", text)
    assert all(key not in text for key in built.keys.values())  # items are summarised


def test_inspect_all_lists_every_item(built):
    out = _cli("inspect", built.path, "--all")
    assert out.exit_code == 0, out.output
    for image_id, key in built.keys.items():
        assert f"{key}  image {image_id}" in out.output  # a label map item names its dataset image
        assert re.search(rf"{key}  \S+{image_id}\.jpg", out.output)  # other items name their file
    assert len(re.findall(r"^\s+labels\s+\[y=\d+, x=\d+\]", out.output, re.M)) == 3 * 2


def test_inspect_refuses_what_is_not_a_store(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    out = _cli("inspect", tmp_path / "x")
    assert out.exit_code == 2 and "not a maskbank store" in out.output


# ----- show ---------------------------------------------------------------------------------------


def test_show_masks_outlines_each_proposal_exactly_on_its_edge(built, tmp_path):
    image_id = IMAGES[0]
    out = _cli("show", built.path, image_id, "--layer", "masks", "--out", tmp_path / "m.png")
    assert out.exit_code == 0, out.output
    photo = _photo(built, image_id)
    h, w = photo.shape[:2]
    left = _panel(tmp_path / "m.png", 0, [w, w], (h, w))
    right = _panel(tmp_path / "m.png", 1, [w, w], (h, w))
    assert (left == photo).all()
    m = built.masks[image_id]
    colors = render.proposal_colors(2)
    e0, e1 = render.mask_edges(m[0]), render.mask_edges(m[1])
    assert (right[e0] == colors[0]).all() and (right[e1] == colors[1]).all()
    assert (right[~(e0 | e1)] == photo[~(e0 | e1)]).all()
    assert right[10, 20].tolist() == colors[0].tolist() and right[11, 21].tolist() == photo[11, 21].tolist()


def test_show_seeds_paints_classes_in_the_palette_beside_the_photo_with_a_legend(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_id = IMAGES[0]
    out = _cli("show", built.path, image_id, "--layer", "seeds")
    assert out.exit_code == 0, out.output
    png = tmp_path / f"{image_id}-seeds.png"  # the default name
    photo = _photo(built, image_id)
    h, w = photo.shape[:2]
    labels = _panel(png, 1, [w, w], (h, w))
    palette = render.label_palette(256)
    assert labels[30, 50].tolist() == palette[PERSON].tolist() == [128, 0, 0]
    assert labels[150, 70].tolist() == [0, 0, 0]  # background
    assert (_panel(png, 0, [w, w], (h, w)) == photo).all()
    legend = np.asarray(Image.open(png).convert("RGB"))[:, 3 * render.GAP + 2 * w:]
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert (128, 0, 0) in colours and tuple(palette[CAR]) not in colours


def test_show_prediction_takes_a_version_prefix_and_defaults_to_the_newest(built, tmp_path):
    image_id = IMAGES[0]
    photo = _photo(built, image_id)
    h, w = photo.shape[:2]
    for version, car in ((built.pred_a[:6], False), (None, True)):
        args = ["--version", version] if version else []
        out = _cli("show", built.path, image_id, "--layer", "prediction", *args, "--out", tmp_path / "p.png")
        assert out.exit_code == 0, out.output
        pixel = _panel(tmp_path / "p.png", 1, [w, w], (h, w))[150, 70].tolist()
        assert pixel == (render.label_palette(4)[CAR].tolist() if car else [0, 0, 0])


def test_show_truth_reopens_the_dataset(built, tmp_path):
    image_id = IMAGES[0]
    out = _cli("show", built.path, image_id, "--layer", "truth", "--out", tmp_path / "t.png")
    assert out.exit_code == 0, out.output
    truth = built.dataset.truth(image_id)
    h, w = truth.shape
    panel = _panel(tmp_path / "t.png", 1, [w, w], (h, w))
    assert (panel == render.colorize_labels(truth, built.dataset.ignore_index)).all()
    assert (truth == 255).any() and (panel[truth == 255] == 255).all()


def test_show_features_and_saliency(built, tmp_path):
    st = Store.open(built.path, create=False)
    image_id = IMAGES[1]
    key = built.keys[image_id]
    features, geometry = st.read_features(FK, key)
    h, w = geometry.image_hw
    out = _cli("show", built.path, image_id, "--layer", "features", "--out", tmp_path / "f.png")
    assert out.exit_code == 0, out.output
    expected = render.to_uint8(geometry.to_image(render.pca_rgb(features)))
    assert (_panel(tmp_path / "f.png", 1, [w, w], (h, w)) == expected).all()
    out = _cli("show", built.path, image_id, "--layer", "saliency", "--key", FK[:4], "--out", tmp_path / "s.png")
    assert out.exit_code == 0, out.output
    sal = st.read_image_item("saliency", FK, key).arrays["saliency"].astype(np.float32)
    heat = _panel(tmp_path / "s.png", 1, [w, w], (h, w))
    assert (heat == render.heatmap(render.resize(sal, (h, w)))).all()
    assert heat[0, 0].tolist() != heat[-1, -1].tolist()


def test_show_reports_what_is_missing(built, tmp_path):
    out = _cli("show", built.path, "000000999999", "--layer", "masks", "--out", tmp_path / "x.png")
    assert out.exit_code == 1 and "no dataset" in out.output and "000000999999" in out.output
    out = _cli("show", built.path, IMAGES[0], "--layer", "prediction", "--version", built.seeds)
    assert out.exit_code == 1 and "pseudo_labels version; expected predictions" in out.output
    out = _cli("show", built.path, IMAGES[0], "--layer", "masks", "--key", "zzz")
    assert out.exit_code == 1 and "0 proposals keys match 'zzz'" in out.output
    assert not (tmp_path / "x.png").exists()


# ----- compare ------------------------------------------------------------------------------------


def test_compare_prints_differing_pixels_and_iou_change(built):
    out = _cli("compare", built.path, "--versions", built.pred_a, built.pred_b[:8])
    assert out.exit_code == 0, out.output
    text = out.output
    first = built.dataset.record(IMAGES[0])
    share = 100 * 4000 / (first.height * first.width)
    assert re.search(rf"{IMAGES[0]}\s+{built.keys[IMAGES[0]]}\s+{share:.2f}% of pixels differ \(4000 of ", text)
    assert re.search(rf"{IMAGES[1]}\s+\S+\s+0\.00% of pixels differ \(0 of ", text)
    assert re.search(r"person\s+0\.5000\s+0\.7500\s+\+0\.2500", text)
    assert re.search(r"car\s+0\.0000\s+0\.2500\s+\+0\.2500", text)
    assert "bus" not in text  # absent from both evaluations
    assert re.search(r"mIoU\s+0\.4667\s+0\.6333\s+\+0\.1667", text)


def test_compare_image_draws_a_b_and_the_difference(built, tmp_path):
    image_id = IMAGES[0]
    png = tmp_path / "d.png"
    out = _cli("compare", built.path, "--versions", built.pred_a, built.pred_b, "--image", image_id, "--out", png)
    assert out.exit_code == 0, out.output
    photo = _photo(built, image_id)
    h, w = photo.shape[:2]
    a, b, diff = (_panel(png, i, [w, w, w], (h, w)) for i in range(3))
    m = built.masks[image_id]
    assert a[150, 70].tolist() == [0, 0, 0] and b[150, 70].tolist() == render.label_palette(4)[CAR].tolist()
    assert (diff[m[1]] == render.DIFFERENCE_COLOR).all()
    rest = diff[~m[1]]
    assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()


def test_compare_refuses_versions_without_label_maps(built):
    out = _cli("compare", built.path, "--versions", built.bank, built.pred_a)
    assert out.exit_code == 1 and "is a bank version" in out.output
    out = _cli("compare", built.path, "--versions", built.pred_a, built.pred_b, "--out", "x.png")
    assert out.exit_code == 2 and "--image" in out.output


def test_compare_pseudo_labels_with_predictions(built):
    out = _cli("compare", built.path, "--versions", built.seeds, built.pred_a)
    assert out.exit_code == 0, out.output
    assert re.search(r"person\s+0\.5000\s+0\.5000\s+\+0\.0000", out.output)
    assert "0.00% of pixels differ" in out.output


# ----- the documented Python snippets -------------------------------------------------------------


def test_documented_snippets_run_on_a_store(built, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 5
    code = "\n".join(blocks).replace('"maskbank-demo.zarr"', repr(str(built.path)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, str(DOCS), "exec"), {})
    printed = capsys.readouterr().out
    assert "('y', 'x', 'channel')" in printed and "('prototype', 'channel')" in printed
    assert "('mask', 'channel')" in printed and IMAGES[0] in printed


# ----- truth of a VOC dataset ---------------------------------------------------------------------


def test_show_truth_of_a_voc_dataset(tmp_path):
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\nbig\n")
    sizes = {"a": (24, 32), "b": (24, 32), "big": (2100, 2000)}  # "big" is over the working size
    for image_id, (h, w) in sizes.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    for image_id in ("a", "big"):
        h, w = sizes[image_id]
        index = np.zeros((h, w), np.uint8)
        index[h // 6:h // 2, w // 5:w * 3 // 5] = 15  # person
        index[0, :] = 255
        png = Image.fromarray(index, mode="P")
        png.putpalette(render.label_palette(256).ravel().tolist())
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    st = Store.open(tmp_path / "s.zarr")
    st.write_manifest(open_dataset(DatasetSpec(path=root, split="train")), tmp_path / "hashes.json")

    out = _cli("show", st.path, "a", "--layer", "truth", "--out", tmp_path / "a.png")
    assert out.exit_code == 0, out.output
    panel = _panel(tmp_path / "a.png", 1, [32, 32], (24, 32))
    assert panel[5, 7].tolist() == [192, 128, 128] and panel[20, 20].tolist() == [0, 0, 0]
    assert (panel[0] == 255).all()
    out = _cli("show", st.path, "b", "--layer", "truth", "--out", tmp_path / "b.png")
    assert out.exit_code == 1 and "has no pixel truth" in out.output
    out = _cli("show", st.path, "big", "--layer", "truth", "--out", tmp_path / "big.png")
    assert out.exit_code == 0, out.output
    h, w = working_size(sizes["big"])
    assert (h, w) != sizes["big"]
    panel = _panel(tmp_path / "big.png", 1, [w, w], (h, w))
    assert panel[h // 3, w // 2].tolist() == [192, 128, 128] and panel[h - 1, w - 1].tolist() == [0, 0, 0]
