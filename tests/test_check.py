"""``maskbank check`` and ``maskbank run --dry-run``: the datasets read as a run reads them, the classes and what
looks wrong with them, the parameters in effect, the work a store still needs and its time, with nothing
written; ``maskbank params`` lists every parameter."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from maskbank import cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    colours = {"a.jpg": (200, 10, 10), "b.jpg": (10, 200, 10), "c.jpg": (10, 10, 200), "d.jpg": (90, 90, 90)}
    for name, colour in colours.items():
        Image.fromarray(np.full((32, 48, 3), colour, np.uint8)).save(root / name)
    (root / "labels.csv").write_text("image,labels\na.jpg,person;sky\nb.jpg,person;sky;dog\nc.jpg,persno;sky\n")
    return root


def _check(*args: str):
    return CliRunner().invoke(cli.app, ["check", *args])


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")}


def test_check_reads_the_datasets_and_flags_what_looks_wrong(photos, tmp_path, monkeypatch):
    from maskbank.storage.datasets.hashing import default_hash_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = _tree(photos)
    out = _check(str(photos), "--store", str(tmp_path / "store"), "--device", "cpu")
    assert out.exit_code == 0, out.output
    text = out.output
    assert "labelled: " in text and "4 images, 3 labelled, 1 unlabelled, 0 with pixel truth, 0 skipped" in text
    assert re.search(r"^  sky +3$", text, re.M) and re.search(r"^  person +2$", text, re.M)
    assert re.search(r"^warning: thin classes, in fewer than 4 labelled images.*: dog, persno, person, sky$", text, re.M)
    assert "warning: classes in every labelled image" in text and ": sky" in text
    assert "class 'persno' (1 image) looks like 'person' (2 images); if it is a typo: --rename 'persno=person'" in text
    assert "propose: method=automatic, model=mobile_sam" in text and "shard_size: 8" in text
    assert "store " in text and "new, created by the run" in text
    assert "still to compute: proposals 4, features 4, pooled 4" in text
    assert re.search(r"^time: about \d+ s on this machine's \d+ CPU cores", text, re.M)
    assert _tree(photos) == before and not (tmp_path / "store").exists()
    assert not default_hash_cache(photos).exists()  # file hashes were not cached either


def test_check_counts_what_a_store_already_holds(photos, tmp_path):
    from maskbank.flows.params import ProposeParams
    from maskbank.flows.stages.ingest import content_keys
    from maskbank.flows.stages.propose import proposals_key
    from maskbank.storage.datasets import open_dataset
    from maskbank.storage.store import Store
    from maskbank.tasks import rle

    ds = open_dataset(photos)
    keys = content_keys(ds, tmp_path / "hashes.json", save=False)
    st = Store.open(str(tmp_path / "store"))
    mask = np.zeros((1, 32, 48), bool)
    mask[0, :10, :10] = True
    st.write_proposals(proposals_key(ProposeParams()), [st.proposals_output(k, rle.encode(mask), image_hw=(32, 48))
                                                        for k in keys[:3]])
    out = _check(str(photos), "--store", str(tmp_path / "store"), "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert "exists" in out.output and "still to compute: proposals 1, features 4, pooled 4" in out.output
    out = _check(str(photos), "--store", str(tmp_path / "store"), "--device", "cpu", "--params", str(_params(tmp_path)))
    assert "still to compute: proposals 4," in out.output  # other parameters: another stage key


def _params(tmp_path: Path) -> Path:
    p = tmp_path / "light.yaml"
    p.write_text("propose:\n  points_per_side: 4\n")
    return p


def test_check_errors_are_one_line(tmp_path):
    out = _check(str(tmp_path / "missing"))
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "not found" in out.output


def test_dry_run_prints_the_check_and_runs_nothing(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_label", lambda **kwargs: pytest.fail("the flow ran"))
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "store"), "--labelled", str(photos),
                                       "--to-label", str(photos), "--dry-run", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "to label: " in out.output and "still to compute: proposals 4" in out.output
    assert not (tmp_path / "store").exists()


def test_params_lists_every_parameter_with_its_default():
    from maskbank.flows.params import RunParams

    out = CliRunner().invoke(cli.app, ["params"])
    assert out.exit_code == 0, out.output
    defaults = RunParams().model_dump()
    for stage, values in defaults.items():
        if isinstance(values, dict):
            for name, value in values.items():
                assert f"  {stage}.{name} = {value!r}  " in out.output, (stage, name)
        else:
            assert f"{stage} = {values!r}" in out.output


@pytest.mark.parametrize("dataset", [("sample", "train2017"), ("sample", "val2017"), ("msrc21-dev", None),
                                     ("camvid-train", None), ("coco-tiny", "train2017")])
def test_check_runs_on_the_bundled_and_shared_datasets(dataset):
    name, split = dataset
    path = cli.sample_root() if name == "sample" else SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    out = _check(str(path), *(["--split", split] if split else []), "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert re.search(r"\d+ images, \d+ labelled", out.output) and "still to compute: proposals" in out.output
