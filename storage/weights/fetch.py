"""``fetch(name)``: a verified local copy of a checkpoint, from the cache or from its first working source."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from maskbank.storage.weights.cache import CacheEntry, hash_tree, weights_cache_dir
from maskbank.storage.weights.errors import WeightsError
from maskbank.storage.weights.registry import Checkpoint, Source, get_checkpoint
from maskbank.storage.weights.sources import SourceError, obtain_file, obtain_hf_folder

OFFLINE_ENV = "MASKBANK_OFFLINE"
SOURCE_DIR = "source"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

log = logging.getLogger(__name__)


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``$MASKBANK_OFFLINE`` (1/true/yes/on or 0/false/no/off, default off)."""
    if offline is not None:
        return offline
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise WeightsError(f"{OFFLINE_ENV}={value!r} is not a boolean (use 1 or 0)")


def cached(name: str, cache_dir: Path | None = None) -> Path | None:
    """The cached file or folder for ``name`` if present and valid, else ``None``; never downloads."""
    entry = CacheEntry(weights_cache_dir(cache_dir), get_checkpoint(name))
    return entry.target if entry.is_valid() else None


def _build(ckpt: Checkpoint, source: Source, stage: Path, progress: bool) -> None:
    if ckpt.kind == "file":
        obtain_file(ckpt, source, stage, progress=progress)
    elif ckpt.kind == "converted":
        raw = obtain_file(ckpt, source, stage / SOURCE_DIR, progress=progress)
        assert ckpt.convert is not None
        ckpt.convert(raw, stage)
    else:
        obtain_hf_folder(source, stage, progress=progress)


def _check_recorded(files: dict[str, dict], recorded: dict[str, str]) -> None:
    """Trust on first use: files fetched again must hash as they did the first time."""
    changed = sorted(rel for rel, meta in files.items() if rel in recorded and recorded[rel] != meta["sha256"])
    if changed:
        raise SourceError(
            f"{', '.join(changed)} differ from the sha256 recorded on first fetch "
            "(delete the cache entry to accept the new files)"
        )


def fetch(name: str, *, offline: bool | None = None, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the local path of checkpoint ``name`` (a file, or a folder for folder kinds).

    A valid cached copy is reused without network. Otherwise each source is tried in order: the
    download streams into a build directory beside the cache, is checked against the pinned sha256 and
    size (for Hugging Face folders: against the hashes recorded on first fetch, if any), converted when
    the checkpoint needs it, and renamed into place. A lock serialises fetches of one name across
    processes. ``offline`` (default ``$MASKBANK_OFFLINE``) uses the cache only. ``progress`` shows a
    progress bar when stderr is a terminal. Raises ``WeightsError`` naming every source tried and why
    it failed.
    """
    ckpt = get_checkpoint(name)
    entry = CacheEntry(weights_cache_dir(cache_dir), ckpt)
    if entry.is_valid():
        return entry.target
    if offline_mode(offline):
        state = "is incomplete or does not match the registry" if entry.path.exists() else "is not cached"
        raise WeightsError(
            f"{ckpt.name!r} {state} in {entry.root} and offline mode is on ({OFFLINE_ENV}=1 or offline=True); "
            f"fetch it once with network access: maskbank weights fetch {ckpt.name} "
            f"(sources: {'; '.join(str(s) for s in ckpt.sources)})"
        )
    with entry.lock():
        if entry.is_valid():  # another process finished it while we waited
            return entry.target
        entry.clear_stale_staging()
        recorded = entry.recorded_hashes() if ckpt.sha256 is None else {}
        failures: list[str] = []
        for source in ckpt.sources:
            with entry.staging() as stage:
                try:
                    _build(ckpt, source, stage, progress)
                    files = hash_tree(stage)
                    _check_recorded(files, recorded)
                except SourceError as e:
                    log.info("%s: source %s failed: %s", ckpt.name, source, e)
                    failures.append(f"  - {source}: {e}")
                    continue
                entry.commit(stage, files, str(source))
                return entry.target
    raise WeightsError(f"could not fetch {ckpt.name!r}; every source failed:\n" + "\n".join(failures))
