from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from maskbank.storage.store import MissingItemError, Store
from maskbank.storage.versions import (
    VersionInUseError,
    children,
    delete_version,
    get_version,
    list_versions,
    publish_version,
    read_version,
    version_id,
)

DATA = "ab" * 32


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store")


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


def test_publish_once_list_get_read(store):
    protos = np.arange(12, dtype=np.float32).reshape(3, 4)
    bank = publish_version(
        store, "bank", {"k": 3, "root": Path("/x")}, datasets=[DATA], code_version="1",
        arrays={"prototypes": protos, "label": np.array([1, 1, 2])},
        dims={"prototypes": ("prototype", "channel"), "label": ("prototype",)},
    )
    assert bank.params == {"k": 3, "root": "/x"} and bank.parents == () and bank.datasets == (DATA,)
    again = publish_version(
        store, "bank", {"k": 3, "root": Path("/x")}, datasets=[DATA], code_version="1",
        arrays={"prototypes": protos * 0}, dims={"prototypes": ("prototype", "channel")},
    )
    assert again == bank  # same id: the first publication stands, untouched
    np.testing.assert_array_equal(read_version(store, bank.id).arrays["prototypes"], protos)

    preds = publish_version(store, "predictions", {"tau": 0.2}, [bank.id], [DATA], code_version="1")
    metrics = publish_version(
        store, "metrics", {}, [preds.id], [DATA], code_version="1", metrics={"miou": np.float32(0.5), "iou": [0.9, 0.1]}
    )
    assert get_version(store, metrics.id).metrics == {"miou": 0.5, "iou": [0.9, 0.1]}
    assert [v.id for v in list_versions(store)] == [bank.id, preds.id, metrics.id]
    assert [v.id for v in list_versions(store, kind="predictions")] == [preds.id]
    assert children(store, bank.id) == [preds.id]
    ds = store.open_xarray(bank.path)
    assert ds["prototypes"].dims == ("prototype", "channel") and ds.attrs["kind"] == "bank"

    with pytest.raises(MissingItemError, match="parent versions"):
        publish_version(store, "predictions", {}, ["0123456789abcdef"], code_version="1")
    with pytest.raises(MissingItemError):
        get_version(store, "0123456789abcdef")


def test_delete_refuses_parents_unless_forced(store):
    a = publish_version(store, "bank", {"k": 1}, code_version="1")
    b = publish_version(store, "predictions", {}, [a.id], code_version="1")
    c = publish_version(store, "predictions", {"x": 1}, [a.id], code_version="1")
    with pytest.raises(VersionInUseError, match=b.id):
        delete_version(store, a.id)
    delete_version(store, b.id)
    with pytest.raises(VersionInUseError):
        delete_version(store, a.id)
    delete_version(store, a.id, force=True)
    assert [v.id for v in list_versions(store)] == [c.id]
    with pytest.raises(MissingItemError):
        delete_version(store, a.id)


def test_concurrent_publish_gives_one_version(store):
    def publish(_):
        return publish_version(store, "bank", {"k": 2}, code_version="1", arrays={"v": np.ones(100)})

    with ThreadPoolExecutor(6) as pool:
        infos = list(pool.map(publish, range(12)))
    assert len({(i.id, i.created) for i in infos}) == 1 and len(list_versions(store)) == 1
