"""The on-disk weights cache: one directory per checkpoint, built aside and renamed into place.

Layout under the cache root (``weights_cache_dir()``)::

    <entry>/manifest.json     what was verified: per-file size and sha256, source used, time
    <entry>/<filename>        a file checkpoint, or the files of a folder checkpoint
    .locks/<entry>.lock       fcntl lock held while fetching (released when its process dies)
    .staging/<entry>~<id>/    entries being built; renamed to <entry>/ only once complete

An entry is reused when its manifest matches the checkpoint and every listed file has its recorded
size (a cheap check made on every use); sha256 is computed when the entry is built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from maskbank.storage.weights.registry import Checkpoint

CACHE_ENV = "MASKBANK_CACHE_DIR"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def weights_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir`` if given, else ``$MASKBANK_CACHE_DIR``, else ``<user cache dir>/maskbank/weights``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("maskbank")) / "weights"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(folder: Path) -> dict[str, dict]:
    """``{relative posix path: {"size", "sha256"}}`` for every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def entry_name(name: str) -> str:
    """A checkpoint name as a directory name (``facebook/dinov2-small`` -> ``facebook--dinov2-small``)."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "--", name)


class CacheEntry:
    """Where one checkpoint lives in a cache root, and how it is checked, locked and replaced."""

    def __init__(self, root: Path, checkpoint: Checkpoint) -> None:
        self.root = Path(root)
        self.checkpoint = checkpoint
        self.path = self.root / entry_name(checkpoint.name)

    @property
    def target(self) -> Path:
        """What ``fetch`` returns: the file for file checkpoints, the folder otherwise."""
        return self.path if self.checkpoint.is_folder else self.path / str(self.checkpoint.filename)

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def is_valid(self) -> bool:
        """Cheap check: the manifest matches the checkpoint and every file has its recorded size."""
        m = self.manifest()
        ckpt = self.checkpoint
        if not m or m.get("name") != ckpt.name or m.get("kind") != ckpt.kind or m.get("sha256") != ckpt.sha256:
            return False
        files = m.get("files")
        if not isinstance(files, dict) or not files:
            return False
        needed = "config.json" if ckpt.is_folder else ckpt.filename
        if needed not in files:
            return False
        for rel, meta in files.items():
            try:
                if (self.path / rel).stat().st_size != meta["size"]:
                    return False
            except (OSError, KeyError, TypeError):
                return False
        return True

    def recorded_hashes(self) -> dict[str, str]:
        """File hashes recorded when this entry was first fetched (empty if there is no readable record)."""
        m = self.manifest() or {}
        files = m.get("files") if m.get("name") == self.checkpoint.name else None
        if not isinstance(files, dict):
            return {}
        return {rel: meta["sha256"] for rel, meta in files.items() if isinstance(meta, dict) and "sha256" in meta}

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on this entry across processes; the kernel drops it if the process dies."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{self.path.name}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _staging_root(self) -> Path:
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def clear_stale_staging(self) -> None:
        """Remove build directories left by dead processes (call with the lock held)."""
        for stale in self._staging_root().glob(f"{self.path.name}~*"):
            shutil.rmtree(stale, ignore_errors=True)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh build directory on the cache's file system, removed on exit unless committed."""
        stage = Path(tempfile.mkdtemp(prefix=f"{self.path.name}~", dir=self._staging_root()))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def commit(self, stage: Path, files: dict[str, dict], source: str) -> None:
        """Write the manifest into ``stage`` and rename it into place, replacing an invalid entry."""
        manifest = {
            "name": self.checkpoint.name,
            "kind": self.checkpoint.kind,
            "sha256": self.checkpoint.sha256,
            "source": source,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in [stage, *stage.rglob("*")]:  # readable by all, like any other download
            p.chmod(0o755 if p.is_dir() else 0o644)
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{self.path.name}~old", dir=self._staging_root()))
            os.rename(self.path, old / "entry")
            shutil.rmtree(old, ignore_errors=True)
        os.rename(stage, self.path)
