"""Stage keys: one hash of a stage's parameters, its inputs' keys and its code.

A per-image output lives under ``<stage>/<stage key>/<image key>``; changing any parameter, an upstream key
or the source of the modules that compute the stage gives a new key, so exactly that stage and what depends
on it recompute.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from collections.abc import Iterable
from functools import lru_cache

from pydantic import BaseModel


@lru_cache(maxsize=None)
def module_source_hash(module: str) -> str:
    """sha256 of a module's source text."""
    return hashlib.sha256(inspect.getsource(importlib.import_module(module)).encode()).hexdigest()


def code_version(modules: Iterable[str]) -> str:
    """Hash of the sources of ``modules`` (order-independent)."""
    h = hashlib.sha256()
    for m in sorted(set(modules)):
        h.update(m.encode() + b"\0" + module_source_hash(m).encode() + b"\n")
    return h.hexdigest()[:16]


def _jsonable(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def stage_key(stage: str, params: object, upstream: Iterable[str] = (), code: str = "") -> str:
    """The key of ``stage`` for these parameters, upstream keys and code version (24 hex digits)."""
    payload = {"stage": stage, "params": _jsonable(params), "upstream": list(upstream), "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def digest(*parts: object) -> str:
    """A short hash of JSON-able parts (for Prefect cache keys)."""
    return hashlib.sha256(json.dumps([_jsonable(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()
