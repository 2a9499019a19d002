"""Content hashes of files, cached in a json sidecar keyed by ``(path, size, mtime)``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

_CHUNK = 1 << 20


def default_hash_cache(root: str | Path) -> Path:
    """Where the hash sidecar of dataset ``root`` lives: one small json per root in the user cache
    (``<user cache dir>/maskbank/file-hashes/``)."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(user_cache_dir("maskbank")) / "file-hashes" / f"{key}.json"


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FileHasher:
    """sha256 of file contents, rehashing only files whose size or mtime changed since last time.

    The cache is advisory: a missing, unreadable or concurrently replaced sidecar only costs rehashing.
    """

    def __init__(self, cache_path: str | Path | None) -> None:
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._entries: dict[str, list] = self._load()
        self._dirty = False

    def sha256(self, path: str | Path) -> str:
        key = os.path.abspath(path)
        st = os.stat(key)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        digest = sha256_file(key)
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        """Write the sidecar atomically if anything was hashed; failures to write are ignored."""
        if self.cache_path is None or not self._dirty:
            return
        tmp = None
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(self._entries, f)
            os.replace(tmp, self.cache_path)
            self._dirty = False
        except OSError:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    def _load(self) -> dict[str, list]:
        if self.cache_path is None:
            return {}
        try:
            with open(self.cache_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
