"""What every stage shares: cached-task construction, per-image shards, and checks of stored outputs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prefect import task
from pydantic import BaseModel, ConfigDict

from maskbank.flows.keys import code_version, digest
from maskbank.flows.refs import DatasetRef, ShardRef, VersionRef
from maskbank.storage.datasets import ImageError
from maskbank.storage.store import Store
from maskbank.storage.versions import version_path


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


def shard_complete(ref: ShardRef, verify: bool = False) -> bool:
    """Whether every non-skipped image of a shard has its complete item in the store."""
    store = Store.open(ref.store, create=False)
    skipped = {k for k, _ in ref.skipped}
    return all(store.has_item(ref.stage, ref.key, k, verify=verify) for k in ref.image_keys if k not in skipped)


def version_complete(ref: VersionRef, verify: bool = False) -> bool:
    store = Store.open(ref.store, create=False)
    return store.item_complete(version_path(ref.id), verify=verify)


def checked(task_fn, is_complete: Callable[[object], bool], **kwargs):
    """Call a cached task; if what it returns is not (or no longer) in the store, run it again for real.

    A shard reference served from the cache reports no images computed in this run.
    """
    state = task_fn(return_state=True, **kwargs)
    ref = state.result()
    if not is_complete(ref):
        state = task_fn.with_options(refresh_cache=True)(return_state=True, **kwargs)
        ref = state.result()
        if not is_complete(ref):
            raise RuntimeError(f"{task_fn.name}: outputs are still incomplete after recomputing")
    if state.name == "Cached" and isinstance(ref, ShardRef):
        ref = ref.model_copy(update={"computed": [], "seconds": 0.0})
    return ref
