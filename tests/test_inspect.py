"""``maskbank inspect``, ``show``, ``compare`` and ``versions`` on a small store holding every kind of
output, written with the store and versions APIs over two sample images (known masks, label maps and
metrics): the tree of the store, pictures of one image's layers, time travel to a version's commit,
garbage collection, and one-line errors for what is not a store."""

from __future__ import annotations

import json
import re
import shutil
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
from maskbank.commands.versions import register as register_versions
from maskbank.storage.datasets import Dataset, DatasetSpec, image_size, load_rgb, open_dataset, working_size
from maskbank.storage.datasets.coco import write_coco_subset
from maskbank.storage.datasets.hashing import sha256_file
from maskbank.storage.layout import FEATURES, LABELS, POOLED, PROPOSALS, image_key
from maskbank.storage.store import Store
from maskbank.storage.versions import list_versions, publish_version, version_id
from maskbank.tasks import render, rle
from maskbank.tasks.geometry import PatchGeometry

IMAGES = ["000000184324", "000000208901"]
PK, FK, PLK = "p" * 24, "f" * 24, "q" * 24
PERSON, CAR = 1, 3
CHANNELS = 8
DOCS = Path(__file__).resolve().parents[1] / "docs" / "inspecting.md"


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
    fingerprint: str


LABELS_DIMS = {"image_key": ("image",), "proposal_image": ("proposal",), "proposal_label": ("proposal",),
               "proposal_score": ("proposal",)}


def _labels_version(st: Store, kind: str, maps: dict[str, np.ndarray], ids: dict[str, str], params: dict,
                    parents=(), fps=()) -> str:
    """Publish a label version as the flows do: its label maps first, then the version (whose commit, and
    tag, therefore holds them)."""
    vid = version_id(kind, params, parents, fps, code_version="test")
    st.write_label_maps(vid, [(k, lab, ids[k]) for k, lab in maps.items()])
    keys = sorted(maps)
    info = publish_version(st, kind, params, parents, fps, code_version="test", arrays={
        "image_key": np.array(keys), "proposal_image": np.arange(len(keys), dtype=np.int32),
        "proposal_label": np.ones(len(keys), np.int32), "proposal_score": np.ones(len(keys), np.float32),
    }, dims=LABELS_DIMS)
    assert info.id == vid
    return vid


def _evaluation(st: Store, parent: str, fp: str, person: float, car: float | None) -> str:
    iou = {"background": 0.9, "person": person, "car": car, "bus": None}
    miou = float(np.mean([v for v in iou.values() if v is not None]))
    metrics = {"images": 2, "classes": {"miou": miou, "iou": iou, "classes_present": 3}}
    return publish_version(st, "evaluation", {}, [parent], [fp], code_version="test",
                           arrays={"confusion": np.eye(4, dtype=np.int64)}, dims={"confusion": ("truth", "prediction")},
                           metrics=metrics).id


def _image_keys(ds: Dataset) -> list[str]:
    """The content keys ingest gives the dataset's images."""
    keys = []
    for rec in ds.records:
        hw = (rec.height, rec.width) if rec.height is not None else image_size(rec.path, exif_transpose=ds.exif_transpose)
        keys.append(image_key(sha256_file(rec.path), ds.exif_transpose, hw))
    return keys


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_root) -> Built:
    tmp = tmp_path_factory.mktemp("inspect")
    ann = write_coco_subset(sample_root, "val2017", tmp / "coco", IMAGES, copy_images=True)
    ds = open_dataset(DatasetSpec(path=ann))
    st = Store.open(str(tmp / "store.mb"))
    keys = dict(zip(ds.image_ids, _image_keys(ds)))
    fp = st.write_manifest(ds, [keys[i] for i in ds.image_ids], tmp / "hashes.json")
    masks, seeds, pred_a, pred_b = {}, {}, {}, {}
    proposals, features, pooled = [], [], []
    rng = np.random.default_rng(0)
    for rec in ds.records:
        key = keys[rec.image_id]
        h, w = rec.height, rec.width
        m = np.zeros((2, h, w), bool)
        m[0, 10:60, 20:120] = True
        m[1, 100:200, 50:90] = True
        masks[rec.image_id] = m
        proposals.append(st.proposals_output(key, rle.encode(m), image_hw=(h, w)))
        geometry = PatchGeometry.for_image((h, w), long_side=112, patch_size=14)
        feats = rng.normal(size=(*geometry.grid_hw, CHANNELS)).astype(np.float32)
        feats[:, : geometry.grid_hw[1] // 2] += 3.0
        sal = np.linspace(0, 1, geometry.resized_hw[0] * geometry.resized_hw[1], dtype=np.float32)
        features.append(st.features_output(key, feats, geometry, sal.reshape(geometry.resized_hw)))
        pooled.append(st.pooled_output(key, rng.normal(size=(2, CHANNELS)), np.array([0.2, 0.8]),
                                       m.reshape(2, -1).mean(1), (h, w)))
        a = np.zeros((h, w), np.uint8)
        a[m[0]] = PERSON
        seeds[key] = a
        pred_a[key] = a
        b = a.copy()
        if rec.image_id == IMAGES[0]:
            b[m[1]] = CAR  # the only difference between the two prediction versions
        pred_b[key] = b
    st.write_proposals(PK, proposals)
    st.write_features(FK, features)
    st.write_pooled(PLK, pooled)
    ids = {k: i for i, k in keys.items()}
    vids = {}
    for name, kind, maps, extra in (("seeds", "pseudo_labels", seeds, {}), ("a", "predictions", pred_a, {"k": 25}),
                                    ("b", "predictions", pred_b, {"k": 3})):
        vids[name] = _labels_version(st, kind, maps, ids, {"proposals": PK, "pooled": PLK, **extra}, fps=[fp])
    bank = publish_version(st, "bank", {"features": FK}, [vids["seeds"]], [fp], code_version="test", arrays={
        "vectors": rng.normal(size=(3, CHANNELS)).astype(np.float32), "labels": np.array([0, 1, 1], np.int32),
        "prototype_image": np.array([0, 0, 1], np.int32), "image_key": np.array(sorted(keys.values())),
        "class_name": np.array(ds.class_names)}, dims={"vectors": ("prototype", "channel"), "labels": ("prototype",),
                                                       "prototype_image": ("prototype",), "image_key": ("image",),
                                                       "class_name": ("class",)},
        metrics={"prototypes": 3, "per_class": [1, 2]})
    _evaluation(st, vids["seeds"], fp, 0.5, None)
    _evaluation(st, vids["a"], fp, 0.5, 0.0)
    _evaluation(st, vids["b"], fp, 0.75, 0.25)
    return Built(Path(st.url), ds, keys, masks, vids["seeds"], vids["a"], vids["b"], bank.id, fp)


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    register_versions(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def _copy(built: Built, tmp_path: Path) -> Path:
    """A copy of the built store to write into (a local repository is a folder of files)."""
    return Path(shutil.copytree(built.path, tmp_path / "copy.mb"))


def _panel(png: Path, index: int, widths: list[int], hw: tuple[int, int]) -> np.ndarray:
    """Panel ``index`` of a picture laid out by ``render.side_by_side`` (with titles)."""
    img = np.asarray(Image.open(png).convert("RGB"))
    x = render.GAP + sum(w + render.GAP for w in widths[:index])
    y = render.GAP + render.TITLE_HEIGHT
    return img[y:y + hw[0], x:x + hw[1]]


def _photo(built: Built, image_id: str) -> np.ndarray:
    return load_rgb(built.dataset.record(image_id).path, exif_transpose=False)


# ----- inspect ------------------------------------------------------------------------------------


def test_inspect_prints_datasets_stage_keys_label_maps_and_versions(built):
    out = _cli("inspect", built.path)
    assert out.exit_code == 0, out.output
    text = out.output
    assert re.match(rf"{re.escape(str(built.path))}  maskbank store \(.* on disk\), branch main at snapshot \w+ ", text)
    assert f"{built.fingerprint}  dataset 'val2017': 2 images (2 labelled, 2 with truth), 81 classes" in text
    assert re.search(r"image_key\s+\[image=2\]\s+string", text)
    assert re.search(rf"{PK}/  2 images, 4 proposals, .* stored, .* in memory  \(used by pseudo_labels {built.seeds}", text)
    assert re.search(r"bbox\s+\[proposal=4, xywh=4\]\s+int32", text)
    assert re.search(r"rle\s+\[proposal=4\]\s+string\s+chunks \[\d+\]  .* stored, - in memory", text)
    assert re.search(rf"{FK}/  2 images, .* stored, .* in memory  \(used by bank {built.bank}\)", text)
    assert re.search(r"features\s+\[image=2, y=\d+, x=\d+, channel=8\]\s+float16 .* padded; per image y=\d+, x=\d+, "
                     r"channel=8", text)
    assert re.search(r"saliency\s+\[image=2, saliency_y=\d+, saliency_x=\d+\]\s+float32", text)
    assert re.search(rf"{PLK}/  2 images, 4 proposals", text)
    hw = [(r.height, r.width) for r in built.dataset.records]
    (h0, h1), w = sorted(h for h, _ in hw), max(w for _, w in hw)
    memory = human_bytes(2 * h1 * w)
    assert f"{built.pred_b}/  2 images, " in text and "(predictions version, created" in text
    assert re.search(rf"labels\s+\[image=2, y={h1}, x={w}\]\s+uint8 .* {memory} in memory  padded; per image "
                     rf"y={h0}..{h1}, x={w}", text)
    assert re.search(rf"{built.pred_b}  predictions  tag predictions\.{built.pred_b}  created \S+  parents -  "
                     r"evaluated: mIoU 0\.6333 over 2 images", text)
    assert re.search(rf"{built.bank}  bank  tag bank\.{built.bank}  created \S+  parents {built.seeds}  3 prototypes", text)
    assert re.search(r"vectors\s+\[prototype=3, channel=8\]\s+float32\s+chunks \[3, 8\]  .* stored, 96 B in memory", text)
    assert re.search(r"evaluation  tag evaluation\.\w+  created \S+  parents \w+  mIoU 0\.7000 over 2 images", text)
    assert all(key not in text for key in built.keys.values())  # images are summarised
    assert "content_sha256" not in text and "offset" not in text  # and the bookkeeping arrays left out


def test_inspect_all_lists_every_image_and_the_bookkeeping_arrays(built):
    out = _cli("inspect", built.path, "--all")
    assert out.exit_code == 0, out.output
    for image_id, key in built.keys.items():
        lines = re.findall(rf"^ +{key}  image {image_id}\b.*$", out.output, re.M)
        assert len(lines) == 3 + 3  # proposals, features, pooled; three label versions
        assert sum("2 proposals" in line for line in lines) == 2
        assert sum(re.search(r"features \d+x\d+x8", line) is not None for line in lines) == 1
    assert len(re.findall(r"^ +content_sha256\s+\[image=2\]", out.output, re.M)) == 3 + 3
    assert re.search(r"^ +offset\s+\[image=2\]\s+int64", out.output, re.M)


def test_inspect_at_a_version_shows_the_store_as_that_version_published_it(built, tmp_path):
    copy = _copy(built, tmp_path)
    st = Store.open(str(copy), create=False)
    first = built.keys[IMAGES[0]]
    st.write_proposals("n" * 24, [st.proposals_output(first, [], image_hw=(4, 4))])
    st.drop_images(FEATURES, FK, [first])
    st.drop_images(LABELS, built.pred_b, [first])

    now = _cli("inspect", copy)
    assert now.exit_code == 0, now.output
    assert f"{'n' * 24}/  1 images, 0 proposals" in now.output
    assert f"{FK}/  1 images (1 rows without output)" in now.output
    assert f"{built.pred_b}/  1 images (1 rows without output)" in now.output

    then = _cli("inspect", copy, "--version", built.pred_b[:8])
    assert then.exit_code == 0, then.output
    text = then.output
    assert re.match(rf"\S+  maskbank store \(.*\), as of version {built.pred_b} \(snapshot \w+", text)
    assert "n" * 24 not in text
    assert f"{FK}/  2 images, " in text and f"{built.pred_b}/  2 images, " in text
    listed = re.findall(r"^  ([0-9a-f]{16})  (\w+)  tag ", text, re.M)  # the versions published by then
    assert listed == [(built.seeds, "pseudo_labels"), (built.pred_a, "predictions"), (built.pred_b, "predictions")]
    assert f"bank.{built.bank}" not in text

    unknown = _cli("inspect", copy, "--version", "0000")
    assert unknown.exit_code == 1 and "no version matching '0000'" in unknown.output


# ----- the settings a stage key stands for --------------------------------------------------------


@dataclass
class Computed:
    """A store whose proposals, features and pooled features were written by the stage tasks themselves
    (tiny random models standing in for SAM and DINOv2), two shards of one image each per stage."""

    path: Path
    params: dict
    keys: dict[str, str]


@pytest.fixture(scope="module")
def computed(tmp_path_factory, sample_root, one_thread) -> Computed:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from maskbank.flows import runtime
    from maskbank.flows.params import EmbedParams, PoolParams, ProposeParams
    from maskbank.flows.stages.common import ImageJob
    from maskbank.flows.stages.embed import embed_shard, features_key
    from maskbank.flows.stages.pool import pool_shard, pooled_key
    from maskbank.flows.stages.propose import propose_shard, proposals_key
    from maskbank.tasks.embed import EmbedConfig, FeatureExtractor
    from maskbank.tasks.models.saliency import SaliencyHead
    from maskbank.tasks.models.sam import assemble_sam
    from maskbank.tasks.models.tiny_vit import tiny_vit
    from maskbank.tasks.propose import MaskProposer, ProposerConfig

    tmp = tmp_path_factory.mktemp("computed")
    ds = open_dataset(DatasetSpec(path=write_coco_subset(sample_root, "val2017", tmp / "coco", IMAGES, copy_images=True)))
    st = Store.open(str(tmp / "store.mb"))
    image_keys = _image_keys(ds)
    st.write_manifest(ds, image_keys, tmp / "hashes.json")
    jobs = [ImageJob(key=k, path=str(r.path), exif_transpose=ds.exif_transpose) for k, r in zip(image_keys, ds.records)]

    torch.manual_seed(0)
    sam = assemble_sam(tiny_vit(64, embed_dims=(8, 16, 32, 320), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), 64)
    proposer = MaskProposer(sam.eval(), ProposerConfig(  # keeps every mask a random SAM predicts
        input_size=64, points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0, bf16=False, device="cpu"))
    backbone = Dinov2Model(Dinov2Config(hidden_size=CHANNELS * 4, num_hidden_layers=2, num_attention_heads=2,
                                        patch_size=14, image_size=56))
    extractor = FeatureExtractor(backbone.eval(), EmbedConfig(long_side=56, layer=-1, device="cpu"),
                                 saliency_head=SaliencyHead(in_dim=CHANNELS * 4, channels=(16, 8, 4)))
    propose = ProposeParams(points_per_side=4)
    embed = EmbedParams(model="dinov2_s", layer=10, long_side=224, saliency=True, bf16=False)
    pk, fk = proposals_key(propose), features_key(embed)
    plk = pooled_key(pk, fk, PoolParams())
    with pytest.MonkeyPatch.context() as mp:  # the stage tasks load these instead of the checkpoints
        mp.setattr(runtime, "proposer", lambda params, device="auto": proposer)
        mp.setattr(runtime, "extractor", lambda params, device="auto": extractor)
        for shard in ([jobs[0]], [jobs[1]]):  # the second shard writes into the group the first created
            assert propose_shard.fn(st.url, pk, shard, propose, device="cpu").computed == [shard[0].key]
            assert embed_shard.fn(st.url, fk, shard, embed, device="cpu").computed == [shard[0].key]
            assert pool_shard.fn(st.url, plk, shard, pk, fk, PoolParams(), embed).computed == [shard[0].key]
    return Computed(Path(st.url), {"propose": propose, "embed": embed},
                    {PROPOSALS: pk, FEATURES: fk, POOLED: plk})


def test_a_stage_key_records_the_settings_it_hashes(computed):
    from maskbank.flows.keys import stage_key
    from maskbank.flows.stages.embed import features_settings
    from maskbank.flows.params import PoolParams
    from maskbank.flows.stages.pool import pooled_settings
    from maskbank.flows.stages.propose import proposals_settings

    st = Store.open(str(computed.path), create=False)
    pk, fk, plk = (computed.keys[s] for s in (PROPOSALS, FEATURES, POOLED))
    proposals, features, pooled = (st.stage_settings(s, computed.keys[s]) for s in (PROPOSALS, FEATURES, POOLED))
    assert proposals == proposals_settings(computed.params["propose"])
    assert proposals["propose"] == computed.params["propose"].acting()
    assert stage_key(PROPOSALS, proposals["propose"], [proposals["checkpoint"]], proposals["code"]) == pk
    assert features == features_settings(computed.params["embed"])
    assert stage_key(FEATURES, features["embed"], [features["checkpoint"]], features["code"]) == fk
    assert pooled == pooled_settings(pk, fk, PoolParams()) and set(pooled) == {"proposals", "features", "pool", "code"}
    assert pooled["pool"] == PoolParams().model_dump(mode="json")
    assert stage_key(POOLED, pooled["pool"], [pooled["proposals"], pooled["features"]], pooled["code"]) == plk
    assert st.stage_settings(PROPOSALS, "z" * 24) is None  # no such key


def test_inspect_shows_the_settings_each_stage_key_stands_for(computed):
    from maskbank.flows import runtime
    from maskbank.flows.keys import code_version
    from maskbank.flows.stages import embed, pool, propose

    out = _cli("inspect", computed.path)
    assert out.exit_code == 0, out.output
    text = out.output
    pk, fk, plk = (computed.keys[s] for s in (PROPOSALS, FEATURES, POOLED))
    sam, dino = (runtime.checkpoint_id(name)[:16] for name in ("mobile_sam", "dinov2_s"))
    assert re.search(rf"^  {pk}/  2 images, \d+ proposals, .*\n"
                     r"    propose: method=automatic, model=mobile_sam, input_size=1024, points_per_side=4, points_per_batch=null, "
                     r"pred_iou_thresh=0\.88, .*, generator=fast\n"
                     rf"    computed with: checkpoint sha256 {sam}, code version {code_version(propose.MODULES)}\n"
                     r"    area  ", text, re.M), text
    assert re.search(rf"^  {fk}/  2 images, .*\n"
                     r"    embed: model=dinov2_s, layer=10, long_side=224, saliency=true, bf16=false; "
                     rf"{CHANNELS * 4} channels, 14 px patches\n"
                     rf"    computed with: checkpoint sha256 {dino}, code version {code_version(embed.MODULES)}\n"
                     r"    features  ", text, re.M), text
    assert re.search(rf"^  {plk}/  2 images, \d+ proposals, .*\n"
                     rf"    pool: mask_attention=true, attention_bias=-10\.0; from proposals {pk}, features {fk}\n"
                     rf"    computed with: code version {code_version(pool.MODULES)}\n"
                     r"    area  ", text, re.M), text
    assert "read from its data" not in text


def test_stage_keys_that_record_no_settings_still_print(built, tmp_path):
    """Groups written before stage keys recorded their settings (as ``built``'s are): the features key shows
    what its data says, the others their arrays alone; beside a key that records its settings."""
    copy = _copy(built, tmp_path)
    st = Store.open(str(copy), create=False)
    assert all(st.stage_settings(s, k) is None for s, k in ((PROPOSALS, PK), (FEATURES, FK), (POOLED, PLK)))
    first = built.keys[IMAGES[0]]
    settings = {"propose": {"model": "sam_vit_b", "points_per_side": 32}, "checkpoint": "sam_vit_b@None",
                "code": "0123456789abcdef"}
    st.write_proposals("n" * 24, [st.proposals_output(first, [], image_hw=(4, 4))], settings=settings)
    assert st.stage_settings(PROPOSALS, "n" * 24) == settings

    out = _cli("inspect", copy)
    assert out.exit_code == 0, out.output
    text = out.output
    assert re.search(rf"^  {'n' * 24}/  1 images, 0 proposals, .*\n    propose: model=sam_vit_b, points_per_side=32\n"
                     r"    computed with: checkpoint sam_vit_b@None, code version 0123456789abcdef\n", text, re.M), text
    assert re.search(rf"^  {PK}/  2 images, 4 proposals, .*\n    area  ", text, re.M), text
    assert re.search(rf"^  {FK}/  2 images, .*\n    embed: long_side=112, saliency=true \(read from its data\); "
                     r"8 channels, 14 px patches\n    features  ", text, re.M), text
    assert re.search(rf"^  {PLK}/  2 images, 4 proposals, .*\n    area  ", text, re.M), text
    assert "pool:" not in text


def test_stage_settings_read_as_parameters():
    from maskbank.commands.describe import stage_settings_lines

    sha = "ab" * 32
    assert stage_settings_lines(FEATURES, {"embed": {"model": "dinov2_s", "saliency": False}, "checkpoint": sha,
                                           "code": "c" * 16}, "8 channels") == [
        "embed: model=dinov2_s, saliency=false; 8 channels",
        f"computed with: checkpoint sha256 {sha[:16]}, code version {'c' * 16}"]
    assert stage_settings_lines(POOLED, {"proposals": PK, "features": FK, "code": "c" * 16}) == [
        f"pool: from proposals {PK}, features {FK}", f"computed with: code version {'c' * 16}"]
    assert stage_settings_lines(POOLED, {"proposals": PK, "features": FK, "pool": {"mask_attention": True},
                                         "code": "c" * 16})[0] == f"pool: mask_attention=true; from proposals {PK}, features {FK}"
    assert stage_settings_lines(PROPOSALS, {}) == []
    boxes = stage_settings_lines(PROPOSALS, {"propose": {"method": "boxes"}, "classes": {"names": ["background", "cat"],
                                             "background": True}, "checkpoint": [sha, "grounding_dino_t@main"]})
    assert boxes[-1] == f"computed with: checkpoint sha256 {sha[:16]}, checkpoint grounding_dino_t@main"
    assert any("cat" in line for line in boxes)


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
    sal = st.read_saliency(FK, key)
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
    code = "\n".join(blocks).replace('"maskbank-demo-store"', repr(str(built.path)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, str(DOCS), "exec"), {})
    printed = capsys.readouterr().out
    assert "('image', 'y', 'x', 'channel')" in printed and "('prototype', 'channel')" in printed
    assert "('proposal', 'channel')" in printed and IMAGES[0] in printed
    assert "(2, 8)" in printed  # the mean feature of each image


# ----- versions -----------------------------------------------------------------------------------


def test_show_and_compare_read_a_version_as_published(built, tmp_path):
    copy = _copy(built, tmp_path)
    image_id = IMAGES[0]
    Store.open(str(copy), create=False).drop_images(LABELS, built.pred_b, [built.keys[image_id]])
    photo = _photo(built, image_id)
    h, w = photo.shape[:2]
    out = _cli("show", copy, image_id, "--layer", "prediction", "--version", built.pred_b, "--out", tmp_path / "p.png")
    assert out.exit_code == 0, out.output
    assert _panel(tmp_path / "p.png", 1, [w, w], (h, w))[150, 70].tolist() == render.label_palette(4)[CAR].tolist()
    out = _cli("compare", copy, "--versions", built.pred_a, built.pred_b)
    assert out.exit_code == 0, out.output
    assert "2 images in both" in out.output and re.search(rf"{image_id}\s+\S+\s+[1-9][\d.]*% of pixels differ", out.output)


def test_versions_list_shows_tags_and_refuses_unknown_kinds(built):
    out = _cli("versions", built.path)
    assert out.exit_code == 0, out.output
    assert f"tag bank.{built.bank}" in out.output and f"tag predictions.{built.pred_a}" in out.output
    out = _cli("versions", "list", built.path, "--kind", "predictions", "--json")
    assert out.exit_code == 0, out.output
    assert [(v["id"], v["tag"]) for v in json.loads(out.output)] == [
        (built.pred_a, f"predictions.{built.pred_a}"), (built.pred_b, f"predictions.{built.pred_b}")]
    out = _cli("versions", "list", built.path, "--kind", "prediction")
    assert out.exit_code == 2
    assert out.output == "error: unknown version kind 'prediction'; kinds are pseudo_labels, segmenter, bank, predictions, evaluation\n"


def test_versions_and_inspect_describe_datasets_settings_and_prototypes(built):
    out = _cli("versions", built.path)
    assert out.exit_code == 0, out.output
    text = out.output
    dataset = r"'val2017': 2 images \(2 labelled, 2 with truth\)\n    81 classes: background, person, bicycle, .* and 71 more"
    assert re.search(rf"^{built.bank}  bank .*  3 prototypes\n    tag bank\.{built.bank}\n    labelled images: {dataset}\n"
                     rf"    computed from: features {FK}\n    prototypes per class: background: 1, person: 2\n"
                     r"    classes without prototypes \(retrieval never predicts them\): bicycle, car, .* and 69 more$",
                     text, re.M), text
    assert re.search(rf"^{built.pred_a}  predictions .*\n    tag predictions\.{built.pred_a}\n    images to label: {dataset}\n"
                     rf"    settings: k=25\n    computed from: proposals {PK}, pooled {PLK}$", text, re.M), text
    assert re.search(rf"^{built.seeds}  pseudo_labels .*\n    tag \S+\n    labelled images: {dataset}\n"
                     rf"    computed from: proposals {PK}, pooled {PLK}$", text, re.M), text
    assert re.search(rf"^\w+  evaluation .*  parents {built.pred_b}  mIoU 0\.6333 over 2 images\n    tag \S+\n"
                     rf"    scored on: {dataset}$", text, re.M), text
    assert "params {" not in text  # no raw JSON: --json has it

    tree = _cli("inspect", built.path)
    assert tree.exit_code == 0, tree.output
    text = tree.output
    assert re.search(r"dataset 'val2017': .*\n    classes: background, person, bicycle, .* and 71 more\n", text)
    assert re.search(rf"^  {FK}/  2 images, .*\n    embed: long_side=112, saliency=true \(read from its data\); "
                     r"8 channels, 14 px patches$", text, re.M), text
    assert re.search(rf"^  {built.bank}  bank  tag .*\n    labelled images: {dataset}\n    computed from: features {FK}\n"
                     r"    prototypes per class: background: 1, person: 2\n", text, re.M), text


def test_settings_read_as_parameters_and_long_lists_are_cut():
    from maskbank.commands.describe import computed_from, listed, prototype_lines, settings_lines

    params = {"seed": {"quantile": 0.75, "claim_labels": True, "erosion": "scaled"}, "background": True,
              "restrict": False, "proposals": PK, "pooled": PLK, "images": "ab" * 32}
    assert settings_lines(params) == ["seed: quantile=0.75, claim_labels=true, erosion=scaled",
                                      "settings: background=true, restrict=false"]
    assert computed_from(params) == f"computed from: proposals {PK}, pooled {PLK}"
    assert computed_from({"background": True}) is None
    names = [f"c{i}" for i in range(13)]
    assert listed(names) == "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 and 3 more" and listed(names[:2]) == "c0, c1"
    assert prototype_lines([0, 4, 0], ["background", "cat", "dog"]) == [
        "prototypes per class: cat: 4", "classes without prototypes (retrieval never predicts them): background, dog"]


def test_versions_delete_then_gc_reclaims_the_data(built, tmp_path):
    copy = _copy(built, tmp_path)
    st = Store.open(str(copy), create=False)
    evaluation = [v.id for v in list_versions(st, "evaluation") if v.parents == (built.pred_b,)]
    refused = _cli("versions", "delete", copy, built.pred_b)
    assert refused.exit_code == 1 and f"is a parent of {evaluation[0]}" in refused.output
    for vid in evaluation:
        assert _cli("versions", "delete", copy, vid).exit_code == 0
    out = _cli("versions", "delete", copy, built.pred_b)
    assert out.exit_code == 0, out.output
    assert f"deleted predictions version {built.pred_b} (tag predictions.{built.pred_b}) and its label maps" in out.output
    assert f"`maskbank versions gc {copy}`" in out.output
    st.refresh()
    assert built.pred_b not in {v.id for v in list_versions(st)} and not st.exists(f"labels/{built.pred_b}")
    assert _cli("versions", "delete", copy, built.pred_b).exit_code == 1

    dry = _cli("versions", "gc", copy, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert re.search(r"^would delete \d+ chunks, \d+ manifests, \d+ commits: ", dry.output, re.M)
    kept = _cli("versions", "gc", copy)  # everything is younger than the default 24 hours
    assert kept.exit_code == 0 and "deleted 0 chunks, 0 manifests, 0 commits: 0 B" in kept.output
    before = sum(f.stat().st_size for f in copy.rglob("*") if f.is_file())
    out = _cli("versions", "gc", copy, "--older-than", "0")
    assert out.exit_code == 0, out.output
    expired, chunks, manifests, commits = map(int, re.search(
        r"expired (\d+) commits older than 0 h\ndeleted (\d+) chunks, (\d+) manifests, (\d+) commits: ", out.output).groups())
    assert expired > 0 and commits > 0 and chunks + manifests > 0  # small chunks live inside their manifests
    assert sum(f.stat().st_size for f in copy.rglob("*") if f.is_file()) < before

    for args in (["inspect", copy], ["inspect", copy, "--version", built.pred_a]):  # what remains still reads
        out = _cli(*args)
        assert out.exit_code == 0 and f"{built.pred_a}/  2 images" in out.output, out.output
    st = Store.open(str(copy), create=False, version=built.seeds)
    assert st.read_label_map(built.seeds, built.keys[IMAGES[0]])[30, 50] == PERSON


# ----- what is not a store: one line, exit code 2 -------------------------------------------------


@pytest.fixture
def not_stores(tmp_path) -> dict[str, str]:
    old = tmp_path / "old.zarr"  # a store of the per-item layout
    old.mkdir()
    (old / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                               "attributes": {"maskbank_store": 1}}))
    (tmp_path / "file.txt").write_text("hi")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpeg")
    return {
        "missing": str(tmp_path / "missing.mb"),
        "old layout": str(old),
        "a file": str(tmp_path / "file.txt"),
        "a folder of other things": str(tmp_path / "photos"),
        "unknown scheme": "ftp://bucket/store",
        "no bucket": "s3://",
        "credentials in the URL": "s3://key:secret@bucket/store",
    }


@pytest.mark.parametrize("command", [
    ["inspect", "{}"], ["inspect", "{}", "--version", "0123"], ["show", "{}", "000000184324", "--layer", "masks"],
    ["compare", "{}", "--versions", "a", "b"], ["versions", "{}"], ["versions", "list", "{}", "--json"],
    ["versions", "delete", "{}", "0123456789abcdef"], ["versions", "gc", "{}"],
])
def test_what_is_not_a_store_is_a_one_line_error(command, not_stores, tmp_path):
    said = {}
    for what, location in not_stores.items():
        out = _cli(*[a.format(location) for a in command])
        assert out.exit_code == 2, (what, out.output)
        assert out.output.startswith("error: ") and out.output.count("\n") == 1, (what, out.output)
        assert out.exception is None or isinstance(out.exception, SystemExit)
        said[what] = out.output
    assert "old per-item layout" in said["old layout"]
    assert "not a maskbank store" in said["missing"]
    assert re.search(r"(not a|no) maskbank store", said["a folder of other things"])
    assert "is a file" in said["a file"] and "unknown store scheme 'ftp'" in said["unknown scheme"]
    assert "take no credentials" in said["credentials in the URL"] and "secret" not in said["credentials in the URL"]
    assert not Path(not_stores["missing"]).exists()  # looking created nothing
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.jpg"]


# ----- a store in object storage ------------------------------------------------------------------


def test_commands_on_an_s3_store(s3_env, built, tmp_path):
    url = s3_env
    st = Store.open(url)
    ds = built.dataset
    fp = st.write_manifest(ds, [built.keys[i] for i in ds.image_ids], tmp_path / "hashes.json")
    st.write_proposals(PK, [st.proposals_output(built.keys[i], rle.encode(built.masks[i]), image_hw=built.masks[i].shape[1:])
                            for i in IMAGES])
    maps = {built.keys[i]: built.masks[i][0].astype(np.uint8) for i in IMAGES}
    ids = {k: i for i, k in built.keys.items()}
    seeds = _labels_version(st, "pseudo_labels", maps, ids, {"proposals": PK}, fps=[fp])
    st.write_proposals("n" * 24, [st.proposals_output(built.keys[IMAGES[0]], [], image_hw=(4, 4))])

    out = _cli("inspect", url)
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"{url}  maskbank store, branch main at snapshot ")
    assert f"{PK}/  2 images, 4 proposals" in out.output and f"{'n' * 24}/  1 images" in out.output
    assert f"{seeds}  pseudo_labels  tag pseudo_labels.{seeds}" in out.output
    then = _cli("inspect", url, "--version", seeds)
    assert then.exit_code == 0 and "n" * 24 not in then.output and f"as of version {seeds}" in then.output
    out = _cli("show", url, IMAGES[0], "--layer", "seeds", "--out", tmp_path / "s.png")
    assert out.exit_code == 0, out.output
    h, w = built.masks[IMAGES[0]].shape[1:]
    assert _panel(tmp_path / "s.png", 1, [w, w], (h, w))[30, 50].tolist() == render.label_palette(256)[PERSON].tolist()
    out = _cli("versions", url)
    assert out.exit_code == 0 and f"tag pseudo_labels.{seeds}" in out.output
    out = _cli("versions", "delete", url, seeds)
    assert out.exit_code == 0 and f"`maskbank versions gc {url}`" in out.output, out.output
    out = _cli("versions", "gc", url, "--older-than", "0")
    assert out.exit_code == 0 and re.search(r"deleted \d+ chunks, [1-9]\d* manifests", out.output), out.output
    out = _cli("inspect", url)
    assert out.exit_code == 0 and f"delete version {seeds}" in out.output.splitlines()[0]  # the newest commit
    assert f"{seeds}/" not in out.output and f"tag pseudo_labels.{seeds}" not in out.output


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
    st = Store.open(str(tmp_path / "s.mb"))
    ds = open_dataset(DatasetSpec(path=root, split="train"))
    st.write_manifest(ds, _image_keys(ds), tmp_path / "hashes.json")

    out = _cli("show", st.url, "a", "--layer", "truth", "--out", tmp_path / "a.png")
    assert out.exit_code == 0, out.output
    panel = _panel(tmp_path / "a.png", 1, [32, 32], (24, 32))
    assert panel[5, 7].tolist() == [192, 128, 128] and panel[20, 20].tolist() == [0, 0, 0]
    assert (panel[0] == 255).all()
    out = _cli("show", st.url, "b", "--layer", "truth", "--out", tmp_path / "b.png")
    assert out.exit_code == 1 and "has no pixel truth" in out.output
    out = _cli("show", st.url, "big", "--layer", "truth", "--out", tmp_path / "big.png")
    assert out.exit_code == 0, out.output
    h, w = working_size(sizes["big"])
    assert (h, w) != sizes["big"]
    panel = _panel(tmp_path / "big.png", 1, [w, w], (h, w))
    assert panel[h // 3, w // 2].tolist() == [192, 128, 128] and panel[h - 1, w - 1].tolist() == [0, 0, 0]


def test_show_truth_of_a_masks_dataset_read_with_options(tmp_path):
    """A masks folder read with a class list of its own and another ignore value: the store records how it
    was read, so its truth is read again the same way."""
    root = tmp_path / "scenes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "names.txt").write_text("sky\ngrass\n")
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(root / "images" / "a.png")
    mask = np.zeros((24, 32), np.uint8)
    mask[12:] = 1
    mask[0] = 9  # void
    Image.fromarray(mask, mode="L").save(root / "masks" / "a.png")
    st = Store.open(str(tmp_path / "s.mb"))
    ds = open_dataset(DatasetSpec(path=root, format="masks", classes=root / "names.txt", ignore_index=9))
    assert not ds.has_background
    st.write_manifest(ds, _image_keys(ds), tmp_path / "hashes.json")
    manifest = st.read_manifest(st.list_manifests()[0])
    assert manifest.spec["format"] == "masks" and manifest.spec["ignore_index"] == 9 and not manifest.has_background

    out = _cli("show", st.url, "a", "--layer", "truth", "--out", tmp_path / "a.png")
    assert out.exit_code == 0, out.output
    panel = _panel(tmp_path / "a.png", 1, [32, 32], (24, 32))
    palette = render.label_palette(3)
    assert (panel[0] == 255).all()  # void: ignore
    assert panel[5, 5].tolist() == palette[1].tolist() and panel[20, 5].tolist() == palette[2].tolist()


@pytest.mark.parametrize("command", [["run", "--store", "{}", "--bank", "data"], ["demo", "--store", "{}"]])
def test_run_and_demo_refuse_a_bad_location_before_running(command):
    from maskbank.cli import app

    for location, said in (("ftp://bucket/store", "unknown store scheme 'ftp'"), ("s3://", "names no bucket")):
        out = CliRunner().invoke(app, [a.format(location) for a in command])
        assert out.exit_code == 2 and out.output.startswith("error: ") and out.output.count("\n") == 1, out.output
        assert said in out.output
