"""``maskbank server``: a local Prefect server with the UI, and this project's deployments on it.

``up`` starts ``prefect server start`` in the background and points the active Prefect profile at it,
``deploy`` creates the work pools ``prefect.yaml`` names and deploys its flows, ``down`` stops the server.
What ``up`` started is recorded in ``$PREFECT_HOME/maskbank-server.json`` (its log beside it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from maskbank.commands.helptext import PlainCommand, PlainGroup
from maskbank.commands.stores import fail

SERVER_HELP = """Local Prefect server and UI: start it, deploy maskbank's flows to it, stop it.

maskbank run needs none (it starts a temporary server of its own); a lasting server keeps the runs'
history in the UI and runs the flows as deployments, started from the UI with a form of their parameters.

\b
Example:
  maskbank server up
  maskbank server deploy
  prefect worker start --pool maskbank-local
  maskbank server down"""

server_app = typer.Typer(cls=PlainGroup, help=SERVER_HELP, no_args_is_help=True)

STATE_FILE = "maskbank-server.json"
LOG_FILE = "maskbank-server.log"
PROJECT_FILE = "prefect.yaml"


def register(app: typer.Typer) -> None:
    """Mount ``maskbank server`` on ``app``."""
    app.add_typer(server_app, name="server")


def prefect_command(*args: str) -> list[str]:
    """The ``prefect`` command line of this interpreter's installation."""
    return [sys.executable, "-m", "prefect", *args]


def prefect_home() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value())


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` (``http://host:port/api``) answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(api_url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    """Wait until the server answers; fail with its log's tail if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        answers = healthy(api_url)
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}:\n{_tail(log)}")
        if answers:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from {api_url}/health after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.5)


def read_state(home: Path) -> dict | None:
    path = home / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def server_alive(pid: int) -> bool:
    """Whether ``pid`` is a running Prefect server (guards against a recycled process id)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    args = subprocess.run(["ps", "-p", str(pid), "-o", "args="], capture_output=True, text=True).stdout
    return "prefect" in args and "server" in args


def stop_group(pid: int, timeout: float = 20.0) -> bool:
    """Stop the process group led by ``pid``: SIGTERM, then SIGKILL after ``timeout``. True if it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _exists(pid):
                return True
            time.sleep(0.2)
    return not _exists(pid)


def set_profile_api_url(url: str | None) -> None:
    """Write ``PREFECT_API_URL`` into the active Prefect profile (``None`` removes it)."""
    args = ("config", "set", f"PREFECT_API_URL={url}") if url else ("config", "unset", "PREFECT_API_URL")
    subprocess.run(prefect_command(*args), check=True, capture_output=True, text=True)


def profile_api_url() -> str | None:
    """``PREFECT_API_URL`` of the active profile, ignoring the environment."""
    from prefect.settings import PREFECT_API_URL
    from prefect.settings.profiles import load_current_profile

    return load_current_profile().settings.get(PREFECT_API_URL)


def project_dir(folder: Path | None = None) -> Path:
    """The folder holding ``prefect.yaml``: ``folder`` if given, else the current folder or, failing that,
    the source checkout maskbank is installed from."""
    candidates = [folder] if folder else [Path.cwd(), Path(__file__).resolve().parents[2]]
    for folder in candidates:
        if (folder / PROJECT_FILE).is_file():
            return folder.resolve()
    raise FileNotFoundError(f"no {PROJECT_FILE} in {' or '.join(str(c) for c in candidates)}")


def work_pools(project: Path, names: list[str] | None = None) -> list[str]:
    """Work pools of the deployments ``prefect.yaml`` declares (those named ``names``, default all)."""
    import yaml

    config = yaml.safe_load((project / PROJECT_FILE).read_text()) or {}
    deployments = config.get("deployments") or []
    known = {d.get("name") for d in deployments}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise ValueError(f"{project / PROJECT_FILE} declares no deployment {unknown}; it has {sorted(known)}")
    chosen = [d for d in deployments if not names or d.get("name") in names]
    return sorted({d["work_pool"]["name"] for d in chosen if (d.get("work_pool") or {}).get("name")})


def ensure_work_pool(name: str, env: dict[str, str]) -> bool:
    """Create the ``process`` work pool ``name`` unless it exists; True if it was created."""
    if subprocess.run(prefect_command("work-pool", "inspect", name), env=env, capture_output=True).returncode == 0:
        return False
    created = subprocess.run(prefect_command("work-pool", "create", name, "--type", "process"), env=env,
                             capture_output=True, text=True)
    if created.returncode != 0:
        raise RuntimeError(f"could not create work pool {name!r}:\n{created.stdout}{created.stderr}")
    return True


@server_app.command(cls=PlainCommand)
def up(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to bind (keep 127.0.0.1 unless the UI must be reachable from other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port of the API and UI.")] = 4200,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait for the server to answer.")] = 120.0,
    set_profile: Annotated[bool, typer.Option(help="Write PREFECT_API_URL into the active Prefect profile (else print the export line).")] = True,
) -> None:
    """Start a Prefect server with the UI in the background and wait until it answers.

    \b
    Example:
      maskbank server up
      # on another port, printing the export line instead of changing the Prefect profile
      maskbank server up --port 4300 --no-set-profile
    """
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{host}:{port}/api"
    state = read_state(home)
    if state and server_alive(state["pid"]):
        typer.echo(f"a server started by `maskbank server up` is running: {state['api_url']} (pid {state['pid']})")
        raise typer.Exit(0 if state["api_url"] == api_url else 1)
    if healthy(api_url):
        fail(f"a Prefect server not started by `maskbank server up` already answers at {api_url}; "
             "use it (export PREFECT_API_URL) or pick another --port", 1)
    log = home / LOG_FILE
    env = {**os.environ, "PREFECT_API_URL": api_url}  # the UI calls the API at this address
    with log.open("ab") as out:
        process = subprocess.Popen(prefect_command("server", "start", "--host", host, "--port", str(port)),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    try:
        wait_healthy(api_url, process, timeout, log)
    except (RuntimeError, TimeoutError) as e:
        stop_group(process.pid)
        fail(str(e), 1)
    if set_profile:
        set_profile_api_url(api_url)
    (home / STATE_FILE).write_text(json.dumps({"pid": process.pid, "api_url": api_url, "log": str(log),
                                               "profile_set": set_profile}))
    typer.echo(f"Prefect server running (pid {process.pid}, log {log})")
    typer.echo(f"UI:  http://{host}:{port}/v2/")
    typer.echo(f"API: {api_url}")
    if set_profile:
        typer.echo("PREFECT_API_URL is set in the active Prefect profile.")
        if os.environ.get("PREFECT_API_URL", api_url) != api_url:
            typer.echo(f"warning: this shell's PREFECT_API_URL={os.environ['PREFECT_API_URL']} overrides it", err=True)
    else:
        typer.echo(f"export PREFECT_API_URL={api_url}")


@server_app.command(cls=PlainCommand)
def deploy(
    name: Annotated[list[str] | None, typer.Option("--name", "-n", metavar="NAME", help="Deployment name from prefect.yaml (repeatable; default: all).")] = None,
    project: Annotated[Path | None, typer.Option(metavar="FOLDER", help="Folder holding prefect.yaml (default: the current folder, else the maskbank checkout).")] = None,
) -> None:
    """Create the work pools prefect.yaml names, if missing, and deploy its flows to the running server.

    \b
    Example:
      maskbank server deploy
      maskbank server deploy --name sample
    """
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url or not healthy(api_url):
        fail(f"no Prefect server answers at {api_url or 'PREFECT_API_URL (unset)'}; "
             "start one with `maskbank server up`", 1)
    env = {**os.environ, "PREFECT_API_URL": api_url}
    try:
        folder = project_dir(project)
        pools = work_pools(folder, name)
        for pool in pools:
            if ensure_work_pool(pool, env):
                typer.echo(f"created work pool {pool!r} (type process)")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        fail(str(e), 1)
    targets = [a for n in name for a in ("--name", n)] if name else ["--all"]
    rc = subprocess.run(prefect_command("--no-prompt", "deploy", *targets), cwd=folder, env=env).returncode
    if rc != 0:
        raise typer.Exit(rc)
    typer.echo(f"\nStart a worker to run them: prefect worker start {' '.join(f'--pool {p}' for p in pools)}")


@server_app.command(cls=PlainCommand)
def status() -> None:
    """Show the server `maskbank server up` started and whether it answers.

    \b
    Example:
      maskbank server status
    """
    state = read_state(prefect_home())
    if not state:
        typer.echo("no server started by `maskbank server up`")
        raise typer.Exit(1)
    alive = server_alive(state["pid"])
    answers = alive and healthy(state["api_url"])
    typer.echo(f"{state['api_url']}  pid {state['pid']}  {'healthy' if answers else 'running, not answering' if alive else 'stopped'}")
    typer.echo(f"log: {state['log']}")
    if not answers:
        raise typer.Exit(1)


@server_app.command(cls=PlainCommand)
def down() -> None:
    """Stop the server `maskbank server up` started and remove PREFECT_API_URL from the profile it set.

    \b
    Example:
      maskbank server down
    """
    home = prefect_home()
    state = read_state(home)
    if not state:
        typer.echo("no server started by `maskbank server up`")
        return
    if server_alive(state["pid"]) and not stop_group(state["pid"]):
        fail(f"server pid {state['pid']} did not stop", 1)
    if state.get("profile_set") and profile_api_url() == state["api_url"]:
        set_profile_api_url(None)
    (home / STATE_FILE).unlink()
    typer.echo(f"stopped the Prefect server at {state['api_url']}")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status_file = Path(f"/proc/{pid}/status")  # a zombie has exited, only its entry remains
    return not (status_file.is_file() and "\nState:\tZ" in status_file.read_text())


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""
