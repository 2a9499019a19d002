"""Damaged store items behind cache hits: a run with ``verify`` finds them by content hash and recomputes
them; without it, a stage that reads one stops with a clear error. Versions are deleted only explicitly,
and not while another version depends on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner
from maskbank.storage.datasets.coco import write_coco_subset

pytestmark = [pytest.mark.real]

TRAIN = ["000000196610", "000000204805"]
VAL = ["000000208901"]


def _run(data, store: Path, verify: bool = False):
    from maskbank.flows.label import label_images
    from maskbank.flows.params import EmbedParams, ProposeParams, RetrieveParams, RunParams
    from maskbank.flows.stages.ingest import DatasetInput

    params = RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224),
                       retrieve=RetrieveParams(rule="majority"), shard_size=2)
    train, val = data
    return label_images(datasets=[DatasetInput(path=str(train))], store=str(store),
                        targets=[DatasetInput(path=str(val))], params=params, device="cpu", verify=verify)


def _snapshot(store: Path) -> dict[str, bytes]:
    """Every item's arrays (bytes) by store path, for the items a run computes."""
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions, version_path

    st = Store.open(store, create=False)
    paths = [version_path(v.id) for v in list_versions(st)]
    for kind in ("proposals", "features", "saliency", "pooled", "labels"):
        for key in st.list_keys(kind):
            paths += [st.item_path(kind, key, i) for i in st.list_items(kind, key)]
    out = {}
    for p in paths:
        item = st.read_item(p)  # verified
        out[p] = b"".join(item.arrays[n].tobytes() for n in sorted(item.arrays) if item.arrays[n].dtype.kind != "T")
    return out


def _overwrite(store: Path, path: str, array: str, value: int = 0) -> None:
    """Rewrite one array of an item with other values: valid chunks, marks intact, content changed."""
    a = zarr.open_array(zarr.storage.LocalStore(store), path=f"{path}/{array}", mode="r+")
    assert not (a[...] == value).all()
    a[...] = np.full(a.shape, value, a.dtype)


def _delete_chunks(store: Path, path: str, array: str) -> None:
    chunks = store / path / array / "c"
    assert chunks.is_dir()
    shutil.rmtree(chunks)


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_root):
    root = tmp_path_factory.mktemp("coco")
    return (write_coco_subset(sample_root, "train2017", root, TRAIN, copy_images=True),
            write_coco_subset(sample_root, "val2017", root, VAL, copy_images=True))


@pytest.fixture(scope="module")
def first(prefect_harness, data, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "s.zarr"
    summary = _run(data, store)
    return store, summary, _snapshot(store)


def test_verify_recomputes_damaged_items_behind_cache_hits(first, data):
    from maskbank.flows.stages.embed import SALIENCY
    from maskbank.flows.stages.labelmaps import LABELS
    from maskbank.storage.store import FEATURES, Store
    from maskbank.storage.versions import version_path

    store, summary, before = first
    st = Store.open(store, create=False)
    (fkey,) = st.list_keys(FEATURES)
    a, b, c = sorted(st.list_items(FEATURES, fkey))
    _overwrite(store, st.item_path(FEATURES, fkey, a), "features")
    _delete_chunks(store, st.item_path(SALIENCY, fkey, b), "saliency")  # the features item of b is intact
    seed_map = st.item_path(LABELS, summary.pseudo_labels, st.list_items(LABELS, summary.pseudo_labels)[0])
    _overwrite(store, seed_map, "labels", value=1)
    _overwrite(store, version_path(summary.bank), "vectors")
    (manifest,) = [st.manifest_path(fp) for fp in st.list_manifests() if fp == summary.labelled]
    _overwrite(store, manifest, "height")
    damaged = [st.item_path(FEATURES, fkey, a), st.item_path(SALIENCY, fkey, b), seed_map,
               version_path(summary.bank), manifest]
    assert all(st.item_complete(p) and not st.item_complete(p, verify=True) for p in damaged)

    plain = _run(data, store)  # cache hits checked by completion marks only: the damage goes unnoticed
    assert plain.computed == {"propose": 0, "embed": 0, "pool": 0}
    assert not any(st.item_complete(p, verify=True) for p in damaged)

    repaired = _run(data, store, verify=True)
    assert repaired.computed == {"propose": 0, "embed": 2, "pool": 0}
    assert (repaired.pseudo_labels, repaired.bank, repaired.predictions) == (
        summary.pseudo_labels, summary.bank, summary.predictions)
    assert all(st.item_complete(p, verify=True) for p in damaged)
    assert _snapshot(store) == before


def test_damaged_input_without_verify_is_a_clear_error(first, data):
    from maskbank.flows.stages.common import DamagedStoreError
    from maskbank.flows.stages.pool import POOLED
    from maskbank.storage.store import FEATURES, Store

    store, summary, before = first
    st = Store.open(store, create=False)
    (fkey,) = st.list_keys(FEATURES)
    (pkey,) = st.list_keys(POOLED)
    victim = st.list_items(FEATURES, fkey)[0]
    _overwrite(store, st.item_path(FEATURES, fkey, victim), "features")
    st.delete_item(POOLED, pkey, victim)  # pooling must run again, and reads the damaged features
    with pytest.raises(DamagedStoreError, match=r"features/.*does not match its content hash.*verify=True"):
        _run(data, store)
    again = _run(data, store, verify=True)
    assert again.computed == {"propose": 0, "embed": 1, "pool": 1}
    assert _snapshot(store) == before


def test_delete_version_command(first):
    import typer

    from maskbank.commands.versions import register
    from maskbank.flows.stages.labelmaps import LABELS
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    store, summary, _ = first
    app = typer.Typer()
    app.command()(lambda: None)
    register(app)
    cli = CliRunner()

    refused = cli.invoke(app, ["versions", "delete", str(store), summary.pseudo_labels])
    assert refused.exit_code == 1 and "is a parent of" in refused.output and "--force" in refused.output
    st = Store.open(store, create=False)
    assert summary.pseudo_labels in {v.id for v in list_versions(st)}

    listed = cli.invoke(app, ["versions", str(store), "--kind", "predictions"])
    assert listed.exit_code == 0 and summary.predictions in listed.output

    evaluation = [v.id for v in list_versions(st, "evaluation") if summary.predictions in v.parents]
    for vid in evaluation + [summary.predictions]:  # leaves first: nothing depends on them
        done = cli.invoke(app, ["versions", "delete", str(store), vid])
        assert done.exit_code == 0 and f"version {vid}" in done.output, done.output
    assert not st.list_items(LABELS, summary.predictions)  # the label maps went with the version

    forced = cli.invoke(app, ["versions", "delete", str(store), summary.pseudo_labels, "--force"])
    assert forced.exit_code == 0, forced.output
    assert summary.pseudo_labels not in {v.id for v in list_versions(st)}
    missing = cli.invoke(app, ["versions", "delete", str(store), summary.pseudo_labels])
    assert missing.exit_code == 1 and "no version" in missing.output
    not_a_store = cli.invoke(app, ["versions", "delete", str(store / "versions"), summary.bank])
    assert not_a_store.exit_code == 2 and "not a maskbank store" in not_a_store.output
