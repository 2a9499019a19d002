"""Versions: content-addressed ids, commits and immutable tags, time travel, deletion and garbage collection."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from maskbank.storage.layout import parse_version_tag, version_tag
from maskbank.storage.store import LABELS, POOLED, MissingItemError, Store, open_stage
from maskbank.storage.versions import (
    VersionInUseError,
    children,
    collect_garbage,
    delete_version,
    get_version,
    list_versions,
    publish_version,
    read_version,
    version_exists,
    version_id,
)

DATA = "ab" * 32


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store")


def pooled_of(key: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return Store.pooled_output(key, rng.standard_normal((n, 4)).astype(np.float32), rng.random(n).astype(np.float32),
                               rng.random(n).astype(np.float32), (20, 30))


def n_commits(store: Store) -> int:
    return len(list(store.repo.ancestry(branch="main")))


def test_version_id_is_content_addressed():
    base = version_id("bank", {"k": 3, "tau": 0.5}, ["p2", "p1"], [DATA], code_version="1")
    assert len(base) == 16 and int(base, 16) >= 0
    assert base == version_id("bank", {"tau": 0.5, "k": np.int64(3)}, ["p1", "p2"], [DATA], code_version="1")
    others = {
        version_id("bank", {"k": 4, "tau": 0.5}, ["p1", "p2"], [DATA], code_version="1"),
        version_id("bank", {"k": 3, "tau": 0.5}, ["p1"], [DATA], code_version="1"),
        version_id("bank", {"k": 3, "tau": 0.5}, ["p1", "p2"], ["cd" * 32], code_version="1"),
        version_id("bank", {"k": 3, "tau": 0.5}, ["p1", "p2"], [DATA], code_version="2"),
        version_id("predictions", {"k": 3, "tau": 0.5}, ["p1", "p2"], [DATA], code_version="1"),
    }
    assert base not in others and len(others) == 5
    with pytest.raises(TypeError, match="not JSON data"):
        version_id("bank", {"f": object()}, code_version="1")
    assert parse_version_tag(version_tag("bank", base)) == ("bank", base)
    assert parse_version_tag("bank.xyz") is None and parse_version_tag("release-1") is None


def test_publish_tags_once_and_reads(store):
    protos = np.arange(12, dtype=np.float32).reshape(3, 4)
    bank = publish_version(
        store, "bank", {"k": 3, "root": Path("/x")}, datasets=[DATA], code_version="1",
        arrays={"prototypes": protos, "label": np.array([1, 1, 2])},
        dims={"prototypes": ("prototype", "channel"), "label": ("prototype",)},
    )
    assert bank.params == {"k": 3, "root": "/x"} and bank.parents == () and bank.datasets == (DATA,)
    assert bank.tag == f"bank.{bank.id}" and bank.tag in store.repo.list_tags()
    tip = next(iter(store.repo.ancestry(branch="main")))
    assert store.repo.lookup_tag(bank.tag) == tip.id and tip.metadata["version"] == bank.id
    assert tip.message == f"publish bank {bank.id}"

    commits = n_commits(store)
    again = publish_version(
        store, "bank", {"k": 3, "root": Path("/x")}, datasets=[DATA], code_version="1",
        arrays={"prototypes": protos * 0}, dims={"prototypes": ("prototype", "channel")},
    )
    assert again == bank and n_commits(store) == commits  # same id: the first publication stands, untouched
    np.testing.assert_array_equal(read_version(store, bank.id).arrays["prototypes"], protos)
    assert read_version(store, bank.id).dims["label"] == ("prototype",)

    preds = publish_version(store, "predictions", {"tau": 0.2}, [bank.id], [DATA], code_version="1")
    evaluation = publish_version(
        store, "evaluation", {}, [preds.id], [DATA], code_version="1", metrics={"miou": np.float32(0.5), "iou": [0.9, 0.1]}
    )
    assert get_version(store, evaluation.id).metrics == {"miou": 0.5, "iou": [0.9, 0.1]}
    assert [v.id for v in list_versions(store)] == [bank.id, preds.id, evaluation.id]
    assert [v.id for v in list_versions(store, kind="predictions")] == [preds.id]
    assert children(store, bank.id) == [preds.id] and version_exists(store, preds.id)
    ds = store.open_xarray(bank.path)
    assert ds["prototypes"].dims == ("prototype", "channel") and ds.attrs["kind"] == "bank"
    assert sorted(store.repo.list_tags()) == sorted(v.tag for v in (bank, preds, evaluation))

    with pytest.raises(MissingItemError, match="parent versions"):
        publish_version(store, "predictions", {}, ["0123456789abcdef"], code_version="1")
    assert not version_exists(store, "0123456789abcdef")
    with pytest.raises(MissingItemError):
        get_version(store, "0123456789abcdef")
    with pytest.raises(MissingItemError):
        read_version(store, "0123456789abcdef")


def test_store_at_a_version_is_read_only_and_travels_in_time(store):
    store.write_pooled("p", [pooled_of("a", 2)])
    vid = version_id("predictions", {"t": 1}, code_version="1")
    maps = [("a", np.full((4, 5), 3, np.uint8), "a.jpg")]
    store.write_label_maps(vid, maps)
    info = publish_version(store, "predictions", {"t": 1}, code_version="1", arrays={"score": np.array([0.25])})
    assert info.id == vid

    # later writes on the branch: more images, the same image recomputed, the label maps replaced
    store.write_pooled("p", [pooled_of("b", 3)])
    store.write_pooled("p", [pooled_of("a", 7, seed=5)], overwrite=True)
    store.write_label_maps(vid, [("z", np.zeros((2, 2), np.uint8), "z.jpg")])
    store.delete_paths([info.path])

    old = Store.open(store.url, create=False, version=vid)
    assert old.read_only and old.version_id == vid and old.snapshot_id == store.repo.lookup_tag(info.tag)
    assert old.list_items(POOLED, "p") == ["a"]
    np.testing.assert_array_equal(old.read_pooled("p", "a")["features"], pooled_of("a", 2).elements["features"])
    np.testing.assert_array_equal(old.read_label_map(vid, "a"), maps[0][1])
    assert old.label_maps_missing(vid, ["a", "z"]) == ["z"]
    assert old.read_item(info.path).arrays["score"].tolist() == [0.25]
    assert get_version(old, vid) == info
    with pytest.raises(PermissionError, match="read-only"):
        old.write_pooled("p", [pooled_of("c", 1)])
    with pytest.raises(PermissionError):
        old.transact(lambda root: None, "nothing")
    old.refresh()
    assert old.list_items(POOLED, "p") == ["a"]  # still the version's state

    assert store.list_items(POOLED, "p") == ["a", "b"] and len(store.read_pooled("p", "a")["area"]) == 7
    assert read_version(store, vid).arrays["score"].tolist() == [0.25]  # read as published, from its tag
    assert open_stage(store.url, LABELS, vid, version=vid)["image"].values.tolist() == ["a"]
    assert sorted(open_stage(store.url, LABELS, vid)["image"].values.tolist()) == ["a", "z"]
    with pytest.raises(MissingItemError, match="no version"):
        Store.open(store.url, create=False, version="0123456789abcdef")
    with pytest.raises(ValueError, match="not a version id"):
        Store.open(store.url, create=False, version="latest")


def test_delete_refuses_parents_unless_forced(store):
    a = publish_version(store, "bank", {"k": 1}, code_version="1", arrays={"x": np.ones(3)})
    b = publish_version(store, "predictions", {}, [a.id], code_version="1")
    c = publish_version(store, "predictions", {"x": 1}, [a.id], code_version="1")
    store.write_label_maps(c.id, [("k", np.ones((3, 3), np.uint8), "k.jpg")])
    with pytest.raises(VersionInUseError, match=b.id):
        delete_version(store, a.id)
    delete_version(store, b.id)
    with pytest.raises(VersionInUseError):
        delete_version(store, a.id)
    assert version_exists(store, a.id)
    delete_version(store, a.id, force=True)
    assert [v.id for v in list_versions(store)] == [c.id]
    assert a.tag not in store.repo.list_tags() and b.tag not in store.repo.list_tags()
    assert not store.exists(a.path) and not store.exists(b.path)
    with pytest.raises(MissingItemError):
        delete_version(store, a.id)
    with pytest.raises(MissingItemError):
        Store.open(store.url, create=False, version=a.id)

    delete_version(store, c.id)  # c's label maps go with it
    assert not store.exists(c.path) and not store.exists(f"labels/{c.id}") and list_versions(store) == []


def test_store_at_a_version_cannot_delete_it(store):
    a = publish_version(store, "bank", {"k": 1}, code_version="1", arrays={"x": np.ones(3)})
    old = Store.open(store.url, create=False, version=a.id)
    with pytest.raises(PermissionError):
        delete_version(old, a.id)
    assert version_exists(store, a.id) and a.tag in store.repo.list_tags() and store.exists(a.path)
    delete_version(store, a.id)
    assert not version_exists(store, a.id) and not store.exists(a.path)


def test_deleted_version_can_be_published_again(store):
    a = publish_version(store, "bank", {"k": 1}, code_version="1", arrays={"x": np.ones(3)})
    delete_version(store, a.id)
    again = publish_version(store, "bank", {"k": 1}, code_version="1", arrays={"x": np.full(3, 2.0)})
    assert again.id == a.id and version_exists(store, a.id)
    assert read_version(store, a.id).arrays["x"].tolist() == [2.0, 2.0, 2.0]
    assert Store.open(store.url, create=False, version=a.id).read_item(a.path).arrays["x"].tolist() == [2.0] * 3


def test_collect_garbage_deletes_unreachable_data(store):
    keep = publish_version(store, "bank", {"k": 1}, code_version="1",
                           arrays={"x": np.arange(5000, dtype=np.float32)})
    gone = publish_version(store, "bank", {"k": 2}, code_version="1",
                           arrays={"x": np.random.default_rng(0).random(20000).astype(np.float32)})
    store.write_pooled("p", [pooled_of(f"i{i}", 50, seed=i) for i in range(4)])
    store.write_pooled("p", [pooled_of("i0", 60, seed=9)], overwrite=True)
    store.delete_key(POOLED, "p")
    delete_version(store, gone.id)

    dry = collect_garbage(store, older_than=timedelta(0), dry_run=True)
    assert dry["snapshots_expired"] == 0
    summary = collect_garbage(store, older_than=timedelta(0))
    assert summary["bytes_deleted"] > 0 and summary["chunks_deleted"] > 0 and summary["snapshots_expired"] > 0

    for s in (store, Store.open(store.url, create=False), Store.open(store.url, create=False, version=keep.id)):
        s.refresh()
        assert [v.id for v in list_versions(s)] == [keep.id]
        np.testing.assert_array_equal(read_version(s, keep.id).arrays["x"], np.arange(5000, dtype=np.float32))
    with pytest.raises(MissingItemError):
        Store.open(store.url, create=False, version=gone.id)
    # the store keeps working
    store.write_pooled("p", [pooled_of("n", 3)])
    assert store.list_items(POOLED, "p") == ["n"]
    assert collect_garbage(store, older_than=timedelta(days=1))["chunks_deleted"] == 0


def test_concurrent_publish_gives_one_version(store):
    def publish(_):
        return publish_version(store, "bank", {"k": 2}, code_version="1", arrays={"v": np.ones(100)})

    with ThreadPoolExecutor(6) as pool:
        infos = list(pool.map(publish, range(12)))
    assert len({(i.id, i.created) for i in infos}) == 1 and len(list_versions(store)) == 1
    assert [t for t in store.repo.list_tags()] == [infos[0].tag]
