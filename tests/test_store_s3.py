"""The store in object storage: a real S3-compatible server (SeaweedFS) on 127.0.0.1."""

import json
import os

import boto3
import numpy as np
import pytest
import xarray as xr
from numcodecs import Zstd

from maskbank.storage.location import parse_location
from maskbank.storage.store import (
    FEATURES,
    POOLED,
    PROPOSALS,
    MissingItemError,
    NotAStoreError,
    Store,
    open_stage,
)
from maskbank.storage.versions import (
    delete_version,
    get_version,
    list_versions,
    publish_version,
    read_version,
)
from maskbank.tasks.geometry import PatchGeometry

from s3server import SECRET_KEY
from test_store_concurrency import append_from_processes, check_all_present


@pytest.fixture
def s3_location(s3_env, tmp_path, monkeypatch):
    """A fresh S3 location; this machine's lock files in a temporary folder."""
    monkeypatch.setenv("MASKBANK_LOCK_DIR", str(tmp_path / "locks"))
    return s3_env


@pytest.fixture
def client(s3_server, s3_env):
    """A plain S3 client of the test server, to look at the objects a store wrote."""
    return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def pooled_of(key: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return Store.pooled_output(key, rng.standard_normal((n, 4)).astype(np.float32), rng.random(n).astype(np.float32),
                               rng.random(n).astype(np.float32), (20, 30))


def features_of(key: str, hw: tuple[int, int], seed: int = 0):
    g = PatchGeometry.for_image(hw, long_side=56, patch_size=14)
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((*g.grid_hw, 8)).astype(np.float32)
    return Store.features_output(key, f, g), f, g


def test_roundtrip(s3_location):
    store = Store.open(s3_location)
    assert store.url == s3_location and not store.location.is_local
    outs = [features_of("a", (30, 47), 1), features_of("b", (60, 20), 2)]
    assert store.write_features("f", [o for o, *_ in outs]) == ["a", "b"]
    store.write_features("f", [features_of("c", (90, 90), 3)[0]])
    store.write_proposals("p", [Store.proposals_output("a", [], image_hw=(30, 47))])
    store.write_pooled("q", [pooled_of("a", 3), pooled_of("b", 0)])

    again = Store.open(s3_location, create=False)
    for o, f, g in outs:
        got, geo = again.read_features("f", o.key)
        np.testing.assert_array_equal(got, f.astype(np.float16))
        assert geo == g and again.has_item(FEATURES, "f", o.key, verify=True)
    assert len(again.read_proposals("p", "a")) == 0 and again.list_items(PROPOSALS, "p") == ["a"]
    got, owner = again.read_elements(POOLED, "q", ["b", "a"], ["features"])
    np.testing.assert_array_equal(got["features"], pooled_of("a", 3).elements["features"])
    assert owner.tolist() == [1, 1, 1]
    ds = xr.open_zarr(again.repo.readonly_session(branch="main").store, group="features/f", consolidated=False)
    assert ds["image"].values.tolist() == ["a", "b", "c"] and ds["features"].dims[0] == "image"
    assert open_stage(s3_location, FEATURES, "f").sizes["image"] == 3

    def doomed(root):
        root.require_group("half").create_array("x", shape=(2,), dtype="int8", fill_value=0)[...] = [1, 2]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        again.transact(doomed, "doomed")
    assert not Store.open(s3_location, create=False).exists("half")

    with pytest.raises(NotAStoreError, match="no maskbank store"):
        Store.open(s3_location + "-absent", create=False)
    query = f"{s3_location}?endpoint_url={os.environ['AWS_ENDPOINT_URL']}&region=us-east-1"
    assert parse_location(query).options and Store.open(query, create=False).list_keys(FEATURES) == ["f"]


def test_versions_and_time_travel(s3_location):
    store = Store.open(s3_location)
    store.write_pooled("p", [pooled_of("a", 2)])
    bank = publish_version(store, "bank", {"k": 1}, code_version="1", arrays={"x": np.arange(4.0)})
    assert publish_version(store, "bank", {"k": 1}, code_version="1") == bank
    preds = publish_version(store, "predictions", {}, [bank.id], code_version="1")
    store.write_pooled("p", [pooled_of("b", 3), pooled_of("a", 5, seed=4)], overwrite=True)

    old = Store.open(s3_location, create=False, version=bank.id)
    assert old.read_only and old.list_items(POOLED, "p") == ["a"]
    assert len(old.read_pooled("p", "a")["area"]) == 2 and not old.exists(preds.path)
    with pytest.raises(PermissionError):
        old.write_pooled("p", [pooled_of("c", 1)])
    assert [v.id for v in list_versions(store)] == [bank.id, preds.id]
    assert read_version(store, bank.id).arrays["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    delete_version(store, preds.id)
    with pytest.raises(MissingItemError):
        get_version(store, preds.id)
    assert Store.open(s3_location, create=False).list_items(POOLED, "p") == ["a", "b"]


def test_two_processes_append_to_one_group(s3_location):
    store = Store.open(s3_location)
    initial = len(list(store.repo.ancestry(branch="main")))
    writers, transactions = 2, 12
    append_from_processes(s3_location, writers, transactions, timeout=120)
    check_all_present(s3_location, writers, transactions, initial)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def readable(body: bytes) -> bytes:
    """An object's bytes and, where it holds a zstd frame (icechunk's metadata files after their header,
    compressed chunks), the decompressed frame too."""
    at = body.find(ZSTD_MAGIC)
    if at < 0:
        return body
    try:
        return body + bytes(Zstd().decode(body[at:]))
    except RuntimeError:
        return body


def test_secret_key_is_stored_nowhere(s3_location, client):
    store = Store.open(s3_location)
    store.write_pooled("p", [pooled_of("a", 2)])
    info = publish_version(store, "bank", {"k": 1, "marker": "visible-0451"}, code_version="1",
                           arrays={"x": np.ones(3), "name": np.array(["chunk-marker-0451"])})
    assert SECRET_KEY not in store.url and SECRET_KEY not in str(store.location)
    assert SECRET_KEY not in json.dumps(get_version(store, info.id).__dict__)
    assert SECRET_KEY not in json.dumps(read_version(store, info.id).attrs)
    for snap in store.repo.ancestry(branch="main"):
        assert SECRET_KEY not in json.dumps(snap.metadata, default=str) and SECRET_KEY not in snap.message

    bucket = parse_location(s3_location).bucket
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.startswith("store/snapshots/") for k in keys) and any(k.startswith("store/refs/") for k in keys)
    secret, seen = SECRET_KEY.encode(), set()
    for key in keys:
        body = readable(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert secret not in body, key
        assert secret not in key.encode()
        seen.update(m for m in (b"visible-0451", b"chunk-marker-0451") if m in body)
    assert seen == {b"visible-0451", b"chunk-marker-0451"}  # the scan reads inside compressed objects


def test_refuses_a_prefix_holding_something_else(s3_location, client):
    loc = parse_location(s3_location)
    old = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"maskbank_store": 1}}).encode()
    client.put_object(Bucket=loc.bucket, Key=f"{loc.prefix}/old/zarr.json", Body=old)
    with pytest.raises(NotAStoreError, match="start a new store"):
        Store.open(f"{s3_location}/old")
    with pytest.raises(NotAStoreError):
        Store.open(f"{s3_location}/old", create=False)
    client.put_object(Bucket=loc.bucket, Key=f"{loc.prefix}/other/notes.txt", Body=b"x")
    with pytest.raises(NotAStoreError, match="not a maskbank store"):
        Store.open(f"{s3_location}/other")
    listed = client.list_objects_v2(Bucket=loc.bucket, Prefix=f"{loc.prefix}/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [f"{loc.prefix}/old/zarr.json", f"{loc.prefix}/other/notes.txt"]
