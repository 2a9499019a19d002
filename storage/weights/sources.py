"""Getting a checkpoint's bytes from one source into a build directory, verified.

A failure of any kind (network, HTTP status, size or hash mismatch, missing archive member) becomes a
``SourceError`` whose message says why, so the caller can try the next source and report them all.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

import huggingface_hub
from tqdm import tqdm

from maskbank import __version__
from maskbank.storage.weights.registry import Checkpoint, Source

TIMEOUT_S = 60
_CHUNK = 1 << 20


class SourceError(Exception):
    """One source could not deliver; the message is the reason."""


class _QuietTqdm(tqdm):
    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def _copy_hashing(src: IO[bytes], dest: Path, *, limit: int | None, bar: tqdm) -> tuple[str, int]:
    digest, n = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            n += len(chunk)
            if limit is not None and n > limit:
                raise SourceError(f"more than the expected {limit:,} bytes")
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), n


def _check(what: str, sha256: str, size: int, want_sha256: str | None, want_size: int | None) -> None:
    if want_size is not None and size != want_size:
        raise SourceError(f"{what} has {size:,} bytes, expected {want_size:,}")
    if want_sha256 is not None and sha256 != want_sha256:
        raise SourceError(f"{what} sha256 mismatch: got {sha256}, expected {want_sha256}")


def download(url: str, dest: Path, *, sha256: str | None, size: int | None, desc: str, progress: bool) -> None:
    """Stream ``url`` to ``dest`` and verify its size and sha256 (when given)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"maskbank/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            if size is not None and length is not None and int(length) != size:
                raise SourceError(f"server reports {int(length):,} bytes, expected {size:,}")
            total = size if size is not None else (int(length) if length else None)
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not _show_progress(progress)) as bar:
                got_sha, got_size = _copy_hashing(response, dest, limit=size, bar=bar)
    except urllib.error.HTTPError as e:
        raise SourceError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise SourceError(f"cannot reach the server: {e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, cut-off bodies, bad URLs
        raise SourceError(f"{type(e).__name__}: {e}") from None
    _check("download", got_sha, got_size, sha256, size)


def extract_member(archive: Path, member: str, dest: Path, *, sha256: str | None, size: int | None) -> None:
    """Copy ``member`` out of a zip/wheel or tar(.gz) ``archive`` into ``dest``, verified."""
    no_bar = tqdm(disable=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                got_sha, got_size = _copy_hashing(src, dest, limit=size, bar=no_bar)
        else:
            with tarfile.open(archive, "r:*") as tf:
                src = tf.extractfile(tf.getmember(member))
                if src is None:
                    raise SourceError(f"archive member {member!r} is not a regular file")
                with src:
                    got_sha, got_size = _copy_hashing(src, dest, limit=size, bar=no_bar)
    except KeyError:
        raise SourceError(f"archive has no member {member!r}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise SourceError(f"cannot read the archive: {type(e).__name__}: {e}") from None
    _check(f"archive member {member!r}", got_sha, got_size, sha256, size)


def obtain_file(checkpoint: Checkpoint, source: Source, workdir: Path, *, progress: bool) -> Path:
    """Put ``checkpoint``'s pinned file from a URL or archive ``source`` at ``workdir/filename``."""
    dest = workdir / str(checkpoint.filename)
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = str(source.url)
    if source.kind == "url":
        download(url, dest, sha256=checkpoint.sha256, size=checkpoint.size, desc=checkpoint.name, progress=progress)
        return dest
    archive = workdir / (url.rsplit("/", 1)[-1] + ".part")
    try:
        download(url, archive, sha256=source.archive_sha256, size=source.archive_size,
                 desc=f"{checkpoint.name} ({source.label})", progress=progress)
        extract_member(archive, str(source.member), dest, sha256=checkpoint.sha256, size=checkpoint.size)
    finally:
        archive.unlink(missing_ok=True)
    return dest


def obtain_hf_folder(source: Source, workdir: Path, *, progress: bool) -> None:
    """Download a Hugging Face model's files (``source.hf_files``: ``config.json``, ``*.safetensors`` and, for
    text-image models and detectors, their processors' files) into ``workdir``."""
    try:
        huggingface_hub.snapshot_download(
            str(source.hf_repo),
            revision=source.hf_revision,
            allow_patterns=list(source.hf_files),
            local_dir=workdir,
            tqdm_class=None if _show_progress(progress) else _QuietTqdm,
        )
    except Exception as e:  # the hub client raises many types (HTTP, offline, repo/revision not found)
        raise SourceError(f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    shutil.rmtree(workdir / ".cache", ignore_errors=True)
    if not (workdir / "config.json").is_file() or not any(workdir.glob("*.safetensors")):
        raise SourceError("the repository has no config.json and *.safetensors at this revision")
