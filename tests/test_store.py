import json
import os
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image
from pycocotools import mask as mask_utils

from maskbank.storage.datasets import open_dataset
from maskbank.storage.locks import LockTimeout, store_lock
from maskbank.storage.store import (
    FEATURES,
    PROPOSALS,
    MissingItemError,
    NotAStoreError,
    Store,
    decode_id,
    encode_id,
)
from maskbank.tasks.geometry import PatchGeometry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store")


def square_rles(hw=(30, 40), n=4) -> tuple[list[dict], np.ndarray]:
    masks = np.zeros((*hw, n), np.uint8, order="F")
    for i in range(n):
        masks[i * 3 : i * 3 + 10, i * 4 : i * 4 + 6 + i, i] = 1
    return mask_utils.encode(masks), masks.transpose(2, 0, 1).astype(bool)


# ----- opening -------------------------------------------------------------------------------------


def test_open_create_reopen_and_refuse(tmp_path):
    s = Store.open(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"] == {"maskbank_store": 1}
    assert Store.open(tmp_path / "s", create=False).path == s.path

    (tmp_path / "empty").mkdir()
    Store.open(tmp_path / "empty")  # an empty folder becomes a store

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    zarr.open_group(tmp_path / "plain", mode="w", zarr_format=3)
    (tmp_path / "file").write_text("x")
    for p in ("other", "plain", "file"):
        with pytest.raises(NotAStoreError):
            Store.open(tmp_path / p)
    with pytest.raises(NotAStoreError):
        Store.open(tmp_path / "absent", create=False)


# ----- generic items and completion marks ----------------------------------------------------------


def test_item_roundtrip_and_dims(store):
    arrays = {
        "labels": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "score": np.array([0.5, 1.5, 2.5], ">f8"),
        "names": np.array(["a", "bé", ""]),
        "flag": np.bool_(True),
    }
    dims = {"labels": ("y", "x"), "score": ("y",), "names": ("y",)}
    sha = store.write_item("seeds/k1/img", arrays, {"note": "hi", "n": (1, 2)}, dims)
    item = store.read_item("seeds/k1/img")
    assert item.content_sha256 == sha and item.attrs == {"note": "hi", "n": [1, 2]}
    assert item.dims == {"labels": ("y", "x"), "score": ("y",), "names": ("y",), "flag": ()}
    np.testing.assert_array_equal(item.arrays["labels"], arrays["labels"])
    np.testing.assert_array_equal(item.arrays["score"], [0.5, 1.5, 2.5])
    assert item.arrays["names"].tolist() == ["a", "bé", ""] and bool(item.arrays["flag"])

    with pytest.raises(ValueError, match="'y' is 3 long"):
        store.write_item("seeds/k1/bad", {"a": np.zeros(3), "b": np.zeros(4)}, dims={"a": ("y",), "b": ("y",)})
    with pytest.raises(ValueError, match="reserved"):
        store.write_item("seeds/k1/bad", {"a": np.zeros(3)}, {"complete": False})
    store.write_item("seeds/k1/other/deeper", {"a": np.zeros(1)})
    with pytest.raises(ValueError, match="group of items"):
        store.write_item("seeds/k1", {"a": np.zeros(1)}, overwrite=True)
    for bad in ("../x", "_staging/x", "a//b", "a/__x"):
        with pytest.raises(ValueError):
            store.write_item(bad, {"a": np.zeros(1)})
    assert not (store.path / "seeds" / "k1" / "bad").exists()


def test_unmarked_item_is_missing(store):
    path = store.item_path("predictions", "k", "img1")
    g = zarr.open_group(zarr.storage.LocalStore(store.path), path=path, mode="w", zarr_format=3)
    g.create_array("labels", shape=(4, 4), dtype="uint8", dimension_names=("y", "x"))[...] = 1
    assert not store.has_item("predictions", "k", "img1")
    assert store.list_items("predictions", "k") == []
    assert store.missing("predictions", "k", ["img1", "img2"]) == ["img1", "img2"]
    with pytest.raises(MissingItemError):
        store.read_item(path)

    labels = {"labels": np.full((4, 4), 2, np.uint8)}
    store.write_image_item("predictions", "k", "img1", labels, dims={"labels": ("y", "x")})
    assert store.has_item("predictions", "k", "img1") and store.list_items("predictions", "k") == ["img1"]
    assert store.read_image_item("predictions", "k", "img1").arrays["labels"].max() == 2


def test_damaged_item_fails_verification(store):
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    store.write_image_item("seeds", "k", "a", {"v": a})
    store.write_image_item("seeds", "k", "b", {"v": a + 1})
    chunk_a = store.path / store.item_path("seeds", "k", "a") / "v" / "c" / "0" / "0"
    chunk_b = store.path / store.item_path("seeds", "k", "b") / "v" / "c" / "0" / "0"
    chunk_a.write_bytes(chunk_b.read_bytes())  # valid chunk, wrong content
    assert store.has_item("seeds", "k", "a")  # the mark alone still says complete
    assert not store.has_item("seeds", "k", "a", verify=True)
    with pytest.raises(MissingItemError, match="content hash"):
        store.read_image_item("seeds", "k", "a")
    chunk_b.write_bytes(b"\x00garbage")
    assert not store.has_item("seeds", "k", "b", verify=True)

    store.write_image_item("seeds", "k", "a", {"v": a})  # kept: a marked item is not rewritten
    assert not store.has_item("seeds", "k", "a", verify=True)
    store.write_image_item("seeds", "k", "a", {"v": a}, overwrite=True)
    assert store.has_item("seeds", "k", "a", verify=True)


def test_overwrite_semantics_and_delete(store):
    first = store.write_image_item("seeds", "k", "x", {"v": np.zeros(3)})
    assert store.write_image_item("seeds", "k", "x", {"v": np.ones(3)}) == first
    assert store.read_image_item("seeds", "k", "x").arrays["v"].sum() == 0
    second = store.write_image_item("seeds", "k", "x", {"v": np.ones(3)}, overwrite=True)
    assert second != first and store.read_image_item("seeds", "k", "x").arrays["v"].sum() == 3

    store.write_image_item("seeds", "k2", "y", {"v": np.ones(2)})
    assert store.list_keys("seeds") == ["k", "k2"]
    assert store.delete_item("seeds", "k", "x") and not store.delete_item("seeds", "k", "x")
    assert store.list_items("seeds", "k") == []
    assert store.delete_key("seeds", "k2") and store.list_keys("seeds") == ["k"]
    store.write_image_item("seeds", "k2", "y", {"v": np.ones(2)})  # the deleted key's groups come back
    assert store.list_items("seeds", "k2") == ["y"] and store.delete_key("seeds", "k2")
    assert os.listdir(store.path / "_staging") == ["zarr.json"]

    stale, fresh = store.path / "_staging" / "1-dead", store.path / "_staging" / "2-live"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200,) * 2)
    assert store.clean_staging(max_age_s=3600) == 1 and not stale.exists() and fresh.exists()


def test_image_ids_are_encoded(store):
    ids = ["a/b.jpg", "100%.png", ".hidden.jpg", "__init__", "_x", "日本.jpg", "..", "a b+c=d"]
    for i in ids:
        assert decode_id(encode_id(i)) == i and "/" not in encode_id(i)
        store.write_image_item("seeds", "k", i, {"v": np.zeros(1)})
    assert store.list_items("seeds", "k") == sorted(ids)
    assert all(store.has_item("seeds", "k", i) for i in ids)


def test_same_item_written_concurrently_by_threads(store):
    def write(i: int) -> str:
        return store.write_image_item("seeds", "k", "same", {"v": np.full(1000, i, np.int32)}, overwrite=i % 2 == 0)

    with ThreadPoolExecutor(8) as pool:
        hashes = list(pool.map(write, range(16)))
        list(pool.map(lambda i: store.write_image_item("seeds", "k", f"img{i}", {"v": np.full(5, i)}), range(16)))
    item = store.read_image_item("seeds", "k", "same")
    assert item.content_sha256 in hashes and len(set(item.arrays["v"].tolist())) == 1
    assert len(store.list_items("seeds", "k")) == 17
    assert os.listdir(store.path / "_staging") == ["zarr.json"]


def test_same_item_written_concurrently_by_processes(store):
    code = (
        "import sys, numpy as np\n"
        "from maskbank.storage.store import Store\n"
        "s = Store.open(sys.argv[1]); w = int(sys.argv[2])\n"
        "for i in range(6):\n"
        "    s.write_image_item('seeds', 'k', 'same', {'v': np.full(20000, w * 100 + i)}, overwrite=True)\n"
        "    s.write_image_item('seeds', 'k', f'w{w}-{i}', {'v': np.zeros(3)})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.path), str(w)]) for w in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert store.has_item("seeds", "k", "same", verify=True)
    assert len(set(store.read_image_item("seeds", "k", "same").arrays["v"].tolist())) == 1
    assert len(store.list_items("seeds", "k")) == 19


# ----- proposals and features ----------------------------------------------------------------------


def test_proposals_roundtrip(store):
    rles, masks = square_rles()
    str_rles = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
    store.write_proposals("p1", "im", str_rles, predicted_iou=np.linspace(0.5, 0.9, 4), stability_score=[1, 1, 1, 0.5])
    p = store.read_proposals("p1", "im")
    assert len(p) == 4 and p.image_hw == (30, 40)
    assert p.rles[0] == str_rles[0] and p.bbox.dtype == np.int32
    np.testing.assert_array_equal(p.masks(), masks)
    np.testing.assert_array_equal(p.area, masks.sum(axis=(1, 2)))
    np.testing.assert_allclose(p.bbox[1], [4, 3, 7, 10])
    np.testing.assert_allclose(p.predicted_iou, np.linspace(0.5, 0.9, 4), rtol=1e-6)
    assert p.stability_score.dtype == np.float32 and p.stability_score[3] == 0.5

    store.write_proposals("p1", "none", [], image_hw=(30, 40))
    empty = store.read_proposals("p1", "none")
    assert len(empty) == 0 and empty.masks().shape == (0, 30, 40) and np.isnan(empty.predicted_iou).all()
    with pytest.raises(ValueError, match="image_hw"):
        store.write_proposals("p1", "bad", [])
    with pytest.raises(ValueError, match="one value per mask"):
        store.write_proposals("p1", "bad", rles, predicted_iou=[1.0])
    with pytest.raises(ValueError, match="RLE size"):
        store.write_proposals("p1", "bad", rles, image_hw=(31, 40))
    store.write_proposals("p1", "bytes", rles, bbox=p.bbox, area=p.area)  # pycocotools' bytes counts
    assert store.read_proposals("p1", "bytes").rles == p.rles

    ds = store.open_xarray(store.item_path(PROPOSALS, "p1", "im"))
    assert ds["bbox"].dims == ("mask", "xywh") and ds.sizes["mask"] == 4


def test_features_roundtrip_and_xarray(store):
    g = PatchGeometry.for_image((30, 47), long_side=56, patch_size=14)
    f = np.random.default_rng(0).standard_normal((*g.grid_hw, 16)).astype(np.float32)
    store.write_features("f1", "a/b.jpg", f, g)
    got, geo = store.read_features("f1", "a/b.jpg")
    assert got.dtype == np.float16 and geo == g
    np.testing.assert_array_equal(got, f.astype(np.float16))

    ds = xr.open_zarr(store.path, group=store.item_path(FEATURES, "f1", "a/b.jpg"), consolidated=False)
    assert ds["features"].dims == ("y", "x", "channel") and ds["features"].dtype == np.float16
    assert ds.attrs["grid_hw"] == list(g.grid_hw) and ds.attrs["patch_size"] == 14
    assert ds["features"].data.chunksize == got.shape  # one chunk per image

    with pytest.raises(ValueError, match="token grid"):
        store.write_features("f1", "c", f[:-1], g)
    with pytest.raises(ValueError, match="float16 range"):
        store.write_features("f1", "c", f * 1e6, g)


def test_manifest_roundtrip(store, tmp_path):
    root = tmp_path / "set"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (7, 5)).save(root / "images" / name)
    (root / "labels.csv").write_text("image,labels\na.jpg,dog;cat\nb.jpg,\n")
    ds = open_dataset(root)
    fp = store.write_manifest(ds, hash_cache=tmp_path / "h.json")
    assert store.list_manifests() == [fp] and store.write_manifest(ds, hash_cache=tmp_path / "h.json") == fp
    m = store.read_manifest(fp)
    assert m.records == ds.records and m.class_names == ds.class_names and m.name == "set"

    x = store.open_xarray(f"datasets/{fp}/manifest")
    assert x["labels"].dims == ("image", "class")
    assert x["labels"].sel(image="a.jpg").values.tolist() == [0, 1, 1]
    assert x["labelled"].values.tolist() == [True, True, False] and x["height"].values.tolist() == [5, 5, 5]


def test_store_is_a_clean_zarr_hierarchy(store):
    store.write_features("f", "a", np.zeros((1, 1, 2)), PatchGeometry.for_image((10, 10), 14, 14))
    with store_lock(store.path, "demo"):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = [n for n, _ in zarr.open_group(store.path, mode="r").members(max_depth=None)]
    assert "features/f/a/features" in names and "_locks/demo" in names


# ----- locks ---------------------------------------------------------------------------------------


def test_lock_excludes_and_dies_with_holder(store):
    with store_lock(store.path, "x"):
        with pytest.raises(LockTimeout):
            with store_lock(store.path, "x", timeout=0.1):
                pass
        with store_lock(store.path, "y", timeout=0.1):
            pass

    code = (
        "import sys, time\n"
        "from maskbank.storage.locks import store_lock\n"
        "with store_lock(sys.argv[1], 'x'):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(store.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout):
            with store_lock(store.path, "x", timeout=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    t0 = time.monotonic()
    with store_lock(store.path, "x", timeout=5):
        assert time.monotonic() - t0 < 1


def test_lock_serialises_threads(store):
    inside, overlaps = [], []

    def work(_):
        with store_lock(store.path, "t"):
            if inside:
                overlaps.append(1)
            inside.append(1)
            time.sleep(0.01)
            inside.pop()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
