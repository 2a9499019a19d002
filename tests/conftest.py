"""Test-wide setup: an isolated Prefect home, result store and temporary server for the whole session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="maskbank-prefect-"))
os.environ.setdefault("PREFECT_HOME", str(_PREFECT_HOME))
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(_PREFECT_HOME / "results"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "maskbank" / "sample" / "coco"


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for flows run by tests (started once, ~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models spend their time in thread start-up; one thread is faster and immune to a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for the whole session (~10 s to start)."""
    from s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process set up to reach the test S3 server; yields a fresh ``s3://bucket/prefix`` location."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    yield f"s3://{s3_server.bucket()}/store"


@pytest.fixture
def captured(monkeypatch):
    """What ``maskbank run`` would pass to the flow: the CLI's call of the flow replaced by a recorder."""
    import typer

    from maskbank import cli

    seen = {}

    def fake_label(**kwargs):
        seen.update(kwargs)
        raise typer.Exit(0)

    monkeypatch.setattr(cli, "_label", fake_label)
    return seen
