"""The main flow on a slice of the bundled sample with the real models at light settings: what a rerun
computes, what a parameter change reruns, what one new image costs, and how lost outputs come back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from maskbank.storage.datasets.coco import write_coco_subset

pytestmark = [pytest.mark.real]

TRAIN = ["000000196610", "000000204805", "000000425988", "000000278528"]
VAL = ["000000184324", "000000208901"]
COMPUTE_TASKS = {"propose", "embed", "pool", "seed", "segmenter", "fill", "bank", "retrieve", "evaluate"}


def _light_params(k: int = 25):
    from maskbank.flows.params import EmbedParams, ProposeParams, RetrieveParams, RunParams

    return RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224),
                     retrieve=RetrieveParams(k=k, rule="majority"), shard_size=2)


def _run(train_json: Path, val_json: Path, store: Path, params):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from maskbank.flows.label import label_images
    from maskbank.flows.stages.ingest import DatasetInput

    state = label_images(datasets=[DatasetInput(path=str(train_json))], store=str(store),
                         targets=[DatasetInput(path=str(val_json))], params=params, device="cpu",
                         return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    states: dict[str, set[str]] = {}
    for tr in runs:
        states.setdefault(tr.name.split("-")[0], set()).add(tr.state.name)
    return summary, states


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_root):
    root = tmp_path_factory.mktemp("coco")
    train = write_coco_subset(sample_root, "train2017", root, TRAIN[:3], copy_images=True)
    val = write_coco_subset(sample_root, "val2017", root, VAL, copy_images=True)
    return root, train, val


@pytest.fixture(scope="module")
def first_run(prefect_harness, data, tmp_path_factory):
    _, train, val = data
    store = tmp_path_factory.mktemp("store") / "s.zarr"
    summary, states = _run(train, val, store, _light_params())
    return store, summary, states


def test_first_run_computes_everything(first_run):
    store, summary, states = first_run
    assert summary.computed == {"propose": 5, "embed": 5, "pool": 5}
    assert summary.pseudo_label_metrics["images"] == 3 and summary.prediction_metrics["images"] == 2
    assert 0.0 <= summary.pseudo_label_metrics["classes"]["miou"] <= 1.0
    assert COMPUTE_TASKS <= set(states)


def test_second_run_is_fully_cached(first_run, data):
    store, first, _ = first_run
    _, train, val = data
    summary, states = _run(train, val, store, _light_params())
    assert summary.computed == {"propose": 0, "embed": 0, "pool": 0}
    assert {t: states[t] for t in COMPUTE_TASKS} == {t: {"Cached"} for t in COMPUTE_TASKS}
    assert (summary.pseudo_labels, summary.bank, summary.predictions) == (first.pseudo_labels, first.bank, first.predictions)


def test_changing_k_reruns_only_retrieval_and_evaluation(first_run, data):
    store, first, _ = first_run
    _, train, val = data
    summary, states = _run(train, val, store, _light_params(k=3))
    for t in ("propose", "embed", "pool", "seed", "segmenter", "fill", "bank"):
        assert states[t] == {"Cached"}, t
    assert states["retrieve"] == {"Completed"}
    assert "Completed" in states["evaluate"]  # the pseudo-label evaluation stays cached
    assert summary.bank == first.bank and summary.predictions != first.predictions


def test_deleted_zarr_output_is_recomputed(first_run, data):
    from maskbank.flows.stages.embed import features_key
    from maskbank.storage.store import FEATURES, Store

    store, first, _ = first_run
    _, train, val = data
    st = Store.open(store, create=False)
    key = features_key(_light_params().embed)
    victim = st.list_items(FEATURES, key)[0]
    assert st.drop_images(FEATURES, key, [victim]) == [victim]
    summary, states = _run(train, val, store, _light_params())
    assert summary.computed["embed"] == 1 and summary.computed["propose"] == 0
    assert st.has_item(FEATURES, key, victim)
    assert summary.predictions == first.predictions


def test_adding_an_image_computes_only_that_image(first_run, data, sample_root):
    store, first, _ = first_run
    root, _, val = data
    train = write_coco_subset(sample_root, "train2017", root, TRAIN, copy_images=True)  # one more labelled image
    summary, _ = _run(train, val, store, _light_params())
    assert summary.computed == {"propose": 1, "embed": 1, "pool": 1}
    assert summary.pseudo_labels != first.pseudo_labels


def test_versions_accumulate_and_are_listed(first_run):
    from typer.testing import CliRunner

    from maskbank.cli import app
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    store, _, _ = first_run
    infos = list_versions(Store.open(store, create=False))
    kinds = [v.kind for v in infos]
    assert kinds.count("predictions") >= 2 and kinds.count("pseudo_labels") >= 2
    out = CliRunner().invoke(app, ["versions", str(store)])
    assert out.exit_code == 0, out.output
    assert all(v.id in out.output for v in infos)
    assert "mIoU" in out.output


def test_inspect_at_a_version_shows_the_run_that_published_it(first_run):
    import re

    from typer.testing import CliRunner

    from maskbank.cli import app

    store, first, _ = first_run
    now = CliRunner().invoke(app, ["inspect", str(store)])
    then = CliRunner().invoke(app, ["inspect", str(store), "--version", first.predictions])
    assert now.exit_code == 0 and then.exit_code == 0, now.output + then.output
    assert f"as of version {first.predictions}" in then.output.splitlines()[0]

    def listed(text: str) -> set[str]:
        return set(re.findall(r"^  ([0-9a-f]{16})  \w+  tag ", text, re.M))

    assert {first.pseudo_labels, first.bank, first.predictions} <= listed(then.output)
    assert listed(then.output) < listed(now.output)  # later runs published more; that commit does not show it


def test_evaluate_scores_a_stored_version_as_the_run_did(first_run, data, tmp_path):
    import json

    from typer.testing import CliRunner

    from maskbank.cli import app

    store, summary, _ = first_run
    _, train, _ = data
    out = CliRunner().invoke(app, ["evaluate", str(store), summary.pseudo_labels[:12], "--truth", str(train),
                                   "--out", str(tmp_path / "m.json")])
    assert out.exit_code == 0, out.output
    written = json.loads((tmp_path / "m.json").read_text())
    expected = summary.pseudo_label_metrics["classes"]
    assert written["version"] == summary.pseudo_labels and written["images"] == 3
    assert written["classes"]["miou"] == pytest.approx(expected["miou"])
    assert written["classes"]["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
    lines = out.output.splitlines()
    assert lines[0].startswith(f"pseudo_labels {summary.pseudo_labels}: mIoU {expected['miou']:.4f}")
    for name, iou in expected["iou"].items():
        assert any(line.split() == [*name.split(), "-" if iou is None else f"{iou:.4f}"] for line in lines), name


def test_evaluate_refuses_what_it_cannot_score_in_one_line(first_run, data, tmp_path, sample_root):
    from PIL import Image
    from typer.testing import CliRunner

    from maskbank.cli import app

    store, summary, _ = first_run
    _, train, _ = data
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    (folder / "labels.csv").write_text("image,labels\na.jpg,person\n")
    cases = {
        "no version matching 'zzzz'": [str(store), "zzzz", "--truth", str(train)],
        f"version {summary.bank} is a bank version": [str(store), summary.bank, "--truth", str(train)],
        "no image has pixel truth": [str(store), summary.pseudo_labels, "--truth", str(folder)],
        "not a maskbank store": [str(tmp_path / "nowhere"), summary.pseudo_labels, "--truth", str(train)],
    }
    for message, args in cases.items():
        out = CliRunner().invoke(app, ["evaluate", *args])
        lines = out.output.strip().splitlines()
        assert out.exit_code == 2 and len(lines) == 1 and message in lines[0], (message, out.output)


def test_the_head_fills_what_no_proposal_covers_and_keeps_the_seeds_elsewhere(first_run):
    from maskbank.flows.stages.labels import EVIDENCE
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.storage.layout import manifest_group
    from maskbank.storage.store import Store
    from maskbank.storage.versions import get_version, read_version

    store, summary, _ = first_run
    st = Store.open(store, create=False)
    assert summary.seeds != summary.pseudo_labels and summary.segmenter is not None
    head = get_version(st, summary.segmenter)
    assert head.kind == "segmenter" and list(head.parents) == [summary.seeds]
    weights = read_version(st, summary.segmenter).arrays
    classes = [str(c) for c in weights["class_name"]]
    assert weights["weight"].shape == (384, len(classes)) and weights["bias"].shape == (len(classes),)
    assert 0 < head.metrics["tokens"] <= head.metrics["tokens_offered"]
    filled = get_version(st, summary.pseudo_labels)
    assert filled.kind == "pseudo_labels" and sorted(filled.parents) == sorted([summary.seeds, summary.segmenter])
    assert filled.metrics[EVIDENCE] == get_version(st, summary.seeds).metrics[EVIDENCE]
    seeds, pseudo = read_version(st, summary.seeds).arrays, read_version(st, summary.pseudo_labels).arrays
    for name in ("image_key", "proposal_image", "proposal_label", "proposal_score"):
        assert np.array_equal(seeds[name], pseudo[name]), name
    labels = {}
    for fp in filled.datasets:
        group = manifest_group(fp)
        keys, hot = st.read_array(group, "image_key"), st.read_array(group, "labels")
        labels.update({str(k): set(np.flatnonzero(row).tolist()) for k, row in zip(keys, hot)})
    changed = 0
    for key in (str(k) for k in seeds["image_key"]):
        before, after = st.read_label_map(summary.seeds, key), st.read_label_map(summary.pseudo_labels, key)
        covered = st.read_proposals(proposals_key(_light_params().propose), key).masks().any(axis=0)
        assert np.array_equal(before[covered], after[covered])
        assert set(np.unique(after[~covered]).tolist()) <= {0} | labels[key]
        changed += int((before != after).sum())
    assert changed > 0  # light proposals leave pixels uncovered, and the head gives some of them a class


def test_the_head_labels_the_images_to_label_when_asked_and_export_reads_its_maps(first_run, data, tmp_path):
    from typer.testing import CliRunner

    from maskbank.cli import app
    from maskbank.flows.params import RetrieveParams
    from maskbank.storage.store import Store
    from maskbank.storage.versions import get_version

    store, first, _ = first_run
    _, train, val = data
    params = _light_params().model_copy(update={"retrieve": RetrieveParams(method="segmenter")})
    summary, states = _run(train, val, store, params)
    for t in ("seed", "segmenter", "fill", "bank"):  # as the runs before left them
        assert states[t] == {"Cached"}, t
    assert states["segment"] == {"Completed"} and "retrieve" not in states
    predictions = get_version(Store.open(store, create=False), summary.predictions)
    assert predictions.kind == "predictions" and list(predictions.parents) == [summary.segmenter]
    assert summary.prediction_metrics["images"] == 2
    for version in (summary.predictions, summary.pseudo_labels):  # painted from proposals, then filled
        out = CliRunner().invoke(app, ["export", str(store), version, "--format", "coco", "--out",
                                       str(tmp_path / version), "--min-score", "0.3", "--instances"])
        assert out.exit_code == 0 and "skipped" not in out.output, out.output


def test_without_the_head_the_pseudo_labels_are_the_seeds(first_run, data):
    from maskbank.flows.params import SegmentParams

    store, first, _ = first_run
    _, train, val = data
    params = _light_params().model_copy(update={"segment": SegmentParams(enabled=False)})
    summary, states = _run(train, val, store, params)
    assert summary.pseudo_labels == summary.seeds and summary.segmenter is None
    assert states["seed"] == {"Cached"} and "segmenter" not in states and "fill" not in states


def test_labelling_the_images_to_label_with_the_head_needs_the_head():
    from pydantic import ValidationError

    from maskbank.flows.params import RetrieveParams, RunParams, SegmentParams

    with pytest.raises(ValidationError, match="set segment.enabled to true"):
        RunParams(segment=SegmentParams(enabled=False), retrieve=RetrieveParams(method="segmenter"))


def test_arbitration_gives_the_least_confident_seeds_the_head_s_label(first_run, data):
    from maskbank.flows.params import SegmentParams
    from maskbank.storage.store import Store
    from maskbank.storage.versions import get_version, read_version

    store, _, _ = first_run
    _, train, val = data
    params = _light_params().model_copy(update={"segment": SegmentParams(arbitrate_below=1.0)})
    summary, states = _run(train, val, store, params)
    assert states["segmenter"] == {"Cached"} and states["fill"] == {"Completed"}
    st = Store.open(store, create=False)
    assert get_version(st, summary.pseudo_labels).params["arbitrate_below"] == 1.0
    seeds, pseudo = read_version(st, summary.seeds).arrays, read_version(st, summary.pseudo_labels).arrays
    unsure = seeds["proposal_score"] < 1.0  # every seed that was not the only class its proposal could take
    assert unsure.any() and np.array_equal(seeds["proposal_image"], pseudo["proposal_image"])
    sure = ~unsure
    assert np.array_equal(pseudo["proposal_label"][sure], seeds["proposal_label"][sure])
    assert not np.array_equal(pseudo["proposal_score"][unsure], seeds["proposal_score"][unsure])


def test_settings_without_effect_are_refused():
    """Settings of the bank's retrieval with the head labelling new images, or of the head when it is off,
    would be silently ignored: they are refused, naming them."""
    from pydantic import ValidationError

    from maskbank.flows.params import RetrieveParams, SegmentParams

    with pytest.raises(ValidationError, match=r"k, nms_iou would have no effect: retrieve.method is 'segmenter'"):
        RetrieveParams(method="segmenter", k=5, nms_iou=0.5)
    with pytest.raises(ValidationError, match=r"epochs, arbitrate_below would have no effect: segment.enabled is false"):
        SegmentParams(enabled=False, epochs=3, arbitrate_below=0.2)
    assert RetrieveParams(method="segmenter", k=RetrieveParams().k).method == "segmenter"  # defaults, as a form sends
    assert RetrieveParams(k=5).k == 5 and SegmentParams(epochs=3).epochs == 3


def test_mask_attention_makes_features_of_their_own_for_the_proposals(first_run, data):
    """By default the pool stage makes each image's features again with the proposals biasing the feature
    block; without mask attention it pools the stored features: a pooled group of its own key, on the cached
    proposals and features, of the same shapes and other values; the stages after it follow."""
    from maskbank.flows.params import PoolParams
    from maskbank.flows.stages.embed import features_key
    from maskbank.flows.stages.pool import pooled_key
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.storage.layout import POOLED
    from maskbank.storage.store import Store

    store, first, _ = first_run
    _, train, val = data
    params = _light_params().model_copy(update={"pool": PoolParams(mask_attention=False)})
    summary, states = _run(train, val, store, params)
    assert states["propose"] == {"Cached"} and states["embed"] == {"Cached"}
    assert states["pool"] == {"Completed"} and states["seed"] == {"Completed"}
    assert summary.pseudo_labels != first.pseudo_labels
    pk, fk = proposals_key(params.propose), features_key(params.embed)
    masked_key, plain_key = pooled_key(pk, fk, PoolParams()), pooled_key(pk, fk, params.pool)
    assert plain_key != masked_key
    st = Store.open(store, create=False)
    assert st.stage_settings(POOLED, masked_key)["pool"] == {"mask_attention": True, "attention_bias": -10.0}
    assert st.stage_settings(POOLED, plain_key)["pool"]["mask_attention"] is False
    for key in st.list_items(POOLED, plain_key):
        plain, masked = st.read_pooled(plain_key, key), st.read_pooled(masked_key, key)
        assert plain["features"].shape == masked["features"].shape
        assert np.array_equal(plain["saliency"], masked["saliency"], equal_nan=True)
        np.testing.assert_allclose(np.linalg.norm(masked["features"], axis=1), 1, atol=1e-3)
        cosine = np.sum(plain["features"] * masked["features"], axis=1)
        assert cosine.min() < 0.99 and cosine.mean() > 0.3  # the same proposals, seen apart from their context
    again, states = _run(train, val, store, params)
    assert states["pool"] == {"Cached"} and again.pseudo_labels == summary.pseudo_labels


def test_a_bias_without_mask_attention_is_refused():
    from pydantic import ValidationError

    from maskbank.flows.params import PoolParams

    with pytest.raises(ValidationError, match=r"attention_bias would have no effect: pool.mask_attention is false"):
        PoolParams(mask_attention=False, attention_bias=-2.0)
    with pytest.raises(ValidationError, match="less than 0"):
        PoolParams(attention_bias=0.5)
    assert PoolParams(attention_bias=-2.0).attention_bias == -2.0


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved as a checkpoint folder, with CLIP's real tokenizer."""
    import torch
    from clip_tokenizer import CONTEXT, write_clip_tokenizer
    from transformers import CLIPConfig, CLIPModel

    folder = write_clip_tokenizer(tmp_path_factory.mktemp("tiny-clip"))
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": CONTEXT, "eos_token_id": 49407},
        projection_dim=8)).save_pretrained(folder)
    return folder


def test_clip_seeds_label_the_collection_from_a_text_image_model(first_run, data, tiny_clip, monkeypatch):
    """seed.method 'clip' with a tiny CLIP in place of the checkpoint: a clip stage embeds the labelled images'
    proposals (its own pooled group, on the cached proposals), the seed stage classifies them among each
    image's labels, and the head, bank and retrieval follow; a rerun is cached."""
    from maskbank.flows import runtime
    from maskbank.flows.params import SeedParams
    from maskbank.flows.stages.clip import clip_pooled_key
    from maskbank.flows.stages.ingest import DatasetInput, ingest
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.storage.layout import POOLED
    from maskbank.storage.store import Store
    from maskbank.storage.versions import get_version, read_version
    from maskbank.tasks.clip_masks import ClipMaskConfig, ClipMaskEmbedder
    from maskbank.tasks.models.backbone import load_backbone
    from maskbank.tasks.models.text_image import TextEncoder, load_tokenizer

    model = load_backbone(tiny_clip)
    monkeypatch.setattr(runtime, "clip_embedder", lambda name, bias, device="auto": ClipMaskEmbedder(
        model, ClipMaskConfig(short_side=64, bias=bias, device="cpu")))
    monkeypatch.setattr(runtime, "text_encoder", lambda name, device="auto": TextEncoder(
        model, load_tokenizer(tiny_clip), device="cpu"))
    store, first, _ = first_run
    _, train, val = data
    params = _light_params().model_copy(update={"seed": SeedParams(method="clip")})
    summary, states = _run(train, val, store, params)
    assert states["propose"] == {"Cached"} and states["embed"] == {"Cached"} and states["pool"] == {"Cached"}
    assert states["clip"] == {"Completed"} and states["seed"] == {"Completed"}
    ref = ingest.fn(DatasetInput(path=str(train)), str(store))
    assert summary.computed["clip"] == len(ref.labelled_indices()) and summary.predictions is not None
    st = Store.open(store, create=False)
    key = clip_pooled_key(proposals_key(params.propose), params.seed)
    assert sorted(st.list_items(POOLED, key)) == sorted(read_version(st, summary.seeds).arrays["image_key"])
    seeds = read_version(st, summary.seeds).arrays
    assert get_version(st, summary.seeds).params["seed"]["method"] == "clip"
    labels = {k: set(v or ()) for k, v in zip(ref.image_keys, ref.labels)}
    assert len(seeds["proposal_label"]) and (seeds["proposal_label"] > 0).any()
    for row, label in zip(seeds["proposal_image"], seeds["proposal_label"]):
        assert label == 0 or label in labels[str(seeds["image_key"][row])]
    for k in st.list_items(POOLED, key):
        features = st.read_pooled(key, k)["features"]
        assert features.shape[1] == 8 and np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-4)
    again, states = _run(train, val, store, params)
    assert states["clip"] == {"Cached"} and states["seed"] == {"Cached"} and again.seeds == summary.seeds



def test_boxes_of_a_detector_propose_and_seed(first_run, data, tmp_path_factory, monkeypatch):
    """propose.method and seed.method 'boxes' with a tiny Grounding DINO in place of the checkpoint: proposals are
    SAM's masks in its boxes for the class names, each with its box's class, under a key of their own (the
    features are reused); each seed is its box's class where the image is labelled with it, unlabelled for a
    box of another class, background for the rest region; retrieval labels the new images; a rerun is cached."""
    from tiny_detectors import tiny_grounding_dino

    from maskbank.flows import runtime
    from maskbank.flows.params import ProposeParams, SeedParams
    from maskbank.flows.stages.ingest import DatasetInput, ingest
    from maskbank.flows.stages.labels import proposal_rows
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.storage.layout import PROPOSALS, SETTINGS_CLASSES
    from maskbank.storage.store import Store
    from maskbank.storage.versions import get_version, read_version

    tiny = tiny_grounding_dino(tmp_path_factory.mktemp("tiny-dino"))
    monkeypatch.setattr(runtime, "detector", lambda name: tiny)
    store, _, _ = first_run
    _, train, val = data
    propose = ProposeParams(method="boxes", box_threshold=0.0, text_threshold=0.0)
    params = _light_params().model_copy(update={"propose": propose, "seed": SeedParams(method="boxes")})
    summary, states = _run(train, val, store, params)
    assert states["propose"] == {"Completed"} and states["embed"] == {"Cached"} and states["seed"] == {"Completed"}
    ref = ingest.fn(DatasetInput(path=str(train)), str(store))
    st = Store.open(store, create=False)
    key = proposals_key(propose, ref.class_names, ref.has_background)
    assert st.stage_settings(PROPOSALS, key)[SETTINGS_CLASSES]["names"] == ref.class_names
    seeds = read_version(st, summary.seeds).arrays
    assert get_version(st, summary.seeds).params["seed"]["method"] == "boxes"
    labels = {k: set(v or ()) for k, v in zip(ref.image_keys, ref.labels)}
    boxed = kept = 0
    for image_key, rows in zip(*proposal_rows(seeds)):
        props = st.read_proposals(key, image_key)
        assert len(props) == rows.stop - rows.start and (props.box_class[:-1] >= 1).all()
        assert props.box_class[-1] == -1 and np.isnan(props.box_score[-1])  # the rest region (COCO has background)
        expected = [c if c in labels[image_key] else -1 for c in props.box_class[:-1]] + [0]
        assert seeds["proposal_label"][rows].tolist() == expected
        boxed, kept = boxed + len(props) - 1, kept + sum(c > 0 for c in expected)
    assert boxed > kept > 0 and summary.predictions is not None and summary.pseudo_label_metrics is not None
    again, states = _run(train, val, store, params)
    assert states["propose"] == {"Cached"} and states["seed"] == {"Cached"} and again.seeds == summary.seeds


def test_a_folder_without_labels_is_labelled_zero_shot(tiny_clip, tmp_path, monkeypatch, sample_root):
    """A folder of three images, one with labels and two without, and a class list: with
    seed.zero_shot_labels the two get the class their proposals are most taken for (top 1) before seeding,
    and every image is seeded among its (given or predicted) labels and background."""
    import shutil

    from maskbank.flows import runtime
    from maskbank.flows.label import label_images
    from maskbank.flows.params import SeedParams
    from maskbank.flows.stages.clip import clip_pooled_key
    from maskbank.flows.stages.ingest import DatasetInput, ingest
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.flows.stages.seed import predict_image_labels
    from maskbank.storage.store import Store
    from maskbank.storage.versions import read_version
    from maskbank.tasks.clip_masks import ClipMaskConfig, ClipMaskEmbedder
    from maskbank.tasks.models.backbone import load_backbone
    from maskbank.tasks.models.text_image import TextEncoder, load_tokenizer

    model = load_backbone(tiny_clip)
    monkeypatch.setattr(runtime, "clip_embedder", lambda name, bias, device="auto": ClipMaskEmbedder(
        model, ClipMaskConfig(short_side=64, bias=bias, device="cpu")))
    monkeypatch.setattr(runtime, "text_encoder", lambda name, device="auto": TextEncoder(
        model, load_tokenizer(tiny_clip), device="cpu"))
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    for image_id in TRAIN[:3]:
        shutil.copy(sample_root / "train2017" / f"{image_id}.jpg", folder / "images" / f"{image_id}.jpg")
    (folder / "labels.csv").write_text(f"image,labels\n{TRAIN[0]}.jpg,person\n")
    params = _light_params().model_copy(update={"seed": SeedParams(method="clip", zero_shot_labels="top_k")})
    dataset = DatasetInput(path=str(folder), classes=["person", "dog", "car"])
    store = str(tmp_path / "s.zarr")
    summary = label_images(datasets=[dataset], store=store, params=params, device="cpu")
    seeds = read_version(Store.open(store, create=False), summary.seeds).arrays
    collection = ingest.fn(dataset, store)
    assert sorted(seeds["image_key"]) == sorted(collection.image_keys)  # the two unlabelled images are seeded too
    assert [lab is None for lab in collection.labels] == [False, True, True]
    pooled = clip_pooled_key(proposals_key(params.propose), params.seed)
    labelled = predict_image_labels.fn(store, collection, pooled, params.seed, device="cpu")
    assert labelled.labels[0] == collection.labels[0] == [1]  # person, as given
    assert all(len(lab) == 1 and lab[0] in (1, 2, 3) for lab in labelled.labels[1:])  # top 1 of the classes
    assert "2 images without labels took the classes clip_b16 sees in them (top_k)" in labelled.notes
    allowed = {k: {0, *lab} for k, lab in zip(labelled.image_keys, labelled.labels)}
    for row, label in zip(seeds["proposal_image"], seeds["proposal_label"]):
        assert label in allowed[str(seeds["image_key"][row])]
