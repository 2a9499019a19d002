"""The store: opening, per-image outputs as dataset-level arrays, manifests, transactions."""

import json

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image
from pycocotools import mask as mask_utils

from maskbank.storage import image_arrays
from maskbank.storage.datasets import open_dataset
from maskbank.storage.location import LocationError, parse_location
from maskbank.storage.store import (
    FEATURES,
    LABELS,
    POOLED,
    POOLED_SCHEMA,
    PROPOSALS,
    MissingItemError,
    NotAStoreError,
    Store,
    open_stage,
)
from maskbank.tasks.geometry import PatchGeometry


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store")


def square_rles(hw=(30, 40), n=4, shift=0) -> tuple[list[dict], np.ndarray]:
    masks = np.zeros((*hw, n), np.uint8, order="F")
    for i in range(n):
        masks[i * 3 : i * 3 + 10, (i * 4 + shift) % hw[1] : (i * 4 + shift) % hw[1] + 6 + i, i] = 1
    return mask_utils.encode(masks), masks.transpose(2, 0, 1).astype(bool)


def features_of(key: str, hw: tuple[int, int], channels: int = 8, seed: int = 0, saliency: bool = True):
    g = PatchGeometry.for_image(hw, long_side=56, patch_size=14)
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((*g.grid_hw, channels)).astype(np.float32)
    sal = rng.random(g.resized_hw).astype(np.float32) if saliency else None
    return Store.features_output(key, f, g, sal), f, g, sal


def pooled_of(key: str, n: int, channels: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return Store.pooled_output(key, rng.standard_normal((n, channels)).astype(np.float32),
                               rng.random(n).astype(np.float32), rng.random(n).astype(np.float32), (20 + n, 30))


def n_commits(store: Store) -> int:
    return len(list(store.repo.ancestry(branch="main")))


def writable_root(store: Store) -> tuple[icechunk.Session, zarr.Group]:
    session = store.repo.writable_session("main")
    return session, zarr.open_group(session.store, mode="r+")


# ----- opening -------------------------------------------------------------------------------------


def test_open_creates_and_reopens(tmp_path):
    s = Store.open(tmp_path / "missing" / "deeper")
    assert s.url == str(tmp_path / "missing" / "deeper") and not s.read_only
    assert zarr.open_group(s.repo.readonly_session(branch="main").store, mode="r").attrs["maskbank_store"] == 2
    s.write_pooled("k", [pooled_of("a", 3)])
    again = Store.open(tmp_path / "missing" / "deeper", create=False)
    assert again.list_items(POOLED, "k") == ["a"] and again.snapshot_id == s.snapshot_id

    (tmp_path / "empty").mkdir()
    assert Store.open(tmp_path / "empty").list_groups() == []

    mem = Store.open("memory://store-test-open")
    mem.write_pooled("k", [pooled_of("a", 2)])
    assert Store.open("memory://store-test-open", create=False).list_items(POOLED, "k") == ["a"]


def test_open_refuses_what_is_not_a_store(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(NotAStoreError, match="exists and is not a maskbank store"):
        Store.open(tmp_path / "other")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStoreError, match="is a file"):
        Store.open(tmp_path / "file")

    zarr.open_group(tmp_path / "plain", mode="w", zarr_format=3)
    with pytest.raises(NotAStoreError, match="not a maskbank store"):
        Store.open(tmp_path / "plain")

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "bare")))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w", zarr_format=3).attrs["owner"] = "someone else"
    session.commit("not ours")
    with pytest.raises(NotAStoreError, match="icechunk repository but not a maskbank store"):
        Store.open(tmp_path / "bare")
    icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "norootgroup")))
    with pytest.raises(NotAStoreError, match="not a maskbank store"):
        Store.open(tmp_path / "norootgroup")

    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match="no maskbank store"):
        Store.open(tmp_path / "empty", create=False)


def test_open_without_create_leaves_no_trace(tmp_path):
    with pytest.raises(NotAStoreError, match="no maskbank store"):
        Store.open(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
    with pytest.raises(NotAStoreError, match="no maskbank store"):
        Store.open(tmp_path / "absent" / "deeper", create=False, version="0123456789abcdef")
    assert not (tmp_path / "absent").exists()


def test_open_refuses_an_old_layout_store(tmp_path):
    old = tmp_path / "old.mb"
    old.mkdir()
    (old / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"maskbank_store": 1}}))
    (old / "proposals").mkdir()
    for create in (True, False):
        with pytest.raises(NotAStoreError, match="old per-item layout") as e:
            Store.open(old, create=create)
        assert "start a new store" in str(e.value)
    assert sorted(p.name for p in old.iterdir()) == ["proposals", "zarr.json"]


@pytest.mark.parametrize(
    "location, message",
    [
        ("ftp://x/y", "unknown store scheme 'ftp'"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://AKIAEXAMPLE:hunter2-secret@bucket/store", "take no credentials"),
        ("gs://user:hunter2-secret@bucket/store", "take no credentials"),
        ("ftp://user:hunter2-secret@host/store", "take no credentials"),
        ("s3://bucket/store?token=abc", "unknown option"),
        ("", "empty store location"),
    ],
)
def test_bad_locations(location, message):
    with pytest.raises(LocationError, match=message) as e:
        Store.open(location)
    assert "hunter2-secret" not in str(e.value)  # a password in a refused URL is not echoed


def test_locations_parse():
    loc = parse_location("s3://bucket/a/b/?region=eu-west-1&endpoint_url=http://127.0.0.1:9000")
    assert (loc.scheme, loc.bucket, loc.prefix) == ("s3", "bucket", "a/b")
    assert str(loc) == "s3://bucket/a/b?endpoint_url=http://127.0.0.1:9000&region=eu-west-1"
    assert parse_location("relative/dir").path.is_absolute() and parse_location("relative/dir").is_local
    assert not parse_location("memory://x").is_local


# ----- per-image outputs ---------------------------------------------------------------------------


def test_proposals_roundtrip_with_empty_images(store):
    rles, masks = square_rles()
    str_rles = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
    iou = np.linspace(0.5, 0.9, 4)
    outputs = [
        Store.proposals_output("empty-first", [], image_hw=(12, 9)),
        Store.proposals_output("im", str_rles, predicted_iou=iou, stability_score=[1, 1, 1, 0.5]),
        Store.proposals_output("bytes", rles),  # pycocotools' bytes counts
        Store.proposals_output("empty", [], image_hw=(30, 40)),
    ]
    assert store.write_proposals("p1", outputs) == ["empty-first", "im", "bytes", "empty"]
    p = store.read_proposals("p1", "im")
    assert len(p) == 4 and p.image_hw == (30, 40) and p.rles == str_rles and p.bbox.dtype == np.int32
    np.testing.assert_array_equal(p.masks(), masks)
    np.testing.assert_array_equal(p.area, masks.sum(axis=(1, 2)))
    np.testing.assert_array_equal(p.bbox[1], [4, 3, 7, 10])
    np.testing.assert_array_equal(p.predicted_iou, iou.astype(np.float32))
    assert p.stability_score.dtype == np.float32 and p.stability_score.tolist() == [1, 1, 1, 0.5]
    assert store.read_proposals("p1", "bytes").rles == str_rles
    assert np.isnan(store.read_proposals("p1", "bytes").predicted_iou).all()
    for key, hw in (("empty", (30, 40)), ("empty-first", (12, 9))):
        e = store.read_proposals("p1", key)
        assert len(e) == 0 and e.image_hw == hw and e.masks().shape == (0, *hw) and e.bbox.shape == (0, 4)
    assert store.has_item(PROPOSALS, "p1", "empty", verify=True)

    with pytest.raises(ValueError, match="image_hw"):
        Store.proposals_output("bad", [])
    with pytest.raises(ValueError, match="one value per mask"):
        Store.proposals_output("bad", rles, predicted_iou=[1.0])
    with pytest.raises(ValueError, match="RLE size"):
        Store.proposals_output("bad", rles, image_hw=(31, 40))
    with pytest.raises(MissingItemError):
        store.read_proposals("p1", "never")
    with pytest.raises(MissingItemError):
        store.read_proposals("p2", "im")


def test_box_proposals_keep_their_box_classes_and_scores(store):
    """Proposals made from a detector's boxes store each mask's box class and score (an empty image too);
    automatic ones have none, and one key takes one kind."""
    rles, _ = square_rles()
    box_class, box_score = np.array([3, 1, 1, -1]), np.array([0.9, 0.5, 0.4, np.nan])
    outputs = [Store.proposals_output("im", rles, box_class=box_class, box_score=box_score),
               Store.proposals_output("none", [], image_hw=(30, 40), box_class=[], box_score=[])]
    store.write_proposals("boxes", outputs)
    p = store.read_proposals("boxes", "im")
    assert p.box_class.dtype == np.int32 and p.box_class.tolist() == [3, 1, 1, -1]
    np.testing.assert_array_equal(p.box_score, box_score.astype(np.float32))
    assert p.select([3, 0]).box_class.tolist() == [-1, 3] and len(store.read_proposals("boxes", "none").box_class) == 0
    arrays, index = store.read_elements(PROPOSALS, "boxes", ["none", "im"], ["box_class"])
    assert arrays["box_class"].tolist() == [3, 1, 1, -1] and index.tolist() == [1, 1, 1, 1]
    store.write_proposals("plain", [Store.proposals_output("im", rles)])
    assert store.read_proposals("plain", "im").box_class is None
    with pytest.raises(ValueError, match="all with box classes or all without"):
        store.write_proposals("mixed", [outputs[0], Store.proposals_output("other", rles)])
    with pytest.raises(ValueError, match="come together"):
        Store.proposals_output("bad", rles, box_class=box_class)
    with pytest.raises(ValueError, match="one value per mask"):
        Store.proposals_output("bad", rles, box_class=box_class, box_score=[0.5])


@pytest.mark.parametrize("channels", [8, 512])  # many images per chunk, or one image per chunk
def test_features_padding_and_appending_keeps_earlier_images(store, channels):
    first = [features_of("a", (30, 47), channels, seed=1), features_of("b", (60, 20), channels, seed=2)]
    assert store.write_features("f1", [o for o, *_ in first]) == ["a", "b"]
    before = {k: store.read_image(FEATURES, "f1", k) for k in ("a", "b")}
    ds = store.open_xarray("features/f1")
    assert ds.sizes["image"] == 2 and ds["features"].shape == (2, 4, 4, channels)  # padded to the largest grid
    assert ds["features"].data.chunksize[0] == (1 if channels == 512 else 2)
    assert ds["features_shape"].values.tolist() == [[3, 4, channels], [4, 2, channels]]
    assert ds["saliency_shape"].values.tolist() == [[36, 56], [56, 19]]

    # a larger image (and more channels) grows the padded axes; earlier images stay bit-identical
    later = [features_of("c", (90, 90), channels + 4, seed=3), features_of("d", (10, 70), channels, seed=4)]
    assert store.write_features("f1", [o for o, *_ in later]) == ["c", "d"]
    for o, f, g, sal in first + later:
        got, geo = store.read_features("f1", o.key)
        assert got.dtype == np.float16 and got.shape == f.shape and geo == g
        np.testing.assert_array_equal(got, f.astype(np.float16))
        np.testing.assert_array_equal(store.read_saliency("f1", o.key), sal)
    for k in ("a", "b"):
        after = store.read_image(FEATURES, "f1", k)
        for name, a in before[k].arrays.items():
            assert after.arrays[name].dtype == a.dtype and after.arrays[name].tobytes() == a.tobytes()
    assert store.open_xarray("features/f1")["features"].shape == (4, 4, 4, channels + 4)
    assert store.features_have_saliency("f1")

    plain = features_of("a", (30, 47), saliency=False)[0]
    store.write_features("f2", [plain])
    assert store.read_saliency("f2", "a") is None and not store.features_have_saliency("f2")
    with pytest.raises(ValueError, match="all with saliency or all without"):
        store.write_features("f3", [plain, first[0][0]])
    g = first[0][2]
    with pytest.raises(ValueError, match="token grid"):
        Store.features_output("x", first[0][1][:-1], g)
    with pytest.raises(ValueError, match="float16 range"):
        Store.features_output("x", first[0][1] * 1e6, g)


def test_existing_images_are_kept_unless_overwritten(store):
    o1, f1, *_ = features_of("a", (30, 47), seed=1)
    o2, f2, *_ = features_of("a", (30, 47), seed=2)
    store.write_features("f", [o1])
    commits = n_commits(store)
    assert store.write_features("f", [o2]) == [] and n_commits(store) == commits  # kept, nothing committed
    np.testing.assert_array_equal(store.read_features("f", "a")[0], f1.astype(np.float16))
    assert store.write_features("f", [o2], overwrite=True) == ["a"]
    np.testing.assert_array_equal(store.read_features("f", "a")[0], f2.astype(np.float16))
    assert store.open_xarray("features/f").sizes["image"] == 1  # rewritten in place

    store.write_pooled("p", [pooled_of("a", 3, seed=1), pooled_of("b", 2, seed=2)])
    assert store.write_pooled("p", [pooled_of("a", 5, seed=9)]) == []
    assert store.read_pooled("p", "a")["features"].shape == (3, 6)
    assert store.write_pooled("p", [pooled_of("a", 5, seed=9)], overwrite=True) == ["a"]
    got = store.read_pooled("p", "a")
    np.testing.assert_array_equal(got["features"], pooled_of("a", 5, seed=9).elements["features"])
    np.testing.assert_array_equal(store.read_pooled("p", "b")["saliency"], pooled_of("b", 2, seed=2).elements["saliency"])
    # the same key twice in one batch: the first one counts
    assert store.write_pooled("p", [pooled_of("c", 1, seed=1), pooled_of("c", 4, seed=2)]) == ["c"]
    assert len(store.read_pooled("p", "c")["area"]) == 1


def test_drop_then_rewrite(store):
    store.write_pooled("p", [pooled_of(k, n, seed=n) for k, n in (("a", 2), ("b", 3), ("c", 0))])
    assert store.drop_images(POOLED, "p", ["b", "nope"]) == ["b"]
    assert store.list_items(POOLED, "p") == ["a", "c"] and store.missing(POOLED, "p", ["a", "b", "c"]) == ["b"]
    assert not store.has_item(POOLED, "p", "b")
    with pytest.raises(MissingItemError):
        store.read_pooled("p", "b")
    assert store.open_xarray("pooled/p", written_only=True)["image"].values.tolist() == ["a", "c"]
    assert store.write_pooled("p", [pooled_of("b", 7, seed=70)]) == ["b"]  # written again though not overwrite
    np.testing.assert_array_equal(store.read_pooled("p", "b")["features"], pooled_of("b", 7, seed=70).elements["features"])
    assert store.open_xarray("pooled/p").sizes["image"] == 3  # same row
    np.testing.assert_array_equal(store.read_pooled("p", "a")["area"], pooled_of("a", 2, seed=2).elements["area"])
    assert store.read_pooled("p", "c")["features"].shape == (0, 6)

    assert store.drop_images(POOLED, "nokey", ["a"]) == []
    assert store.list_keys(POOLED) == ["p"]
    assert store.delete_key(POOLED, "p") and store.list_keys(POOLED) == [] and not store.delete_key(POOLED, "p")


@pytest.mark.parametrize("block", [65536, 7])
def test_read_elements_equals_per_image_reads(store, monkeypatch, block):
    monkeypatch.setattr(image_arrays, "READ_BLOCK", block)
    counts = [3, 0, 5, 1, 12, 2, 0, 4, 9, 6]
    keys = [f"img{i:02d}" for i in range(len(counts))]
    store.write_pooled("p", [pooled_of(k, n, seed=i) for i, (k, n) in enumerate(zip(keys[:6], counts[:6]))])
    store.write_pooled("p", [pooled_of(k, n, seed=i + 6) for i, (k, n) in enumerate(zip(keys[6:], counts[6:]))])
    store.write_pooled("p", [pooled_of("img02", 8, seed=99)], overwrite=True)  # its elements now at the end
    order = ["img08", "img02", "img06", "img00", "img04", "img09", "img01", "img03", "img07", "img05", "img00"]
    got, owner = store.read_elements(POOLED, "p", order, ["features", "saliency", "area"])
    for name in ("features", "saliency", "area"):
        want = np.concatenate([store.read_pooled("p", k)[name] for k in order])
        np.testing.assert_array_equal(got[name], want)
    sizes = [len(store.read_pooled("p", k)["area"]) for k in order]
    np.testing.assert_array_equal(owner, np.repeat(np.arange(len(order)), sizes))

    rles, _ = square_rles()
    store.write_proposals("q", [Store.proposals_output("x", rles), Store.proposals_output("y", [], image_hw=(30, 40)),
                                Store.proposals_output("z", rles[:2])])
    got, owner = store.read_elements(PROPOSALS, "q", ["z", "y", "x"], ["rle", "bbox"])
    assert got["rle"].tolist() == [r["counts"].decode() for r in rles[:2] + rles] and owner.tolist() == [0, 0, 2, 2, 2, 2]
    with pytest.raises(MissingItemError, match="2 image"):
        store.read_elements(PROPOSALS, "q", ["x", "nope", "nada"], ["rle"])


def test_damaged_image_fails_verification(store):
    outs = [features_of("a", (30, 47), seed=1), features_of("b", (30, 47), seed=2)]
    store.write_features("f", [o for o, *_ in outs])
    store.write_pooled("p", [pooled_of("a", 3), pooled_of("b", 4)])
    assert store.has_item(FEATURES, "f", "a", verify=True) and store.has_item(POOLED, "p", "b", verify=True)

    session, root = writable_root(store)
    row = store.rows(FEATURES, "f")["a"]
    z = root["features/f/features"]
    z[row] = np.asarray(z[row]) + np.float16(1)
    p = root["pooled/p"]
    lo = int(p["offset"][store.rows(POOLED, "p")["b"]])
    p["saliency"][lo] = 42.0
    session.commit("damage two images behind the store's back")
    store.refresh()

    assert store.has_item(FEATURES, "f", "a") and not store.has_item(FEATURES, "f", "a", verify=True)
    assert store.has_item(FEATURES, "f", "b", verify=True)
    assert not store.has_item(POOLED, "p", "b", verify=True) and store.has_item(POOLED, "p", "a", verify=True)
    with pytest.raises(MissingItemError, match="content hash"):
        store.read_features("f", "a")
    assert store.read_features("f", "a", verify=False)[0].shape == outs[0][1].shape
    with pytest.raises(MissingItemError, match="content hash"):
        store.read_pooled("p", "b")
    # recomputed: overwrite repairs it
    store.write_features("f", [outs[0][0]], overwrite=True)
    assert store.has_item(FEATURES, "f", "a", verify=True)


def test_stage_group_reads_as_xarray(store):
    outs = [features_of(k, hw, seed=i) for i, (k, hw) in enumerate([("k0", (30, 47)), ("k1", (56, 56)), ("k2", (60, 20))])]
    store.write_features("f1", [o for o, *_ in outs])
    ds = xr.open_zarr(store.repo.readonly_session(branch="main").store, group="features/f1", consolidated=False)
    assert ds["features"].dims == ("image", "y", "x", "channel") and ds["features"].dtype == np.float16
    assert ds["image"].values.tolist() == ["k0", "k1", "k2"]
    one = ds.sel(image="k2")
    h, w, c = one["features_shape"].values.tolist()
    np.testing.assert_array_equal(one["features"].values[:h, :w, :c], outs[2][1].astype(np.float16))
    assert one["grid_hw"].values.tolist() == list(outs[2][2].grid_hw)
    assert int(one["patch_size"]) == 14

    store.write_pooled("p", [pooled_of("k0", 2), pooled_of("k1", 3)])
    pd = store.open_xarray("pooled/p")
    assert pd["features"].dims == ("proposal", "channel") and pd.sizes["proposal"] == 5
    assert pd["proposal_image"].values.tolist() == [0, 0, 1, 1, 1]


def make_dataset(root):
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        Image.new("RGB", (7 + i, 5), (40 * i, 0, 0)).save(root / "images" / name)
    (root / "labels.csv").write_text("image,labels\na.jpg,dog;cat\nb.jpg,\n")
    return open_dataset(root)


def test_manifest_and_open_stage_by_dataset_image_ids(store, tmp_path):
    ds = make_dataset(tmp_path / "set")
    keys = ["ka", "kb", "kc"]
    fp = store.write_manifest(ds, keys, hash_cache=tmp_path / "h.json")
    assert store.list_manifests() == [fp]
    commits = n_commits(store)
    assert store.write_manifest(ds, keys, hash_cache=tmp_path / "h.json") == fp and n_commits(store) == commits
    m = store.read_manifest(fp)
    assert m.records == ds.records and m.class_names == ds.class_names and m.image_ids == ["a.jpg", "b.jpg", "c.jpg"]
    x = store.open_xarray(store.manifest_path(fp))
    assert x["labels"].dims == ("image", "class")
    assert x["labels"].sel(image="a.jpg").values.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="image keys"):
        store.write_manifest(ds, keys[:2], hash_cache=tmp_path / "h.json")

    outs = {k: features_of(k, (20 + 10 * i, 30), seed=i) for i, k in enumerate(["kc", "zz", "ka"])}
    store.write_features("f1", [o for o, *_ in outs.values()])
    by_id = open_stage(store.url, FEATURES, "f1", dataset=fp)
    assert sorted(by_id["image"].values.tolist()) == ["a.jpg", "c.jpg"]  # kb has no features, zz is not in it
    for image_id, key in (("a.jpg", "ka"), ("c.jpg", "kc")):
        one = by_id.sel(image=image_id)
        assert str(one["image_key"].values) == key
        h, w, c = one["features_shape"].values.tolist()
        np.testing.assert_array_equal(one["features"].values[:h, :w, :c], outs[key][1].astype(np.float16))
    assert open_stage(store.url, FEATURES, "f1").sizes["image"] == 3

    # the same photo twice in a dataset: two image ids, one content key, one stored output
    (tmp_path / "twin" / "images").mkdir(parents=True)
    for name in ("x.jpg", "y.jpg"):
        Image.new("RGB", (9, 5), (0, 90, 0)).save(tmp_path / "twin" / "images" / name)
    fp2 = store.write_manifest(open_dataset(tmp_path / "twin"), ["kc", "kc"], hash_cache=tmp_path / "h.json")
    twice = open_stage(store.url, FEATURES, "f1", dataset=fp2)
    assert twice["image"].values.tolist() == ["x.jpg", "y.jpg"] and twice["image_key"].values.tolist() == ["kc", "kc"]
    np.testing.assert_array_equal(twice["features"].sel(image="x.jpg").values, twice["features"].sel(image="y.jpg").values)


def test_label_maps_and_writer(store):
    rng = np.random.default_rng(0)
    vid = "0123456789abcdef"
    maps = [(f"k{i}", rng.integers(0, 5, (10 + 3 * i, 12 - i), dtype=np.uint8), f"img-{i}.jpg") for i in range(5)]
    assert store.write_label_maps(vid, maps[:1]) == ["k0"]
    commits = n_commits(store)
    with store.label_map_writer(vid, batch=2) as w:
        for k, m, i in maps[1:]:
            w.add(k, m, i)
    assert n_commits(store) == commits + 2
    for k, m, _ in maps:
        got = store.read_label_map(vid, k)
        assert got.dtype == np.uint8 and got.shape == m.shape
        np.testing.assert_array_equal(got, m)
    assert store.label_maps_missing(vid, ["k0", "k9", "k4"]) == ["k9"]
    ds = open_stage(store.url, LABELS, vid)
    assert ds["labels"].dims == ("image", "y", "x") and ds["source_image_id"].sel(image="k3").values == "img-3.jpg"
    with pytest.raises(ValueError, match="not a version id"):
        store.write_label_maps("not-a-version", maps[:1])

    # a writer leaving on an exception writes nothing more
    with pytest.raises(RuntimeError), store.label_map_writer("fedcba9876543210", batch=10) as w:
        w.add("k0", maps[0][1], "x")
        raise RuntimeError("stop")
    assert store.label_maps_missing("fedcba9876543210", ["k0"]) == ["k0"]


# ----- transactions --------------------------------------------------------------------------------


def test_transact_commits_once(store):
    before = n_commits(store)

    def write(root):
        g = root.require_group("scratch")
        g.create_array("a", shape=(3,), dtype="int32", fill_value=0)[...] = [1, 2, 3]
        g.create_array("b", shape=(2,), dtype="float32", fill_value=0)[...] = [0.5, 1.5]
        return "done"

    result, snapshot = store.transact(write, "two arrays", {"why": "test"})
    assert result == "done" and snapshot == store.snapshot_id and n_commits(store) == before + 1
    tip = next(iter(store.repo.ancestry(branch="main")))
    assert tip.id == snapshot and tip.message == "two arrays" and tip.metadata["why"] == "test"
    assert store.root()["scratch/a"][...].tolist() == [1, 2, 3]
    assert store.transact(lambda root: "nothing", "no change") == ("nothing", None)
    assert n_commits(store) == before + 1


def test_failed_transaction_leaves_nothing(store):
    store.write_pooled("p", [pooled_of("a", 2)])
    tip = store.snapshot_id

    def write(root):
        root.require_group("half").create_array("x", shape=(2,), dtype="int8", fill_value=0)[...] = [1, 2]
        image_arrays.write_images(root, "pooled/p", POOLED_SCHEMA, [pooled_of("b", 3)])
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store.transact(write, "doomed")
    store.refresh()
    assert store.snapshot_id == tip and not store.exists("half") and store.list_items(POOLED, "p") == ["a"]
    fresh = Store.open(store.url, create=False)
    assert not fresh.exists("half") and fresh.list_items(POOLED, "p") == ["a"]
    assert store.write_pooled("p", [pooled_of("b", 3)]) == ["b"]  # the store still works
    assert Store.open(store.url).list_items(POOLED, "p") == ["a", "b"]


def test_reader_sees_its_snapshot_until_refresh(store):
    store.write_pooled("p", [pooled_of("a", 2)])
    reader = Store.open(store.url, create=False)
    assert reader.list_items(POOLED, "p") == ["a"]
    store.write_pooled("p", [pooled_of("b", 3)])
    store.write_features("f", [features_of("a", (30, 30))[0]])
    assert reader.list_items(POOLED, "p") == ["a"] and not reader.has_item(POOLED, "p", "b")
    assert reader.list_keys(FEATURES) == []
    np.testing.assert_array_equal(reader.read_pooled("p", "a")["area"], pooled_of("a", 2).elements["area"])
    reader.refresh()
    assert reader.list_items(POOLED, "p") == ["a", "b"] and reader.list_keys(FEATURES) == ["f"]
    assert reader.snapshot_id == store.snapshot_id
