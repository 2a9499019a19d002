"""Ctrl-C (SIGINT) and SIGTERM stop a local run within seconds: one line on stderr saying how to resume,
exit code 130 or 143, no traceback, the flow run marked Cancelled, and the temporary Prefect server gone
with the run. The runs are child processes, each with a Prefect home of its own (so a temporary server of
its own); the signal reaches them as a terminal's Ctrl-C does, to their whole process group."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from maskbank.commands import interrupt
from maskbank.commands.interrupt import RESUME_HINT, LocalRun, exit_code, uvicorn_command

SAMPLE = Path(__file__).resolve().parents[1] / "maskbank" / "sample" / "coco"
MASKBANK = Path(sys.executable).parent / "maskbank"
LIGHT = {"propose": {"points_per_side": 4}, "embed": {"long_side": 224}, "shard_size": 1}
STARTUP = 600
"""Seconds a run may take to reach the point where it is interrupted (a busy machine starts slowly)."""
PROMPT = 10
"""Seconds from the signal to the run's exit that the tests allow."""

STUCK = r"""
import time
from prefect import flow, task
from maskbank.commands.interrupt import LocalRun


@task
def forever() -> None:
    print("working", flush=True)
    while True:
        time.sleep(0.05)


@flow
def stuck() -> None:
    forever.submit().result()


with LocalRun() as run:
    run(stuck)
"""


def _env(home: Path) -> dict[str, str]:
    """This process's environment with a Prefect home of its own at ``home`` and no Prefect API set, so
    that a run starts a temporary server of its own, and logs its task runs."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(STARTUP), PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


class Child:
    """A command in a process group of its own, its stdout and stderr in files under ``workdir``."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.out, self.err = workdir / "stdout.txt", workdir / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, start_new_session=True)
        self.children: list[psutil.Process] = []
        self.commands: list[str] = []

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_for(self, text: str, timeout: float = STARTUP) -> None:
        """Wait until ``text`` is in the output; fails when the command exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode} first:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def wait_for_server(self, timeout: float = STARTUP) -> None:
        """Wait until the command has a temporary server process (started, not necessarily answering)."""
        deadline = time.monotonic() + timeout
        while not any("uvicorn" in command for _, command in _children(self.proc.pid)):
            assert self.proc.poll() is None, f"exited with {self.proc.returncode} first:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no temporary server after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.05)

    def interrupt(self, *signums: int, group: bool = True) -> float:
        """Send ``signums``, 50 ms apart, to the process group as a terminal does (``group``) or to the
        command alone as ``kill`` does, after recording the command's child processes; the seconds from
        the first signal to its exit (fails after :data:`PROMPT`)."""
        children = _children(self.proc.pid)
        self.children, self.commands = [p for p, _ in children], [command for _, command in children]
        start = time.monotonic()
        for i, signum in enumerate(signums):
            if i:
                time.sleep(0.05)
            try:
                (os.killpg if group else os.kill)(self.proc.pid, signum)
            except ProcessLookupError:
                break
        try:
            self.proc.wait(PROMPT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {PROMPT} s after the signal:\n{self.output()[-3000:]}") from None
        return time.monotonic() - start

    def kill(self) -> None:
        """SIGKILL to whatever of the command is left (its process group and the children it had)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in self.children:
            try:
                child.kill()
            except psutil.Error:
                pass
        self.proc.wait()


def _assert_interrupted_cleanly(child: Child, signum: int, home: Path) -> None:
    """Exit code 128 + ``signum``, the resume hint once and last on stderr, no traceback, and no process
    of the run left."""
    assert child.proc.returncode == exit_code(signum), child.output()[-3000:]
    err = child.err.read_text()
    assert err.count(RESUME_HINT) == 1 and err.rstrip().endswith(RESUME_HINT), err[-3000:]
    assert "Traceback" not in child.output() and "Connection refused" not in child.output()
    _assert_nothing_left(child, home)


def _assert_nothing_left(child: Child, home: Path) -> None:
    """None of the children the run had (its temporary server among them) still runs, nor anything with
    its Prefect home."""
    assert any("uvicorn" in command for command in child.commands), "no temporary server to check"
    _, alive = psutil.wait_procs(child.children, timeout=3)
    assert not [p for p in alive if _running(p)], f"left running: {child.commands}"
    assert not _with_prefect_home(home)


def _children(pid: int) -> list[tuple[psutil.Process, str]]:
    """The processes descending from ``pid`` now, each with its command line (those that end meanwhile
    left out)."""
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            found.append((p, " ".join(p.cmdline())))
        except psutil.Error:
            continue
    return found


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie, dead and waiting to be reaped, does not)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _with_prefect_home(home: Path) -> list[psutil.Process]:
    """Processes of this machine whose environment has ``PREFECT_HOME`` = ``home`` (those that can be read)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PREFECT_HOME") == str(home):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _flow_run_states(home: Path) -> list[str]:
    """The state type of every flow run the temporary server of ``home`` recorded."""
    with sqlite3.connect(home / "prefect.db") as db:
        return [row[0] for row in db.execute("SELECT state_type FROM flow_run")]


def test_exit_code_is_128_plus_the_signal():
    assert exit_code(signal.SIGINT) == 130 and exit_code(signal.SIGTERM) == 143


def test_the_temporary_server_runs_prefect_s_own_command_in_a_group_of_its_own(monkeypatch):
    """The command the temporary server is started with is Prefect's own (guards a Prefect upgrade), in a
    process group of its own."""
    from prefect.server.api.server import SubprocessASGIServer

    seen = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, env, **kwargs: seen.append((args, env, kwargs)))
    SubprocessASGIServer._run_uvicorn_command(SimpleNamespace(port=8123))
    interrupt._server_class()._run_uvicorn_command(SimpleNamespace(port=8123))
    (prefect_args, prefect_env, _), (args, env, kwargs) = seen
    assert (args, env) == (prefect_args, prefect_env) == uvicorn_command(8123)
    assert kwargs["process_group"] == 0
    assert callable(kwargs["preexec_fn"]) or not sys.platform.startswith("linux")


def test_a_local_run_returns_the_flow_s_result_or_raises_its_error(monkeypatch):
    """The flow runs in a thread of its own; what it returns or raises comes back, and the signal handlers
    in place before are in place after."""
    monkeypatch.setattr(interrupt, "temporary_server", lambda: None)
    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    threads = []

    def flow(x: int) -> int:
        threads.append(threading.current_thread())
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    with LocalRun() as run:
        assert all(signal.getsignal(s) == run._on_signal for s in interrupt.SIGNALS)
        assert run(flow, x=3) == 6
        with pytest.raises(ValueError, match="negative"):
            run(flow, x=-1)
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before
    assert threading.main_thread() not in threads


def test_a_local_run_outside_the_main_thread_runs_the_flow_directly(monkeypatch):
    monkeypatch.setattr(interrupt, "temporary_server", lambda: pytest.fail("no server of its own off the main thread"))
    seen = {}

    def call() -> None:
        with LocalRun() as run:
            seen["result"], seen["thread"] = run(lambda: 7), threading.current_thread()

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    assert seen["result"] == 7 and seen["thread"] is worker


@pytest.mark.server
@pytest.mark.parametrize("signums, group", [((signal.SIGTERM,), False), ((signal.SIGINT, signal.SIGINT), True)],
                         ids=["kill", "ctrl-c-twice"])
def test_a_stuck_flow_stops_at_once(tmp_path, signums, group):
    """A flow whose task never ends: SIGTERM to the run alone stops it as Ctrl-C does (flow run
    Cancelled); a second Ctrl-C while the first is handled exits at once, leaving no server either."""
    home = tmp_path / "prefect"
    child = Child([sys.executable, "-c", STUCK], tmp_path, _env(home))
    try:
        child.wait_for("working")
        seconds = child.interrupt(*signums, group=group)
        _assert_interrupted_cleanly(child, signums[0], home)
        if len(signums) == 1:
            assert _flow_run_states(home) == ["CANCELLED"]
        print(f"{'+'.join(signal.Signals(s).name for s in signums)}: exited {seconds:.2f} s after the signal")
    finally:
        child.kill()


@pytest.mark.server
def test_ctrl_c_while_the_temporary_server_starts(tmp_path):
    """Ctrl-C before the flow has begun, while the temporary server starts: the same clean exit."""
    home = tmp_path / "prefect"
    child = Child([sys.executable, "-c", STUCK], tmp_path, _env(home))
    try:
        child.wait_for_server()
        child.interrupt(signal.SIGINT)
        _assert_interrupted_cleanly(child, signal.SIGINT, home)
        assert "working" not in child.output()
    finally:
        child.kill()


@pytest.mark.server
def test_a_killed_run_takes_its_temporary_server_with_it(tmp_path):
    """SIGKILL to the run alone (no handler runs): the kernel ends its temporary server too."""
    home = tmp_path / "prefect"
    child = Child([sys.executable, "-c", STUCK], tmp_path, _env(home))
    try:
        child.wait_for("working")
        child.interrupt(signal.SIGKILL, group=False)
        assert child.proc.returncode == -signal.SIGKILL
        _assert_nothing_left(child, home)
    finally:
        child.kill()


@pytest.mark.real
def test_ctrl_c_in_propose_stops_maskbank_run_at_once_and_the_store_stays_readable(tmp_path):
    """``maskbank run`` interrupted by Ctrl-C while propose runs: out within seconds, cleanly, and the store
    it leaves opens (``maskbank inspect``) with the proposals it committed."""
    home, store, params = tmp_path / "prefect", tmp_path / "store", tmp_path / "light.json"
    params.write_text(json.dumps(LIGHT))
    env = _env(home)
    child = Child([str(MASKBANK), "run", "--store", str(store), "--bank", str(SAMPLE), "--bank-split", "train2017",
                   "--params", str(params), "--device", "cpu"], tmp_path, env)
    try:
        child.wait_for("Task run 'shard-propose-")
        seconds = child.interrupt(signal.SIGINT)
        _assert_interrupted_cleanly(child, signal.SIGINT, home)
        assert _flow_run_states(home) == ["CANCELLED"]
        print(f"SIGINT: exited {seconds:.2f} s after the signal")
    finally:
        child.kill()
    inspected = subprocess.run([str(MASKBANK), "inspect", str(store)], env=env, capture_output=True, text=True,
                               timeout=STARTUP)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "proposals/" in inspected.stdout
