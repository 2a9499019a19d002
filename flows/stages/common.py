"""What every stage shares: cached-task construction, per-image shards, and checks of stored outputs.

Every task is called through :func:`checked`, which validates what a cached result points to, recomputes
what is missing (or, with ``verify``, damaged), and lets one process at a time run a given task call. The
shards of a per-image stage go through :func:`checked_shards`, which runs them at once on a task runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner
from pydantic import BaseModel, ConfigDict

from maskbank.flows.keys import code_version, digest
from maskbank.flows.refs import DatasetRef, ShardRef, VersionRef
from maskbank.storage.datasets import ImageError
from maskbank.storage.layout import LABEL_MAP_KINDS, LABELS, labels_group, version_group
from maskbank.storage.location import parse_location
from maskbank.storage.locks import store_lock
from maskbank.storage.store import ImageOutput, MissingItemError, Store
from maskbank.storage.versions import delete_version, version_exists

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
    return [ImageJob(key=ref.image_keys[i], path=ref.paths[i], exif_transpose=ref.exif_transpose[i]) for i in idx]


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
    store: Store, stage: str, key: str, jobs: Sequence[ImageJob],
    compute: Callable[[list[ImageJob]], list[ImageOutput]], write: Callable[[list[ImageOutput]], list[str]],
    batch: int = 1,
) -> ShardRef:
    """Run ``compute`` over the jobs without an output yet, ``batch`` jobs at a time, then ``write`` the
    outputs in one commit. Unreadable images are skipped: a batch that meets one is computed again an image
    at a time, so the others still get their outputs."""
    t0 = time.perf_counter()
    todo = [job for job in jobs if not store.has_item(stage, key, job.key)]
    outputs, skipped = [], []
    for start in range(0, len(todo), batch):
        group = todo[start : start + batch]
        try:
            outputs.extend(compute(group))
            continue
        except ImageError as e:
            if len(group) == 1:
                skipped.append((group[0].key, str(e)))
                continue
        for job in group:
            try:
                outputs.extend(compute([job]))
            except ImageError as e:
                skipped.append((job.key, str(e)))
    write(outputs)
    return ShardRef(
        store=store.url, stage=stage, key=key, image_keys=[j.key for j in jobs],
        computed=[o.key for o in outputs], skipped=skipped, seconds=time.perf_counter() - t0,
    )


def _incomplete(store: Store, ref: ShardRef | VersionRef, verify: bool) -> tuple[list[str], bool]:
    """What of a task's outputs is missing (with ``verify``: or damaged): the images of a shard or of a
    version's label maps, and whether the version itself is."""
    if isinstance(ref, ShardRef):
        skipped = {k for k, _ in ref.skipped}
        keys = [k for k in ref.image_keys if k not in skipped]
        return [k for k in keys if not store.has_item(ref.stage, ref.key, k, verify=verify)], False
    if not version_exists(store, ref.id) or not store.item_complete(version_group(ref.id), verify=verify):
        return [], True
    if ref.kind not in LABEL_MAP_KINDS:
        return [], False
    try:
        keys = store.read_array(version_group(ref.id), "image_key").tolist()
    except MissingItemError:
        return [], True
    return [k for k in keys if not store.has_item(LABELS, ref.id, k, verify=verify)], False


def shard_complete(ref: ShardRef, verify: bool = False) -> bool:
    """Whether every non-skipped image of a shard has its output in the store; with ``verify``, whether
    each also matches its content hash."""
    return _incomplete(Store.open(ref.store, create=False), ref, verify) == ([], False)


def version_complete(ref: VersionRef, verify: bool = False) -> bool:
    """Whether a version (and, for label-map kinds, each of its label maps) is in the store; with
    ``verify``, whether each also matches its content hash."""
    return _incomplete(Store.open(ref.store, create=False), ref, verify) == ([], False)


def discard_incomplete(ref: ShardRef | VersionRef, verify: bool = False) -> list[str]:
    """Drop every output of ``ref`` that is missing or (with ``verify``) damaged, so that the task writes it
    again; returns what was dropped (image keys, or the version id)."""
    store = Store.open(ref.store, create=False)
    images, whole = _incomplete(store, ref, verify)
    if isinstance(ref, ShardRef):
        return store.drop_images(ref.stage, ref.key, images)
    if whole:
        if version_exists(store, ref.id):
            delete_version(store, ref.id, force=True)
        elif store.exists(labels_group(ref.id)):
            store.delete_paths([labels_group(ref.id)])
        return [ref.id]
    return store.drop_images(LABELS, ref.id, images)


def checked(task_fn, is_complete: Callable[..., bool], verify: bool = False, **kwargs):
    """Call a cached task; if what it returns is not (or no longer) in the store, run it again for real.

    ``is_complete(ref, verify=...)`` checks the outputs: completion marks only, or with ``verify`` also
    their content hashes, in which case damaged outputs are deleted and recomputed. The call holds a
    store lock, so a second run making the same call waits and is then served from the cache. A stored
    input found missing or damaged raises :class:`DamagedStoreError`. A shard reference served from the
    cache reports no images computed in this run.
    """
    name = f"task-{int(digest(task_fn.name, kwargs), 16) % TASK_LOCKS:02d}"
    with store_lock(parse_location(kwargs["store"]), name):
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


@task(name="shard", task_run_name="shard-{stage}-{index}", cache_policy=NO_CACHE, persist_result=False)
def checked_shard(stage: str, index: int, task_fn, verify: bool, kwargs: dict) -> ShardRef:
    """One shard of a per-image stage through :func:`checked`, where the task runner put it."""
    return checked(task_fn, shard_complete, verify=verify, **kwargs)


def checked_shards(
    stage: str, task_fn, parts: Sequence[Sequence[ImageJob]], runner: TaskRunner,
    done: Callable[[int], None] = lambda n: None, verify: bool = False, **kwargs,
) -> list[ShardRef]:
    """Every shard of a per-image stage submitted to the started ``runner`` at once, each through
    :func:`checked` (its lock, validation and recomputation); ``done(n)`` is called with a shard's image
    count as it finishes. References come back in shard order."""
    futures = {
        runner.submit(checked_shard, parameters={"stage": stage, "index": i, "task_fn": task_fn, "verify": verify,
                                                 "kwargs": {**kwargs, "jobs": list(part)}}): i
        for i, part in enumerate(parts)
    }
    refs: list[ShardRef | None] = [None] * len(parts)
    for future in as_completed(list(futures)):
        i = futures[future]
        refs[i] = future.result()
        done(len(parts[i]))
    return refs


def _result(task_fn, state):
    try:
        return state.result()
    except MissingItemError as e:
        raise DamagedStoreError(
            f"{task_fn.name}: {e}. Run again with verify=True (`maskbank run --verify`) to check every stored "
            "output this run uses and recompute the damaged ones."
        ) from e
