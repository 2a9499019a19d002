"""What every stage shares: cached-task construction, per-image shards, and checks of stored outputs.

Every task is called through :func:`checked`, which validates what a cached result points to, recomputes
what is missing (or, with ``verify``, damaged), and lets one process at a time run a given task call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prefect import task
from pydantic import BaseModel, ConfigDict

from maskbank.flows.keys import code_version, digest
from maskbank.flows.refs import DatasetRef, ShardRef, VersionRef
from maskbank.flows.stages.labelmaps import LABELS
from maskbank.storage.datasets import ImageError
from maskbank.storage.locks import store_lock
from maskbank.storage.store import FEATURES, MissingItemError, Store
from maskbank.storage.versions import version_path

LABEL_MAP_KINDS = frozenset({"pseudo_labels", "predictions"})
"""Version kinds whose label maps (``labels/<version id>/<image key>``) belong to the version."""

COMPANIONS: dict[str, tuple[str, ...]] = {FEATURES: ("saliency",)}
"""Items a per-image stage writes under its own key beside its main item when its model provides them
(embed: the saliency map). Whether it does is a property of the key: once one image of a key has a
companion, every image of that key must have it."""

TASK_LOCKS = 64
"""Store locks shared out among task calls (by a hash of the call): one process at a time runs a call."""


class DamagedStoreError(RuntimeError):
    """A stage found an item it reads missing or damaged in the store."""


class ImageJob(BaseModel):
    """One image a per-image stage processes: its content key and where to read it."""

    model_config = ConfigDict(frozen=True)

    key: str
    path: str
    exif_transpose: bool = True


def jobs_of(ref: DatasetRef, indices: Iterable[int] | None = None) -> list[ImageJob]:
    idx = range(len(ref.image_ids)) if indices is None else indices
    return [ImageJob(key=ref.image_keys[i], path=ref.paths[i], exif_transpose=ref.exif_transpose) for i in idx]


def unique_jobs(jobs: Iterable[ImageJob]) -> list[ImageJob]:
    """Jobs with distinct keys (the same image in two datasets is processed once), order kept."""
    seen: dict[str, ImageJob] = {}
    for j in jobs:
        seen.setdefault(j.key, j)
    return list(seen.values())


def shards(jobs: Sequence[ImageJob], size: int) -> list[list[ImageJob]]:
    """Consecutive shards of ``size`` jobs, in content-key order so a shard's members do not depend on
    where an image sits in its dataset."""
    ordered = sorted(jobs, key=lambda j: j.key)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def cached_task(name: str, modules: Sequence[str], **options) -> Callable:
    """A Prefect task cached on its parameters and the source of ``modules`` (its compute code).

    The cache key is the task's parameters (small references) plus the code version, so a rerun with
    nothing changed is served from the cache and a parameter or code change reruns the task.
    """
    code = code_version(modules)

    def cache_key(context, parameters) -> str:
        return digest(name, code, parameters)

    return task(name=name, cache_key_fn=cache_key, persist_result=True, **options)


def run_shard(
    store: Store, stage: str, key: str, jobs: Sequence[ImageJob], compute: Callable[[ImageJob], None]
) -> ShardRef:
    """Run ``compute`` for every job whose item is not complete yet; unreadable images are skipped."""
    t0 = time.perf_counter()
    computed, skipped = [], []
    for job in jobs:
        if store.has_item(stage, key, job.key):
            continue
        try:
            compute(job)
        except ImageError as e:
            skipped.append((job.key, str(e)))
            continue
        computed.append(job.key)
    return ShardRef(
        store=str(store.path), stage=stage, key=key, image_keys=[j.key for j in jobs], computed=computed,
        skipped=skipped, seconds=time.perf_counter() - t0,
    )


def output_units(store: Store, ref: ShardRef | VersionRef) -> list[tuple[str, ...]]:
    """Store paths of the items a task's reference stands for, in units written together.

    A shard has one unit per image it did not skip (the item and its companions); a version has itself
    and, for the label-map kinds, one unit per label map listed in its ``image_key`` array.
    """
    if isinstance(ref, ShardRef):
        skipped = {k for k, _ in ref.skipped}
        stages = [ref.stage] + [c for c in COMPANIONS.get(ref.stage, ()) if ref.key in store.list_keys(c)]
        return [tuple(store.item_path(s, ref.key, k) for s in stages) for k in ref.image_keys if k not in skipped]
    units = [(version_path(ref.id),)]
    if ref.kind in LABEL_MAP_KINDS:
        try:
            keys = store.read_array(version_path(ref.id), "image_key").tolist()
        except MissingItemError:
            return units
        units += [(store.item_path(LABELS, ref.id, str(k)),) for k in keys]
    return units


def _complete(store: Store, ref: ShardRef | VersionRef, verify: bool) -> bool:
    return all(store.item_complete(p, verify=verify) for unit in output_units(store, ref) for p in unit)


def shard_complete(ref: ShardRef, verify: bool = False) -> bool:
    """Whether every non-skipped image of a shard has its complete item (and companions) in the store;
    with ``verify``, whether each also matches its content hash."""
    return _complete(Store.open(ref.store, create=False), ref, verify)


def version_complete(ref: VersionRef, verify: bool = False) -> bool:
    """Whether a version (and, for label-map kinds, each of its label maps) is complete in the store;
    with ``verify``, whether each also matches its content hash."""
    return _complete(Store.open(ref.store, create=False), ref, verify)


def discard_incomplete(ref: ShardRef | VersionRef, verify: bool = False) -> list[str]:
    """Delete every output unit of ``ref`` that is not complete (with ``verify``: that does not match its
    hash), so that the task writes it again; returns the deleted paths."""
    store = Store.open(ref.store, create=False)
    gone = []
    for unit in output_units(store, ref):
        if not all(store.item_complete(p, verify=verify) for p in unit):
            gone += [p for p in unit if store.delete_path(p)]
    return gone


def checked(task_fn, is_complete: Callable[..., bool], verify: bool = False, **kwargs):
    """Call a cached task; if what it returns is not (or no longer) in the store, run it again for real.

    ``is_complete(ref, verify=...)`` checks the outputs: completion marks only, or with ``verify`` also
    their content hashes, in which case damaged outputs are deleted and recomputed. The call holds a
    store lock, so a second run making the same call waits and is then served from the cache. A stored
    input found missing or damaged raises :class:`DamagedStoreError`. A shard reference served from the
    cache reports no images computed in this run.
    """
    name = f"task-{int(digest(task_fn.name, kwargs), 16) % TASK_LOCKS:02d}"
    with store_lock(kwargs["store"], name):
        state = task_fn(return_state=True, **kwargs)
        ref = _result(task_fn, state)
        if not is_complete(ref, verify=verify):
            discard_incomplete(ref, verify)
            state = task_fn.with_options(refresh_cache=True)(return_state=True, **kwargs)
            ref = _result(task_fn, state)
            if not is_complete(ref, verify=verify):
                raise RuntimeError(f"{task_fn.name}: outputs are still incomplete after recomputing")
    if state.name == "Cached" and isinstance(ref, ShardRef):
        ref = ref.model_copy(update={"computed": [], "seconds": 0.0})
    return ref


def _result(task_fn, state):
    try:
        return state.result()
    except MissingItemError as e:
        raise DamagedStoreError(
            f"{task_fn.name}: {e}. Run again with verify=True (`maskbank run --verify`) to check every stored "
            "output this run uses and recompute the damaged ones."
        ) from e
