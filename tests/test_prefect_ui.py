"""The Prefect UI loop, end to end, as a user runs it, with the commands docs/prefect-ui.md gives:
``maskbank server up`` starts a real Prefect server, ``maskbank server deploy`` creates the work pool and
deploys everything in the project's ``prefect.yaml``, ``prefect deployment run`` triggers the sample
deployment's quick look on a slice of the bundled sample, ``prefect worker start --run-once`` runs it; the
API then shows a completed run with its report and IoU table, headless Chromium renders the run's page and
the report (its pseudo-label thumbnails too, in the UI and in the V1 UI), ``maskbank versions`` lists the
run's versions, and the re-evaluation deployment reproduces the run's scores. Every process started here is
stopped, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from maskbank.storage.datasets.coco import write_coco_subset

from doc_commands import documented

pytestmark = [pytest.mark.server, pytest.mark.real]

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["000000196610", "000000204805", "000000425988"]
VAL = ["000000184324"]
POOL = "maskbank-local"
MASKBANK = "import typer; from maskbank.commands.server import register; app = typer.Typer(); register(app); app()"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=30000",
    "--window-size=1400,1000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_tree(pid: int) -> None:
    """SIGINT a process and everything it started (a worker's flow-run process has a session of its
    own), then SIGKILL what is left."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, procs = psutil.wait_procs(procs, timeout=10)
        if not procs:
            return


def _run(args: list[str], env: dict, timeout: float, cwd: Path | None = None) -> str:
    """Run a command to completion in its own session; its output, or a failure with the output (and the
    tail of the server's log, when the test's server runs)."""
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_tree(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args[:6])} ran past {timeout:.0f} s:\n{out[-4000:]}{_server_log(env)}")
    finally:
        _stop_tree(proc.pid)
    assert proc.returncode == 0, f"{' '.join(args[:6])} failed ({proc.returncode}):\n{out[-4000:]}{_server_log(env)}"
    return out


def _server_log(env: dict) -> str:
    log = Path(env["PREFECT_HOME"]) / "maskbank-server.log"
    return f"\n--- {log} ---\n" + "\n".join(log.read_text().splitlines()[-40:]) if log.is_file() else ""


def _maskbank(*args: str) -> list[str]:
    return [sys.executable, "-c", MASKBANK, *args]


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return exe


def _browse(url: str, profile: Path, *action: str) -> str:
    out = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _text(dom: str) -> str:
    """Visible text of a rendered DOM: tags, scripts and styles dropped, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)).replace("&amp;", "&")


def _data_images(dom: str) -> list[dict[str, str]]:
    """Attributes of the ``<img>`` elements of a rendered DOM whose source is a ``data:`` URI, in page order."""
    images = [dict(re.findall(r'([\w-]+)="([^"]*)"', tag)) for tag in re.findall(r"<img\b[^>]*>", dom)]
    return [i for i in images if i.get("src", "").startswith("data:")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``maskbank server up`` on a free port with its own PREFECT_HOME; ``maskbank server down`` after."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    try:
        up = documented("maskbank server up")[1:]
        _run(_maskbank(*up, "--port", str(port), "--timeout", "180"), env, timeout=240)
    except BaseException:
        state = home / "maskbank-server.json"
        if state.is_file():
            _stop_tree(json.loads(state.read_text())["pid"])
        raise
    state = json.loads((home / "maskbank-server.json").read_text())
    api_url = f"http://127.0.0.1:{port}/api"
    # what docs/prefect-ui.md says `maskbank server up` runs
    assert psutil.Process(state["pid"]).cmdline()[-6:] == ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    assert state["api_url"] == api_url
    assert f'PREFECT_API_URL = "{api_url}"' in (home / "profiles.toml").read_text()
    env["PREFECT_API_URL"] = api_url
    print(f"server up in {time.perf_counter() - t0:.1f} s")
    try:
        yield {"env": env, "api_url": api_url, "ui": f"http://127.0.0.1:{port}/v2", "home": home}
    finally:
        still_running = False
        try:
            _run(_maskbank("server", "down"), env, timeout=60)
        finally:
            if psutil.pid_exists(state["pid"]) and psutil.Process(state["pid"]).status() != psutil.STATUS_ZOMBIE:
                still_running = True
                _stop_tree(state["pid"])
        assert not still_running, "maskbank server down left the server running"
        assert "PREFECT_API_URL" not in (home / "profiles.toml").read_text()


@pytest.fixture(scope="module")
def deployed(server):
    t0 = time.perf_counter()
    out = _run(_maskbank(*documented("maskbank server deploy")[1:]), server["env"], timeout=300, cwd=ROOT)
    assert f"created work pool '{POOL}'" in out
    print(f"deployed in {time.perf_counter() - t0:.1f} s")
    return server


@contextmanager
def _client(env: dict):
    """A synchronous client of the test's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        yield client


def _flow_run(env: dict, name: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with _client(env) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert len(runs) == 1, runs
    return runs[0]


def _artifacts(env: dict, flow_run_id) -> dict:
    """The run's artifacts by key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client(env) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


def _run_deployment(env: dict, command: list[str], parameters: dict) -> tuple:
    """Trigger a deployment with ``command`` (a documented ``prefect deployment run``) and ``parameters`` added,
    run it with a one-shot worker (the documented ``prefect worker start``); the flow run and its artifacts."""
    assert command[:3] == ["prefect", "deployment", "run"], command
    name = f"ui-check-{uuid.uuid4().hex[:8]}"
    added = [a for k, v in parameters.items() for a in ("--param", f"{k}={json.dumps(v)}")]
    out = _run(_prefect(*command[1:], *added, "--flow-run-name", name), env, timeout=120)
    assert f"Created flow run '{name}'" in out
    t0 = time.perf_counter()
    worker = documented("prefect worker start --pool maskbank-local")
    log = _run(_prefect(*worker[1:], "--run-once"), env, timeout=480)
    print(f"{command[3]}: worker ran {name} in {time.perf_counter() - t0:.1f} s")
    flow_run = _flow_run(env, name)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log[-4000:]}"
    return flow_run, _artifacts(env, flow_run.id)


@pytest.fixture(scope="module")
def label_run(deployed, tmp_path_factory, sample_root):
    data = tmp_path_factory.mktemp("coco")
    store = tmp_path_factory.mktemp("store") / "sample.zarr"
    train = write_coco_subset(sample_root, "train2017", data, TRAIN, copy_images=True)
    val = write_coco_subset(sample_root, "val2017", data, VAL, copy_images=True)
    quick_look = documented(
        "prefect deployment run 'maskbank-label/sample' --param store=runs/sample-light-store "
        """--param params='{"propose": {"points_per_side": 4}, "embed": {"long_side": 224}}'""",
        replace={"runs/sample-light-store": str(store)})
    # a slice of the sample, so that the run is quick
    parameters = {"datasets": [{"path": str(train)}], "targets": [{"path": str(val)}], "device": "cpu"}
    flow_run, artifacts = _run_deployment(deployed["env"], quick_look, parameters)
    return {"flow_run": flow_run, "artifacts": artifacts, "store": store, "train": train, **deployed}


def test_deployments_have_documented_forms(deployed):
    with _client(deployed["env"]) as client:
        label = client.read_deployment_by_name("maskbank-label/sample")
        again = client.read_deployment_by_name("maskbank-reevaluate/stored-version")
        export = client.read_deployment_by_name("maskbank-export/newest-pseudo-labels")  # deploy --all
    assert label.work_pool_name == POOL and again.work_pool_name == POOL
    for d in (label, again):  # the worker runs the flows from the checkout `prefect deploy` ran in
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert label.parameters["datasets"] == [{"path": "maskbank/sample/coco", "split": "train2017"}]
    assert label.parameters["store"] == "runs/sample-store"  # as docs/prefect-ui.md says
    assert export.work_pool_name == POOL
    assert [(s.schedule.cron, s.active) for s in label.schedules] == [("0 2 * * *", False)]
    schema = label.parameter_openapi_schema
    assert schema["required"] == ["datasets", "store"]
    assert re.search(r"maskbank (Zarr )?store", schema["properties"]["store"]["description"])
    assert schema["properties"]["params"]["default"]["propose"]["points_per_side"] == 16
    assert "points_per_side" in schema["definitions"]["ProposeParams"]["properties"]
    assert schema["definitions"]["DatasetInput"]["properties"]["split"]["description"]
    assert "Secret block" in schema["properties"]["credentials"]["description"]
    props = again.parameter_openapi_schema["properties"]
    assert list(props) == ["store", "version", "datasets", "credentials"]
    assert all(p["description"] for p in props.values())


def test_run_completes_with_report_and_iou_table(label_run):
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    arts = label_run["artifacts"]
    stages = ("propose", "embed", "pool", "seed", "segmenter", "segmenter-train", "fill")
    assert {"maskbank-report", "maskbank-class-iou", *(f"progress-{s}" for s in stages)} <= set(arts)
    assert all(arts[f"progress-{s}"].data == 100.0 for s in stages)
    report = arts["maskbank-report"].data
    versions = {v.kind: v for v in list_versions(Store.open(label_run["store"], create=False))}  # the newest of each
    assert set(versions) == {"pseudo_labels", "segmenter", "bank", "predictions", "evaluation"}
    for kind in ("pseudo_labels", "segmenter", "bank", "predictions"):
        assert f"`{versions[kind].id}`" in report
    assert f"`{label_run['store']}`" in report
    assert "| propose | 4 of 4 |" in report and "| pool | 4 of 4 |" in report
    assert "points_per_side=4" in report and "long_side=224" in report
    rows = json.loads(arts["maskbank-class-iou"].data)
    assert rows and set(rows[0]) == {"class", "pseudo-labels", "retrieval"}
    assert rows[0]["class"] == "background" and 0.0 < rows[0]["pseudo-labels"] <= 1.0
    pseudo = next(v for v in list_versions(Store.open(label_run["store"], create=False), "evaluation")
                  if versions["pseudo_labels"].id in v.parents)
    assert f"| pseudo-labels | 3 | {pseudo.metrics['classes']['miou']:.4f} |" in report


def test_ui_renders_the_run_and_its_report(label_run, tmp_path):
    flow_run, ui = label_run["flow_run"], label_run["ui"]
    profile = tmp_path / "chromium"
    page = f"{ui}/runs/flow-run/{flow_run.id}"
    t0 = time.perf_counter()
    shot = tmp_path / "flow-run.png"
    _browse(page, profile, f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    text = _text(_browse(page, profile, "--dump-dom"))
    assert "Can't connect to Server API" not in text
    for expected in (flow_run.name, "Completed", "maskbank-label", "Deployment sample", f"Work Pool {POOL}"):
        assert expected in text, expected
    report = label_run["artifacts"]["maskbank-report"]
    dom = _browse(f"{ui}/artifacts/artifact/{report.id}", profile, "--dump-dom")
    text = _text(dom)
    assert "maskbank run report" in text and "Per-class IoU" in text and flow_run.name in text
    pseudo = re.search(r"\| pseudo-labels \| `([0-9a-f]{16})` \|", report.data).group(1)
    assert pseudo in text
    # the pseudo-label thumbnails, data: URIs in the markdown, are images on the rendered page (of both UIs)
    thumbnails = re.findall(r"!\[([^\]]*)\]\((data:image/jpeg;base64,[A-Za-z0-9+/=]+)\)", report.data)
    assert [alt.split()[0] for alt, _ in thumbnails] == sorted(TRAIN)  # every labelled image, by id
    assert [(i.get("alt"), i["src"]) for i in _data_images(dom)] == thumbnails
    assert f"--format html --out gallery-{pseudo[:8]}" in text
    v1 = _browse(f"{ui.removesuffix('/v2')}/artifacts/artifact/{report.id}", profile, "--dump-dom")
    assert "maskbank run report" in _text(v1)
    assert [i["src"] for i in _data_images(v1)] == [src for _, src in thumbnails]
    print(f"UI pages rendered in {time.perf_counter() - t0:.1f} s; screenshot {shot}")


def _versions(store: Path) -> dict:
    from maskbank.storage.store import Store
    from maskbank.storage.versions import list_versions

    return {v.kind: v.id for v in list_versions(Store.open(str(store), create=False)) if v.kind != "evaluation"}


def test_versions_lists_the_run_s_versions(label_run):
    from typer.testing import CliRunner

    from maskbank.cli import app

    versions = _versions(label_run["store"])
    store = {"runs/sample-store": str(label_run["store"])}
    listed = CliRunner().invoke(app, documented("maskbank versions runs/sample-store", replace=store)[1:])
    assert listed.exit_code == 0, listed.output
    for kind in ("pseudo_labels", "bank", "predictions"):
        assert versions[kind] in listed.output, kind
    as_json = CliRunner().invoke(app, documented("maskbank versions runs/sample-store --kind predictions --json",
                                                 replace=store)[1:])
    assert as_json.exit_code == 0, as_json.output
    assert [v["id"] for v in json.loads(as_json.output)] == [versions["predictions"]]


def test_reevaluation_deployment_reproduces_the_scores(label_run):
    """Both documented re-scorings, of the pseudo-labels on the deployment's default datasets (the sample's
    train2017, whose images the run's slice copied) and of the predictions on the sample's val2017."""
    versions = _versions(label_run["store"])
    first = json.loads(label_run["artifacts"]["maskbank-class-iou"].data)
    for kind, column, command in (
        ("pseudo-labels", "pseudo_labels",
         "prefect deployment run 'maskbank-reevaluate/stored-version' --param version=<pseudo_labels version id>"),
        ("predictions", "predictions",
         "prefect deployment run 'maskbank-reevaluate/stored-version' --param version=<predictions version id> "
         """--param datasets='[{"path": "maskbank/sample/coco", "split": "val2017"}]'"""),
    ):
        version = versions[column]
        argv = documented(command, replace={f"<{column} version id>": version})
        _, arts = _run_deployment(label_run["env"], argv, {"store": str(label_run["store"])})
        assert f"Version `{version}` ({column})" in arts["maskbank-evaluation"].data
        scored = {r["class"]: r["pseudo-labels" if kind == "pseudo-labels" else "retrieval"] for r in first}
        again = {r["class"]: r[column] for r in json.loads(arts["maskbank-class-iou"].data)}
        assert again == {c: v for c, v in scored.items() if v is not None}, kind
