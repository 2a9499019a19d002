"""Where a store lives: a local path, an object-storage URL, or memory, and how to reach it.

A location is a string:

- a local path (``runs/coco.mb``, ``/data/store``): an embedded repository, nothing to start;
- ``s3://bucket/prefix``: Amazon S3 or any S3-compatible server;
- ``gs://bucket/prefix``: Google Cloud Storage;
- ``az://container/prefix``: Azure Blob Storage;
- ``memory://name``: a repository in this process's memory (tests, experiments).

Credentials never appear in a location; they come from the environment of the process that opens the
store, the variables each cloud's own tools read:

============  ===========================================================================================
S3            ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), ``AWS_REGION`` or
              ``AWS_DEFAULT_REGION``; ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible
              server (MinIO, SeaweedFS, Ceph, R2 ...), which also switches to path-style addressing.
              Without keys, the default AWS chain (profile, instance role) is used.
GCS           ``GOOGLE_APPLICATION_CREDENTIALS`` or the default Google chain.
Azure         ``AZURE_STORAGE_ACCOUNT_NAME`` and ``AZURE_STORAGE_ACCOUNT_KEY`` (or the default chain).
============  ===========================================================================================

An S3 location may also name its endpoint and region in its query, which are not secrets:
``s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333&region=us-east-1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import icechunk

SCHEMES = ("s3", "gs", "az", "memory")
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
)
"""The environment variables through which a store in object storage is reached."""
_S3_QUERY = ("endpoint_url", "region")


class LocationError(ValueError):
    """A store location that cannot be used as given."""


@dataclass(frozen=True)
class Location:
    """A parsed store location. ``str(location)`` is the canonical form (an absolute path for local stores)."""

    scheme: str
    """'file', 's3', 'gs', 'az' or 'memory'."""
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        base = f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        return base + ("?" + "&".join(f"{k}={v}" for k, v in self.options) if self.options else "")

    def storage(self) -> icechunk.Storage:
        """The icechunk storage of this location, with credentials from the environment."""
        if self.scheme == "file":
            return icechunk.local_filesystem_storage(str(self.path))
        if self.scheme == "memory":
            return _memory_storage(self.bucket)
        if self.scheme == "s3":
            return _s3_storage(self.bucket, self.prefix, dict(self.options))
        if self.scheme == "gs":
            return icechunk.gcs_storage(bucket=self.bucket, prefix=self.prefix or None, from_env=True)
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get("AZURE_STORAGE_ACCOUNT")
        if not account:
            raise LocationError(f"{self}: set AZURE_STORAGE_ACCOUNT_NAME to the storage account of the container")
        return icechunk.azure_storage(account=account, container=self.bucket, prefix=self.prefix, from_env=True)


def parse_location(location: str | os.PathLike) -> Location:
    """Parse a store location (see the module doc); raises :class:`LocationError` for one that cannot work."""
    text = os.fspath(location)
    if not text:
        raise LocationError("empty store location")
    if "://" not in text:
        return Location("file", path=Path(text).expanduser().absolute())
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise LocationError("store locations take no credentials; set them in the environment instead")
    if scheme == "file":
        return Location("file", path=Path(parts.path).absolute())
    if scheme not in SCHEMES:
        raise LocationError(f"unknown store scheme {scheme!r}: use a local path, s3://, gs://, az:// or memory://")
    if not parts.netloc:
        raise LocationError(f"{text!r} names no bucket")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(_S3_QUERY if scheme == "s3" else ()))
    if unknown:
        raise LocationError(f"unknown option(s) {unknown} in {text!r}" + (f" (S3 takes {list(_S3_QUERY)})" if scheme == "s3" else ""))
    return Location(scheme, bucket=parts.netloc, prefix=parts.path.strip("/"), options=tuple(sorted(query.items())))


def apply_credentials(values: dict[str, str]) -> list[str]:
    """Set store credentials in this process's environment (from a secret store, say); returns the names
    set. Only :data:`CREDENTIAL_VARIABLES` are accepted, so a mistyped name is an error, not ignored."""
    unknown = sorted(set(values) - set(CREDENTIAL_VARIABLES))
    if unknown:
        raise LocationError(f"not store credential variables: {unknown} (known: {list(CREDENTIAL_VARIABLES)})")
    bad = sorted(k for k, v in values.items() if not isinstance(v, str))
    if bad:
        raise LocationError(f"credential values must be strings: {bad}")
    os.environ.update(values)
    return sorted(values)


def s3_endpoint(options: dict | None = None) -> str | None:
    """The S3 endpoint a location uses: its ``endpoint_url`` option, else the environment's."""
    options = options or {}
    return options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3_storage(bucket: str, prefix: str, options: dict) -> icechunk.Storage:
    endpoint = s3_endpoint(options)
    region = options.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    kwargs: dict = {"bucket": bucket, "prefix": prefix or None, "region": region or ("us-east-1" if endpoint else None)}
    if endpoint:
        kwargs.update(endpoint_url=endpoint, allow_http=endpoint.startswith("http://"), force_path_style=True)
    if key and secret:
        kwargs.update(access_key_id=key, secret_access_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    else:
        kwargs.update(from_env=True)
    return icechunk.s3_storage(**kwargs)


_MEMORY: dict[str, icechunk.Storage] = {}


def _memory_storage(name: str) -> icechunk.Storage:
    if name not in _MEMORY:
        _MEMORY[name] = icechunk.in_memory_storage()
    return _MEMORY[name]
