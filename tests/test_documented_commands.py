"""Every command README.md and docs/*.md give is run by a test, as written, and does what the text around it
says. This module runs those no other test runs: the main job (``maskbank demo``, with the default models and
settings) and what the documentation then does with its store, the COCO run of "Running it" and its run on
an S3 server. tests/test_readme_path.py, tests/test_readme_layouts.py and tests/test_prefect_ui.py run the
others; ``documented`` takes each command from the documentation itself, so they cannot drift apart.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from doc_commands import ROOT, all_commands, build_layouts, documented

pytestmark = [pytest.mark.real]

HERE = Path(__file__).resolve().parent
# Runs beyond the main job add only speed settings: fewer SAM prompts, smaller feature maps, the CPU.
LIGHT = {"embed": {"long_side": 224}}


def _claimed() -> set[str]:
    """The documented commands that tests take with ``documented``: string literals of the test modules that
    use it, compared as the documentation's commands are."""
    documented_texts = {c.text for c in all_commands()}
    claimed = set()
    for path in HERE.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(n, ast.Name) and n.id == "documented" for n in ast.walk(tree)):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    text = shlex.join(shlex.split(node.value, comments=True))
                except ValueError:
                    continue
                if text in documented_texts:
                    claimed.add(text)
    return claimed


def _set_up_commands() -> list[str]:
    """The README's two set-up lines, split at ``&&``."""
    readme = [c for c in all_commands() if c.source.startswith("README.md")]
    first_lines = list(dict.fromkeys(c.source for c in readme))[:2]
    return [c.text for c in readme if c.source in first_lines]


def test_every_documented_command_is_run_by_a_test():
    """A command added to the documentation without a test that runs it fails here, by file and line."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    by_ci = {c for c in _set_up_commands() if c in ci}
    claimed = _claimed()
    missing = [f"{c.source}: {c.text}" for c in all_commands() if c.text not in claimed | by_ci
               and c.text != ".venv/bin/pip install -e ."]
    assert not missing, "documented commands no test runs:\n" + "\n".join(missing)


def test_ci_runs_the_readme_set_up_commands():
    """``.ci/run`` runs the README's test line verbatim; its install is the README's first line's with the test
    extra, so CI also runs the first line's install (the demo is run below)."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install_and_demo = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/maskbank demo"
    test_line = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    assert f"```bash\n{install_and_demo}\n```" in readme and f"```bash\n{test_line}\n```" in readme
    assert f"\n{test_line}\n" in ci
    assert _set_up_commands() == [*install_and_demo.split(" && "), *test_line.split(" && ")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder to run the documented commands in, as a user would from their own folder."""
    path = tmp_path_factory.mktemp("documented")
    before = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(before)


def _cli(argv: list[str], *extra: str):
    """``maskbank ...`` (or ``.venv/bin/maskbank ...``) in this process."""
    from maskbank.cli import app

    assert Path(argv[0]).name == "maskbank", argv
    out = CliRunner().invoke(app, [*argv[1:], *map(str, extra)])
    assert out.exit_code == 0, (argv, extra, out.output)
    return out.output


def _light(workdir: Path) -> list[str]:
    params = workdir / "light.json"
    params.write_text(json.dumps(LIGHT))
    return ["--points-per-side", "4", "--params", str(params), "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(prefect_harness, workdir):
    """The README's main job, as written: the bundled sample, the default models and settings."""
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    output = _cli(documented(".venv/bin/maskbank demo"))
    store = Store.open(str(workdir / "maskbank-demo-store"), create=False)
    versions = {v.kind: v for v in list_versions(store) if v.kind != "evaluation"}
    evaluations = {p: v for v in list_versions(store, "evaluation") for p in v.parents}
    return {"output": output, "store": store, "versions": versions, "evaluations": evaluations}


def test_demo_labels_the_sample_and_scores_it(demo):
    versions, evaluations = demo["versions"], demo["evaluations"]
    assert set(versions) == {"pseudo_labels", "segmenter", "bank", "predictions"}  # pseudo_labels: the newest, filled
    for kind, images in (("pseudo_labels", 12), ("predictions", 6)):
        metrics = evaluations[versions[kind].id].metrics
        assert metrics["images"] == images, kind
        assert f"{metrics['classes']['miou']:.4f}" in demo["output"], kind
    assert "maskbank inspect maskbank-demo-store" in demo["output"]


def test_demo_store_exports_as_documented(demo, workdir):
    from maskbank.storage.datasets import open_dataset

    _cli(documented("maskbank export maskbank-demo-store --format voc --out sample-voc"))
    voc = open_dataset(workdir / "sample-voc")
    assert len(voc.image_ids) == 12 and voc.class_names[0] == "background"

    predictions = demo["versions"]["predictions"].id
    _cli(documented("maskbank export maskbank-demo-store <version id or prefix> --format coco --out val-coco "
                    "--instances --min-score 0.2", replace={"<version id or prefix>": predictions[:6]}))
    coco = json.loads((workdir / "val-coco" / "annotations" / "instances_predictions.json").read_text())
    assert len(coco["images"]) == 6
    assert coco["annotations"] and all(a["score"] >= 0.2 for a in coco["annotations"])

    _cli(documented("maskbank export maskbank-demo-store --format html --out sample-gallery"))
    assert (workdir / "sample-gallery" / "index.html").is_file()
    assert len(list((workdir / "sample-gallery" / "cards").glob("*.json"))) == 12


def test_evaluate_rescores_the_demo_predictions(demo):
    predictions = demo["versions"]["predictions"].id
    argv = documented("maskbank evaluate maskbank-demo-store <version id or prefix> --truth maskbank/sample/coco "
                      "--truth-split val2017",
                      replace={"<version id or prefix>": predictions[:8],
                               "maskbank/sample/coco": str(ROOT / "maskbank" / "sample" / "coco")})
    out = _cli(argv)
    miou = demo["evaluations"][predictions].metrics["classes"]["miou"]
    assert out.splitlines()[0].startswith(f"predictions {predictions}: mIoU {miou:.4f}"), out


def test_inspect_and_show_the_demo_store(demo, workdir):
    tree = _cli(documented("maskbank inspect maskbank-demo-store"))
    for group in ("datasets/", "proposals/", "features/", "pooled/", "labels/", "versions/"):
        assert f"\n{group}" in tree, group
    assert demo["versions"]["bank"].id in tree and "dataset 'train2017': 12 images" in tree
    _cli(documented("maskbank show maskbank-demo-store 000000196610 --layer seeds --out seeds.png"))
    from PIL import Image

    with Image.open(workdir / "seeds.png") as png:
        assert png.width > png.height > 0  # the photo and its seeds side by side


@pytest.fixture(scope="module")
def layouts(workdir, sample_root):
    return build_layouts(workdir / "data", sample_root)


def test_readme_coco_run_and_its_versions(prefect_harness, workdir, layouts):
    _cli(documented("maskbank run --store runs/coco-store --labelled data/coco/annotations/instances_train2017.json "
                    "--to-label data/coco/annotations/instances_val2017.json"), *_light(workdir))
    listed = _cli(documented("maskbank versions runs/coco-store"))
    for kind in ("pseudo_labels", "bank", "predictions", "evaluation"):
        assert kind in listed, kind


def test_readme_run_on_an_s3_store(prefect_harness, workdir, layouts, s3_server, monkeypatch):
    """The README's S3 lines: the variables its ``export`` line names, set for the test's server, and the run
    into a bucket of its own."""
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    export = documented("export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_ENDPOINT_URL=http://127.0.0.1:8333")
    names = [word.split("=", 1)[0] for word in export[1:]]
    server = s3_server.env()
    for name in names:
        monkeypatch.setenv(name, server[name])
    for name in set(server) - set(names):
        monkeypatch.delenv(name, raising=False)  # nothing beyond what the README sets
    bucket = s3_server.bucket()
    _cli(documented("maskbank run --store s3://labels/coco --bank data/coco/annotations/instances_train2017.json",
                    replace={"s3://labels/coco": f"s3://{bucket}/coco"}), *_light(workdir))
    kinds = {v.kind for v in list_versions(Store.open(f"s3://{bucket}/coco", create=False))}
    assert {"pseudo_labels", "bank"} <= kinds
