"""A scene collection whose class list has no background (sky, grass, cow: every pixel is one of the image's
labels), read from an images/ + masks/ folder and run through the main flow with the real models at light
settings: seeding never assigns background to a labelled image's proposals, the bank has no background
prototypes, evaluation leaves background out of the mean, and ``maskbank evaluate`` scores the version as the
run did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.real]

CLASSES = ["sky", "grass", "cow"]


def _scene(rng: np.random.Generator, cow: bool) -> tuple[np.ndarray, np.ndarray]:
    h, w = 96, 128
    image = np.empty((h, w, 3), np.float32)
    mask = np.empty((h, w), np.uint8)
    horizon = int(rng.integers(35, 55))
    image[:horizon] = (90, 150, 230)
    mask[:horizon] = 0
    image[horizon:] = (60, 160, 50)
    mask[horizon:] = 1
    if cow:
        cy, cx = int(rng.integers(horizon + 10, h - 15)), int(rng.integers(30, w - 30))
        yy, xx = np.mgrid[:h, :w]
        body = ((yy - cy) / 12) ** 2 + ((xx - cx) / 22) ** 2 <= 1
        image[body] = (110, 70, 40)
        mask[body] = 2
    image += rng.normal(0, 8, image.shape)
    mask[:, :2] = 255  # void along the left edge
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for i, cow in enumerate([True, False, True, True, False]):
        image, mask = _scene(rng, cow)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"s{i}.png")
    return root


@pytest.fixture(scope="module")
def scene_run(prefect_harness, scenes, tmp_path_factory):
    from maskbank.flows.label import label_images
    from maskbank.flows.params import EmbedParams, ProposeParams, RunParams
    from maskbank.flows.stages.ingest import DatasetInput

    store = tmp_path_factory.mktemp("scene-store") / "s.mb"
    params = RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224), shard_size=2)
    summary = label_images(datasets=[DatasetInput(path=str(scenes))], store=str(store), params=params, device="cpu")
    return store, summary


def test_a_class_list_without_background_is_read_as_such(scenes):
    from maskbank.storage.datasets import open_dataset

    ds = open_dataset(scenes)
    assert not ds.has_background and ds.class_names == ["background", *CLASSES]


def test_labelled_proposals_never_become_background(scene_run):
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.flows.params import ProposeParams
    from maskbank.storage.store import Store
    from maskbank.storage.versions import read_version

    store, summary = scene_run
    st = Store.open(store, create=False)
    a = read_version(st, summary.pseudo_labels).arrays
    assert len(a["proposal_label"]) > 0 and (a["proposal_label"] > 0).all()
    key = proposals_key(ProposeParams(points_per_side=4))
    for image_key in a["image_key"]:
        covered = st.read_proposals(key, str(image_key)).masks().any(0)
        label_map = st.read_label_map(summary.pseudo_labels, str(image_key))
        assert (label_map[covered] > 0).all()


def test_the_head_leaves_no_pixel_unlabelled(scene_run):
    """Without background every pixel is one of the image's labels: the seeds leave the pixels no proposal
    covers at the placeholder 0, and the head's fill gives each of them one of the image's labels."""
    from maskbank.storage.layout import manifest_group
    from maskbank.storage.store import Store
    from maskbank.storage.versions import get_version, read_version

    store, summary = scene_run
    st = Store.open(store, create=False)
    group = manifest_group(get_version(st, summary.pseudo_labels).datasets[0])
    labels = {str(k): set(np.flatnonzero(row).tolist())
              for k, row in zip(st.read_array(group, "image_key"), st.read_array(group, "labels"))}
    unlabelled = 0
    for image_key in (str(k) for k in read_version(st, summary.pseudo_labels).arrays["image_key"]):
        filled = st.read_label_map(summary.pseudo_labels, image_key)
        assert set(np.unique(filled).tolist()) <= labels[image_key]
        unlabelled += int((st.read_label_map(summary.seeds, image_key) == 0).sum())
    assert unlabelled > 0  # the light proposals leave pixels out, which the head filled


def test_the_bank_has_no_background_prototypes(scene_run):
    from maskbank.storage.store import Store
    from maskbank.storage.versions import read_version

    store, summary = scene_run
    labels = read_version(Store.open(store, create=False), summary.bank).arrays["labels"]
    assert len(labels) > 0 and (labels > 0).all()


def test_evaluation_leaves_background_out_and_the_command_agrees(scene_run, scenes, tmp_path):
    from typer.testing import CliRunner

    from maskbank.cli import app

    store, summary = scene_run
    metrics = summary.pseudo_label_metrics
    assert metrics["images"] == 5 and set(metrics["classes"]["iou"]) == set(CLASSES)
    out = CliRunner().invoke(app, ["evaluate", str(store), summary.pseudo_labels, "--truth", str(scenes),
                                   "--out", str(tmp_path / "m.json")])
    assert out.exit_code == 0, out.output
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["classes"]["miou"] == pytest.approx(metrics["classes"]["miou"])
    assert "background" not in written["classes"]["iou"] and "background" not in out.output


def test_scene_benchmark_reproduces_the_flow(scene_run, scenes):
    """``bench/scenes.py`` on this collection: its in-process seeding and scoring reproduce the flow's."""
    import sys

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.scenes import scene_rows
    from maskbank.flows.params import EmbedParams, ProposeParams, RunParams

    store, summary = scene_run
    params = RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224), shard_size=2)
    out = scene_rows(store, scenes, params, "cpu")
    assert out["pseudo_labels_version"] == summary.pseudo_labels and out["images"] == 5
    checks = {k: v for k, v in out["checks"].items() if k != "seeded"}
    assert out["checks"]["seeded"] == "by the flow" and all(c["ok"] for c in checks.values()), out["checks"]
    rows = out["rows"]
    assert rows["oracle_restricted"]["miou"] <= rows["oracle"]["miou"] + 1e-9
    assert set(rows["pseudo_labels"]["iou"]) == set(CLASSES)
    assert 0 <= rows["pseudo_labels"]["mean_class_accuracy"] <= 1
    # on the keys the store holds, without the flow: the same rows
    again = scene_rows(store, scenes, params, "cpu", keys=(out["proposals_key"], out["pooled_key"]))
    assert again["rows"] == rows and again["checks"]["seeded"] == "in-process (stored keys given)"
    assert all(c["ok"] for k, c in again["checks"].items() if k != "seeded"), again["checks"]


@pytest.mark.parametrize("fmt", ["png", "voc", "coco"])
def test_export_leaves_the_placeholder_out_and_reads_back(scene_run, tmp_path, fmt):
    """Exported classes are the dataset's own (no "background" line, no background category); class k of the
    store is written as k - 1, pixels no class was painted on as ignore; the folder reads back as a dataset
    without background whose truth is the stored labels (COCO: pixels in no annotation), and scores the
    version it came from at mIoU 1. The seeds are exported: the pseudo-labels have those pixels filled."""
    from typer.testing import CliRunner

    from maskbank.cli import app
    from maskbank.storage.datasets import open_dataset
    from maskbank.storage.store import Store
    from maskbank.storage.versions import read_version

    store, run_summary = scene_run
    summary = run_summary.model_copy(update={"pseudo_labels": run_summary.seeds})
    out = tmp_path / fmt
    run = CliRunner().invoke(app, ["export", str(store), summary.pseudo_labels, "--format", fmt, "--out", str(out),
                                   "--images", "copy"])
    assert run.exit_code == 0, run.output
    if fmt == "coco":
        data = json.loads((out / "annotations/instances_pseudo_labels.json").read_text())
        assert [c["name"] for c in data["categories"]] == CLASSES
    else:
        assert (out / "classes.txt").read_text().splitlines() == CLASSES
    back = open_dataset(out, background=False) if fmt == "coco" else open_dataset(out)  # COCO cannot say it
    assert not back.has_background and back.class_names == ["background", *CLASSES]
    st = Store.open(store, create=False)
    keys = {str(k) for k in read_version(st, summary.pseudo_labels).arrays["image_key"]}
    manifest = st.read_manifest(st.list_manifests()[0])
    by_id = dict(zip(manifest.image_ids, st.read_attrs(st.manifest_path(manifest.fingerprint))["image_keys"]))
    unpainted = 0
    for image_id in back.image_ids:
        stored = st.read_label_map(summary.pseudo_labels, by_id[image_id])
        truth = back.truth(image_id)
        want = np.where(stored == 0, back.ignore_index, stored)  # the reader puts classes back at 1..n
        assert np.array_equal(truth, want), image_id
        unpainted += int((stored == 0).sum())
    assert len(back.image_ids) == len(keys) and unpainted > 0  # some pixels no class covers
    if fmt != "coco":
        scored = CliRunner().invoke(app, ["evaluate", str(store), summary.pseudo_labels, "--truth", str(out),
                                          "--out", str(tmp_path / "m.json")])
        assert scored.exit_code == 0, scored.output
        assert json.loads((tmp_path / "m.json").read_text())["classes"]["miou"] == pytest.approx(1.0)


def test_export_refuses_background_for_unlabelled_pixels(scene_run, tmp_path):
    from typer.testing import CliRunner

    from maskbank.cli import app

    store, _ = scene_run
    run = CliRunner().invoke(app, ["export", str(store), "--format", "png", "--out", str(tmp_path / "x"),
                                   "--unlabelled", "background"])
    assert run.exit_code == 2 and "can only be exported as ignore" in run.output
    assert len(run.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_html_page_of_classes_without_background(scene_run, tmp_path):
    """The page names the dataset's own classes, coloured by their store index as ``maskbank show`` colours
    them, and scores each image against its truth (read again as the store recorded the dataset)."""
    from typer.testing import CliRunner

    from maskbank.cli import app
    from maskbank.tasks.render import label_palette

    store, summary = scene_run
    out = tmp_path / "html"
    run = CliRunner().invoke(app, ["export", str(store), "--format", "html", "--out", str(out)])
    assert run.exit_code == 0 and "note:" not in run.output, run.output
    text = (out / "gallery.js").read_text()
    data = json.loads(text[text.index("{"):].strip().removesuffix(";"))
    assert not data["background"] and [c["name"] for c in data["classes"]] == CLASSES
    palette = label_palette(len(CLASSES) + 1)
    assert [c["color"] for c in data["classes"]] == ["#%02x%02x%02x" % tuple(palette[k]) for k in (1, 2, 3)]
    assert len(data["cards"]) == 5 and all(c["truth"] and c["disagreement"] is not None for c in data["cards"])
    assert all(0 <= v < len(CLASSES) for c in data["cards"] for v, _ in c["classes"])


def test_maskbank_run_on_the_masks_folder_gives_the_flow_s_versions(scene_run, scenes, tmp_path):
    """``maskbank run`` on the folder, with the run's settings, reaches the same stored versions (every stage
    is a cache hit) and prints the scores without background."""
    from typer.testing import CliRunner

    from maskbank.cli import app

    store, summary = scene_run
    params = tmp_path / "light.json"
    params.write_text(json.dumps({"propose": {"points_per_side": 4}, "embed": {"long_side": 224}, "shard_size": 2}))
    run = CliRunner().invoke(app, ["run", "--store", str(store), "--bank", str(scenes), "--params", str(params),
                                   "--device", "cpu"])
    assert run.exit_code == 0, run.output
    assert summary.pseudo_labels in run.output and summary.bank in run.output
    assert f"{summary.pseudo_label_metrics['classes']['miou']:.4f}" in run.output
