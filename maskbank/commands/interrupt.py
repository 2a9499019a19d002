"""A local run that stops at once on Ctrl-C (SIGINT) or SIGTERM, and takes its temporary Prefect server with it.

The command line runs the flow in a thread of its own and keeps the main thread for signals (Prefect, in a
thread, installs no signal handler of its own). On the first SIGINT or SIGTERM the work in progress is
abandoned: one line on stderr, the flow run marked Cancelled on the Prefect API (when it answers in time),
the temporary server killed, and the process exits with 128 + the signal's number. Nothing half-written
becomes visible: every output reaches the store in one commit of its own, and a process that ends before a
commit leaves nothing of it (see :mod:`maskbank.storage.repository`), so the same command run again reuses
every stored output and computes the rest. A second signal while this happens exits at once.

The temporary server (Prefect starts one when no ``PREFECT_API_URL`` is set) is started here, before the
flow, with Prefect's own command but in a process group of its own, so that a terminal's Ctrl-C reaches
the run and not the server the run still talks to; on Linux the kernel also kills it when this process
ends, however it ends, so it never outlives the run.

Flows run by a Prefect worker or deployment do not come through here and keep Prefect's own handling.
"""

from __future__ import annotations

import contextvars
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import cache
from types import FrameType
from typing import Any, NoReturn

RESUME_HINT = "interrupted: nothing half-written was kept; run the same command again to resume from what is stored"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
STATE_DEADLINE = 3.0
"""Seconds given to the Prefect API to record the interrupted flow run as Cancelled."""
REAP = 2.0
"""Seconds to wait for the killed temporary server to be gone."""
POLL = 0.5
"""Seconds between the main thread's checks that the flow's thread is still running."""
_PR_SET_PDEATHSIG = 1


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by signal ``signum``: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def _die_with_this_thread() -> Callable[[], None] | None:
    """On Linux, a function for a child process between fork and exec that has the kernel send it SIGKILL
    when the thread that started it ends (the main thread: when this process ends, even killed); None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
              ctypes.c_ulong(0))
        if os.getppid() != parent:  # the parent ended before the death signal was armed
            os._exit(1)

    return arm


def uvicorn_command(port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of Prefect's temporary server on ``port``: those of
    ``SubprocessASGIServer._run_uvicorn_command`` (prefect 3.8.8)."""
    import prefect
    from prefect.settings import get_current_settings

    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    return args, env


@cache
def _server_class() -> type:
    """Prefect's temporary server, started in a process group of its own that ends with this process
    (defined on first use: importing Prefect's server takes a while)."""
    from prefect.server.api.server import SubprocessASGIServer

    class TemporaryServer(SubprocessASGIServer):
        """Prefect's temporary API server in a process group of its own, killed with this process."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            args, env = uvicorn_command(self.port)
            in_main = threading.current_thread() is threading.main_thread()
            return subprocess.Popen(args, env=env, process_group=0 if os.name == "posix" else None,
                                    preexec_fn=_die_with_this_thread() if in_main else None)

    return TemporaryServer


def temporary_server() -> Any | None:
    """The temporary Prefect server this process's flow runs will use, not started yet: one of
    :func:`_server_class` unless one exists already (see the module doc); None when they talk to the API
    at ``PREFECT_API_URL`` instead."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    return SubprocessASGIServer._instances.get(None) or _server_class()()  # Prefect's clients use this one


def kill_server(server: Any, reap: float = REAP) -> None:
    """SIGKILL to ``server``'s process group (a ``SubprocessASGIServer``), then reap it, waiting at most
    ``reap`` seconds. Not SIGTERM: the server's graceful shutdown cancels its work in progress and prints
    the tracebacks of that on the terminal; its database (SQLite) is safe against a kill."""
    process = getattr(server, "server_process", None)
    if process is None or process.poll() is not None:  # never started, or ended (its pid may be reused)
        return
    _signal_server(process, signal.SIGKILL)
    deadline = time.monotonic() + reap
    while time.monotonic() < deadline:
        try:
            if os.waitpid(process.pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # reaped already
            return
        time.sleep(0.01)


def _signal_server(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the server's process group when it leads one of its own, else to it alone."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except ProcessLookupError:
        pass


def mark_cancelled(flow_run_id: Any, signum: int, deadline: float = STATE_DEADLINE) -> None:
    """Record the flow run ``flow_run_id`` as Cancelled on the Prefect API, waiting at most ``deadline``
    seconds for it (the run ends anyway: this only keeps the UI from showing it running forever)."""
    def cancel() -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        state = Cancelled(message=f"Interrupted by {signal.Signals(signum).name}.")
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, state, force=True)
        except Exception:  # noqa: BLE001 (the API is best effort here)
            pass

    worker = threading.Thread(target=contextvars.copy_context().run, args=(cancel,), name="maskbank-cancel",
                              daemon=True)
    worker.start()
    worker.join(deadline)


def _silence() -> None:
    """Send what this process still writes to stdout and stderr (abandoned threads, Prefect's loggers) nowhere."""
    logging.disable(logging.CRITICAL)
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass


def _say(line: str) -> None:
    """Write ``line`` to stderr, after what is buffered, on a line of its own in a terminal."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError):  # closed, or flushed by the interrupted code already
            pass
    start = "\n" if os.isatty(2) else ""
    try:
        os.write(2, f"{start}{line}\n".encode())
    except OSError:
        pass


class LocalRun:
    """Run a flow locally so that SIGINT or SIGTERM stop it at once (see the module doc).

    ``with LocalRun() as run: run(flow, **parameters)`` installs the handlers (from the main thread only;
    elsewhere the flow just runs) and restores the previous ones on leaving."""

    def __init__(self) -> None:
        self.server: Any | None = None
        self.stopping = False
        self._context: contextvars.Context | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "LocalRun":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __call__(self, flow: Any, **parameters: Any) -> Any:
        """``flow(**parameters)``: in a thread of its own while signals are handled here, else directly."""
        if not self._previous:
            return flow(**parameters)
        self.server = temporary_server()
        if self.server is not None:
            self.server.start()
        return self._in_thread(flow, parameters)

    def flow_run_id(self) -> Any | None:
        """The id of the flow run in progress in the flow's thread, if one has begun."""
        if self._context is None:
            return None
        from prefect.context import FlowRunContext

        run = self._context.get(FlowRunContext.__var__)
        return run.flow_run.id if run is not None and run.flow_run is not None else None

    def _in_thread(self, flow: Any, parameters: dict) -> Any:
        """``flow(**parameters)`` in a thread with this thread's context; its result, or its exception raised
        here. The main thread waits in short, interruptible steps."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = flow(**parameters)
            except BaseException as e:  # noqa: BLE001 (raised again in the main thread)
                outcome["error"] = e

        self._context = context = contextvars.copy_context()  # the flow's run context is set in it
        thread = threading.Thread(target=context.run, args=(target,), name="maskbank-flow", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(POLL)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT or SIGTERM: abandon the run (see :meth:`_abandon`); a second one exits at once."""
        if self.stopping:
            kill_server(self.server)
            os._exit(exit_code(signum))
        self.stopping = True
        self._abandon(signum)

    def _abandon(self, signum: int) -> NoReturn:
        """Say that the run was interrupted and how to resume it, mark its flow run Cancelled, kill the
        temporary server and exit with 128 + ``signum``; threads still running are abandoned."""
        _say(RESUME_HINT)
        _silence()
        flow_run_id = self.flow_run_id()
        if flow_run_id is not None:
            mark_cancelled(flow_run_id, signum)
        kill_server(self.server)
        os._exit(exit_code(signum))
