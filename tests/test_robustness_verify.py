"""Damaged store outputs behind cache hits: chunk objects of the repository deleted or corrupted on disk,
values changed under intact marks, rows dropped. A run with ``verify`` finds the damage by content hash and
recomputes what it hit, ending with the same outputs; without it, a stage that reads a damaged input stops
with a clear error that names ``--verify``. Versions are deleted only explicitly, and not while another
version depends on them."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from maskbank.storage.datasets.coco import write_coco_subset

pytestmark = [pytest.mark.real]

TRAIN = ["000000196610", "000000204805"]
VAL = ["000000208901"]


def _params():
    from maskbank.flows.params import EmbedParams, ProposeParams, RetrieveParams, RunParams

    return RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224),
                     retrieve=RetrieveParams(rule="majority"), shard_size=2)


def _run(data, store: Path, verify: bool = False):
    from maskbank.flows.label import label_images
    from maskbank.flows.stages.ingest import DatasetInput

    train, val = data
    return label_images(datasets=[DatasetInput(path=str(train))], store=str(store),
                        targets=[DatasetInput(path=str(val))], params=_params(), device="cpu", verify=verify)


def _store(store: Path):
    from maskbank.storage.store import Store

    return Store.open(store, create=False)


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for name, a in sorted(arrays.items()):
        a = np.asarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update("\0".join(map(str, a.ravel().tolist())).encode() if a.dtype.kind in "TUO" else a.tobytes())
    return h.hexdigest()


def _snapshot(store: Path) -> dict[str, str]:
    """A hash of every output a run computes, read and verified: each version's and manifest's arrays and
    each image's output of every per-image stage and label version."""
    from maskbank.storage.layout import IMAGE_STAGES, LABELS
    from maskbank.storage.versions import list_versions, version_path

    st = _store(store)
    groups = [version_path(v.id) for v in list_versions(st)] + [st.manifest_path(fp) for fp in st.list_manifests()]
    out = {p: _digest(st.read_item(p).arrays) for p in groups}
    for stage in (*IMAGE_STAGES, LABELS):
        for key in st.list_keys(stage):
            for image in st.list_items(stage, key):
                o = st.read_image(stage, key, image, verify=True)
                out[f"{stage}/{key}/{image}"] = _digest({**o.arrays, **o.elements})
    return out


# ----- damage -------------------------------------------------------------------------------------


def _decoded(blob: bytes) -> bytes | None:
    import numcodecs

    try:
        return bytes(numcodecs.Zstd().decode(blob))
    except Exception:
        return None


def _chunk_objects(store: Path, path: str, array: str, row: int = 0) -> list[Path]:
    """The chunk objects of the repository on disk that hold the chunk of ``path/array`` with ``row`` (found
    by their content: the chunk's values, zstd-compressed, as the array's codecs store them)."""
    z = _store(store).root()[f"{path}/{array}"]
    n = z.chunks[0]
    lo = row // n * n
    block = np.asarray(z[lo : lo + n])
    full = np.full(z.chunks, z.fill_value, z.dtype)
    full[tuple(slice(0, s) for s in block.shape)] = block
    want = full.astype(full.dtype.newbyteorder("<")).tobytes()
    found = [p for p in (store / "chunks").iterdir() if _decoded(p.read_bytes()) == want]
    assert found, f"no chunk object holds {path}/{array}[{row}]"
    return found


def _delete(objects: list[Path]) -> None:
    for p in objects:
        p.unlink()


def _garble(objects: list[Path]) -> None:
    """Overwrite with random bytes of the same length: no longer a compressed chunk."""
    for p in objects:
        p.write_bytes(os.urandom(p.stat().st_size))


def _substitute(objects: list[Path], value: int) -> None:
    """Overwrite with a valid compressed chunk of the same shape and length holding other values (a zstd
    frame, then a skippable frame up to the original length): it decodes, but to other content."""
    import numcodecs

    for p in objects:
        size = p.stat().st_size
        values = np.frombuffer(_decoded(p.read_bytes()), np.uint8)
        frame = bytes(numcodecs.Zstd().encode(np.full(values.shape, value, np.uint8).tobytes()))
        pad = size - len(frame) - 8
        assert pad >= 0 and not (values == value).all()
        p.write_bytes(frame + struct.pack("<II", 0x184D2A50, pad) + b"\0" * pad)
        assert _decoded(p.read_bytes()) == bytes([value]) * len(values)


def _overwrite(store: Path, path: str, array: str, value: int = 0) -> None:
    """Commit other values into one array: its chunks valid and its group's marks intact, its content
    changed (as a writer that bypassed maskbank would leave it)."""
    import icechunk
    import zarr

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(store)))
    writable = repo.writable_session("main")
    a = zarr.open_array(writable.store, path=f"{path}/{array}", mode="r+")
    assert not (a[...] == value).all()
    a[...] = np.full(a.shape, value, a.dtype)
    writable.commit(f"overwrite {path}/{array}")


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_root):
    root = tmp_path_factory.mktemp("coco")
    return (write_coco_subset(sample_root, "train2017", root, TRAIN, copy_images=True),
            write_coco_subset(sample_root, "val2017", root, VAL, copy_images=True))


@pytest.fixture(scope="module")
def first(prefect_harness, data, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "s.mb"
    summary = _run(data, store)
    return store, summary, _snapshot(store)


@pytest.fixture
def pristine(first):
    """The first run's store, put back as it was after the test (whatever the test left in it), so that the
    tests sharing it do not depend on each other; the cached task results still describe it."""
    store = first[0]
    backup = store.with_name("backup")
    shutil.copytree(store, backup)
    yield first
    shutil.rmtree(store)
    shutil.copytree(backup, store)
    shutil.rmtree(backup)


def test_verify_recomputes_damaged_outputs_behind_cache_hits(pristine, data):
    from maskbank.storage.layout import FEATURES, LABELS, stage_group
    from maskbank.storage.versions import version_path

    store, summary, before = pristine
    st = _store(store)
    (fkey,) = st.list_keys(FEATURES)
    a, b, _ = sorted(st.list_items(FEATURES, fkey))
    rows = st.rows(FEATURES, fkey)
    features = stage_group(FEATURES, fkey)
    seed_key = st.list_items(LABELS, summary.pseudo_labels)[0]
    (manifest,) = [st.manifest_path(fp) for fp in st.list_manifests() if fp == summary.labelled]

    _delete(_chunk_objects(store, features, "features", rows[a]))  # a's features: gone
    _garble(_chunk_objects(store, features, "saliency", rows[b]))  # b's saliency (its features intact): garbage
    labels = stage_group(LABELS, summary.pseudo_labels)  # a pseudo-label map: decodes to other labels
    _substitute(_chunk_objects(store, labels, "labels", st.rows(LABELS, summary.pseudo_labels)[seed_key]), 1)
    _garble(_chunk_objects(store, version_path(summary.bank), "vectors"))  # the bank's vectors: garbage
    _overwrite(store, manifest, "height")  # inline in icechunk's manifest: changed through a commit
    damaged_images = [(FEATURES, fkey, a), (FEATURES, fkey, b), (LABELS, summary.pseudo_labels, seed_key)]
    damaged_groups = [version_path(summary.bank), manifest]

    def intact(verify: bool) -> list[bool]:
        st = _store(store)
        return ([st.has_item(*i, verify=verify) for i in damaged_images]
                + [st.item_complete(p, verify=verify) for p in damaged_groups])

    assert intact(verify=False) == [True] * 5 and intact(verify=True) == [False] * 5

    plain = _run(data, store)  # cache hits checked by their rows and marks only: the damage goes unnoticed
    assert plain.computed == {"propose": 0, "embed": 0, "pool": 0}
    assert intact(verify=True) == [False] * 5

    repaired = _run(data, store, verify=True)
    assert repaired.computed == {"propose": 0, "embed": 2, "pool": 0}
    assert (repaired.pseudo_labels, repaired.bank, repaired.predictions) == (
        summary.pseudo_labels, summary.bank, summary.predictions)
    assert intact(verify=True) == [True] * 5
    assert _snapshot(store) == before


def test_verify_recomputes_outputs_whose_shared_element_chunk_is_damaged(pristine, data):
    """The pooled features of every image share one chunk (a per-proposal array); deleting its object
    damages all three, and the rewrite appends to the same array."""
    from maskbank.storage.layout import POOLED, stage_group

    store, summary, before = pristine
    st = _store(store)
    (pkey,) = st.list_keys(POOLED)
    _delete(_chunk_objects(store, stage_group(POOLED, pkey), "features"))
    assert not any(st.has_item(POOLED, pkey, i, verify=True) for i in st.list_items(POOLED, pkey))

    repaired = _run(data, store, verify=True)
    assert repaired.computed == {"propose": 0, "embed": 0, "pool": len(TRAIN) + len(VAL)}
    assert repaired.predictions == summary.predictions
    assert _snapshot(store) == before


def test_damaged_input_without_verify_is_a_clear_error(pristine, data, tmp_path):
    from maskbank.cli import app
    from maskbank.flows.stages.common import DamagedStoreError
    from maskbank.storage.layout import FEATURES, POOLED, stage_group

    store, _, before = pristine
    st = _store(store)
    (fkey,) = st.list_keys(FEATURES)
    (pkey,) = st.list_keys(POOLED)
    victim = st.list_items(FEATURES, fkey)[0]
    _delete(_chunk_objects(store, stage_group(FEATURES, fkey), "features", st.rows(FEATURES, fkey)[victim]))
    assert st.drop_images(POOLED, pkey, [victim]) == [victim]  # pooling must run again, and reads the features

    with pytest.raises(DamagedStoreError, match=rf"(?s)features/{fkey}.*--verify") as raised:
        _run(data, store)
    params = tmp_path / "params.json"
    params.write_text(_params().model_dump_json())
    train, val = data
    said = CliRunner().invoke(app, ["run", "--store", str(store), "--bank", str(train), "--target", str(val),
                                    "--params", str(params), "--device", "cpu"])

    again = _run(data, store, verify=True)
    assert again.computed == {"propose": 0, "embed": 1, "pool": 1}
    assert _snapshot(store) == before

    assert said.exit_code == 2, said.output
    assert f"features/{fkey}" in said.output and "--verify" in said.output and "Traceback" not in said.output
    for message in (str(raised.value), said.output):  # what is wrong, in a line or two, not icechunk's internals
        assert victim in message and "cannot be read" in message
        assert len(message.strip().splitlines()) <= 2 and ".rs:" not in message and "context:" not in message, message


def test_delete_version_command(pristine):
    import typer

    from maskbank.commands.versions import register
    from maskbank.storage.layout import LABELS
    from maskbank.storage.versions import list_versions

    store, summary, _ = pristine
    app = typer.Typer()
    app.command()(lambda: None)
    register(app)
    cli = CliRunner()

    refused = cli.invoke(app, ["versions", "delete", str(store), summary.pseudo_labels])
    assert refused.exit_code == 1 and "is a parent of" in refused.output and "--force" in refused.output
    assert summary.pseudo_labels in {v.id for v in list_versions(_store(store))}

    listed = cli.invoke(app, ["versions", str(store), "--kind", "predictions"])
    assert listed.exit_code == 0 and summary.predictions in listed.output

    evaluation = [v.id for v in list_versions(_store(store), "evaluation") if summary.predictions in v.parents]
    for vid in evaluation + [summary.predictions]:  # leaves first: nothing depends on them
        done = cli.invoke(app, ["versions", "delete", str(store), vid])
        assert done.exit_code == 0 and f"version {vid}" in done.output, done.output
    assert not _store(store).list_items(LABELS, summary.predictions)  # the label maps went with the version

    forced = cli.invoke(app, ["versions", "delete", str(store), summary.pseudo_labels, "--force"])
    assert forced.exit_code == 0, forced.output
    assert summary.pseudo_labels not in {v.id for v in list_versions(_store(store))}
    missing = cli.invoke(app, ["versions", "delete", str(store), summary.pseudo_labels])
    assert missing.exit_code == 1 and "no version" in missing.output
    not_a_store = cli.invoke(app, ["versions", "delete", str(store / "chunks"), summary.bank])
    assert not_a_store.exit_code == 2 and "maskbank store" in not_a_store.output
    assert str(store / "chunks") in not_a_store.output
