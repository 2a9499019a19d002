"""The main flow: pixel labels for a labelled image collection, and for new images by retrieval.

    ingest -> propose -> embed -> pool -> seed -> segment (pseudo-labels) -> evaluate
                                                        \\-> bank -> retrieve (new images) -> evaluate

With ``seed.method='clip'`` a ``clip`` stage embeds the labelled images' proposals with CLIP (after pool) and
the seed stage classifies them against the class names' text embeddings. With ``propose.method='boxes'`` the
proposals are SAM's masks in a detector's boxes for the class names, and ``seed.method='boxes'`` seeds them
with their boxes' classes.

``segment`` trains a linear head on the seeds and fills the pixels no proposal covers; with
``retrieve.method='segmenter'`` the head, not the bank, labels the new images.

Every stage is a cached Prefect task over small references; arrays live in the store. A rerun with
nothing changed is served from the cache; a changed parameter or stage code reruns that stage and what
follows; new images get proposals and features of their own only.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.task_runners import TaskRunner
from pydantic import BaseModel, Field

from maskbank.flows.credentials import load_credentials
from maskbank.flows.execution import DEFAULT_WORKERS, check_scheduler, shard_runner
from maskbank.flows.params import RunParams
from maskbank.flows.progress import StageProgress
from maskbank.flows.refs import DatasetRef, ShardRef, VersionRef
from maskbank.flows.report import publish_run_report, summary_warnings
from maskbank.flows.stages.bank import build_bank
from maskbank.flows.stages.clip import clip_pooled_key, clip_shard
from maskbank.flows.stages.common import (
    ImageJob, checked, checked_shards, jobs_of, shards, unique_jobs, version_complete,
)
from maskbank.flows.stages.embed import embed_shard, features_key
from maskbank.flows.stages.evaluate import evaluate
from maskbank.flows.stages.ingest import DatasetInput, combine, ingest
from maskbank.flows.stages.labels import coverage_of, evidence_of
from maskbank.flows.stages.pool import pool_shard, pooled_key
from maskbank.flows.stages.propose import detector_vocabulary, propose_shard, proposals_key
from maskbank.flows.stages.retrieve import retrieve
from maskbank.flows.stages.seed import predict_image_labels, seed_collection
from maskbank.flows.stages.segment import fill_pseudo_labels, segment_targets, train_segmenter


class RunSummary(BaseModel):
    """What a run produced: version ids, metrics, what looks wrong in the label maps, and what was computed
    or skipped."""

    store: str
    labelled: str = Field(description="Fingerprint of the labelled collection.")
    pseudo_labels: str
    seeds: str | None = Field(None, description="The seed version the pseudo-labels were made from (the "
                              "pseudo-labels themselves when the second stage is off).")
    segmenter: str | None = Field(None, description="The segmentation head trained on the seeds, when on.")
    bank: str
    predictions: str | None = None
    pseudo_label_metrics: dict | None = None
    prediction_metrics: dict | None = None
    pseudo_label_coverage: dict | None = Field(
        None, description="What looks wrong in the pseudo-label maps against the image labels: images all "
        "background, images missing a label, classes never painted (tasks.coverage's summary).")
    prediction_coverage: dict | None = Field(
        None, description="The same for the predictions, over the targets that have image labels.")
    pseudo_label_evidence: dict | None = Field(
        None, description="What the image labels gave seeding to go on: classes in too few labelled images, "
        "classes in every one (tasks.collection.label_evidence).")
    computed: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    images: dict[str, int] = Field({}, description="Labelled, target and distinct images of the run.")
    seconds: dict[str, float] = Field({}, description="Wall time of each stage in this run, cache hits included.")


class _StageClock:
    """Wall time of consecutive stages: ``lap(stage)`` charges the time since the previous lap to ``stage``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def _per_image(stage: str, task_fn, jobs: list[ImageJob], shard_size: int, runner: TaskRunner,
               **kwargs) -> list[ShardRef]:
    with StageProgress(stage, len(jobs)) as progress:
        return checked_shards(stage, task_fn, shards(jobs, shard_size), runner, progress.advance, **kwargs)


@flow(name="maskbank-label", log_prints=True)
def label_images(
    datasets: list[DatasetInput],
    store: str,
    targets: list[DatasetInput] | None = None,
    params: RunParams = RunParams(),
    device: str = "auto",
    verify: bool = False,
    credentials: str | None = None,
    workers: Annotated[int, Field(ge=1)] = DEFAULT_WORKERS,
    dask: str | None = None,
    batch: Annotated[int, Field(ge=1)] | None = None,
) -> RunSummary:
    """Pseudo-label ``datasets`` (images with image-level labels) and, by retrieval, label ``targets``.

    Args:
        datasets: the labelled collection (datasets with the same classes are pooled).
        store: the maskbank store: a local path or an s3:// gs:// az:// URL (created if missing).
        targets: images to label by retrieval against the bank of ``datasets`` (their labels, if any, unused).
        params: every stage's parameters.
        device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
        verify: check every stored output the run uses against its content hash (not only its completion
            mark) and recompute the damaged ones.
        credentials: name of a Prefect Secret block holding the environment variables that reach an
            object-storage store (AWS_ACCESS_KEY_ID, ...); without it they come from the environment.
        workers: shards of the per-image stages (propose, embed, pool) run at once in this many threads of
            the flow's process, each with an equal share of the cores.
        dask: address of a running Dask scheduler (tcp://host:8786) whose workers run those shards instead;
            they need maskbank installed, this run's Prefect API and result storage, and the store.
        batch: images per forward pass of SAM's encoder and of the embed stage's backbone; unset, 1 on a CPU and
            8 on CUDA (the pool stage's mask-attention pass takes one image at a time, each with its own bias, and
            so do the detector and SAM with propose.method 'boxes').
            Results do not depend on it beyond float rounding, and stored outputs are reused whatever it is.
    """
    log = get_run_logger()
    if dask:
        dask, cluster_workers = check_scheduler(dask)
        log.info("per-image shards run on the Dask cluster at %s (%d workers now)", dask, cluster_workers)
    load_credentials(credentials)
    clock = _StageClock()
    labelled = combine([ingest(d, store, verify) for d in datasets])
    target = combine([ingest(d, store, verify) for d in targets]) if targets else None
    clock.lap("ingest")
    collections = [labelled] + ([target] if target else [])
    jobs = unique_jobs(j for c in collections for j in jobs_of(c))
    log.info("%d labelled images, %d target images, %d distinct", len(labelled.image_ids),
             len(target.image_ids) if target else 0, len(jobs))

    p = params
    vocabulary = detector_vocabulary(p.propose, labelled.class_names, labelled.has_background)
    pk, fk = proposals_key(p.propose, **vocabulary), features_key(p.embed)
    with shard_runner(workers, dask) as runner:
        proposals = _per_image("propose", propose_shard, jobs, p.shard_size, runner, store=store, key=pk,
                               params=p.propose, device=device, batch=batch, verify=verify, **vocabulary)
        clock.lap("propose")
        features = _per_image("embed", embed_shard, jobs, p.shard_size, runner, store=store, key=fk,
                              params=p.embed, device=device, batch=batch, verify=verify)
        clock.lap("embed")
        skipped = sorted({s for r in proposals + features for s in r.skipped})
        skip = sorted({k for k, _ in skipped})
        ok_jobs = [j for j in jobs if j.key not in skip]
        plk = pooled_key(pk, fk, p.pool)
        pooled = _per_image("pool", pool_shard, ok_jobs, p.shard_size, runner, store=store, key=plk,
                            proposals_key=pk, features_key=fk, params=p.pool, embed=p.embed,
                            device=device, verify=verify)
        clock.lap("pool")
        seed_pooled, clipped = (None if p.seed.method == "boxes" else plk), []
        if p.seed.method == "clip":  # the labelled images' proposals embedded by CLIP, for the seed stage
            seed_pooled = clip_pooled_key(pk, p.seed)
            zero_shot = p.seed.zero_shot_labels != "off"
            rows = range(len(labelled.image_keys)) if zero_shot else labelled.labelled_indices()
            clipped = _per_image("clip", clip_shard, [j for j in jobs_of(labelled, rows) if j.key not in skip],
                                 p.shard_size, runner, store=store, key=seed_pooled, proposals_key=pk,
                                 params=p.seed, device=device, verify=verify)
            clock.lap("clip")
            if zero_shot:
                labelled = predict_image_labels(store=store, collection=labelled, pooled_key=seed_pooled,
                                                params=p.seed, skip=skip, device=device)

    seeds = checked(seed_collection, version_complete, store=store, collection=labelled, proposals_key=pk,
                    pooled_key=seed_pooled, params=p.seed, skip=skip, device=device, verify=verify)
    clock.lap("seed")
    pseudo, segmenter = seeds, None
    if p.segment.enabled:
        segmenter = checked(train_segmenter, version_complete, store=store, collection=labelled, labels_version=seeds,
                            proposals_key=pk, features_key=fk, config=p.segment.config(), device=device,
                            verify=verify)
        pseudo = checked(fill_pseudo_labels, version_complete, store=store, collection=labelled, seeds_version=seeds,
                         segmenter_version=segmenter, proposals_key=pk, features_key=fk,
                         arbitrate_below=p.segment.arbitrate_below, verify=verify)
        clock.lap("segment")
    pseudo_eval = _evaluate(store, datasets, labelled, pseudo, verify)
    clock.lap("evaluate")
    bank = checked(build_bank, version_complete, store=store, collection=labelled, labels_version=pseudo,
                   features_key=fk, params=p.bank, verify=verify)
    clock.lap("bank")
    predictions = pred_eval = None
    if target is not None and p.retrieve.method == "segmenter":
        predictions = checked(segment_targets, version_complete, store=store, targets=target,
                              segmenter_version=segmenter, proposals_key=pk, features_key=fk, skip=skip,
                              verify=verify)
        clock.lap("segment")
    elif target is not None:
        predictions = checked(retrieve, version_complete, store=store, targets=target, bank_version=bank,
                              proposals_key=pk, pooled_key=plk, params=p.retrieve, skip=skip,
                              device=device, verify=verify)
        clock.lap("retrieve")
    if predictions is not None:
        pred_eval = _evaluate(store, targets, target, predictions, verify)
        clock.lap("evaluate")

    summary = RunSummary(
        store=store, labelled=labelled.fingerprint, pseudo_labels=pseudo.id, seeds=seeds.id,
        segmenter=segmenter.id if segmenter else None, bank=bank.id,
        predictions=predictions.id if predictions else None,
        pseudo_label_metrics=pseudo_eval.metrics if pseudo_eval else None,
        prediction_metrics=pred_eval.metrics if pred_eval else None,
        pseudo_label_coverage=coverage_of(pseudo), prediction_coverage=coverage_of(predictions) if predictions else None,
        pseudo_label_evidence=evidence_of(seeds),
        computed={"propose": sum(len(r.computed) for r in proposals), "embed": sum(len(r.computed) for r in features),
                  "pool": sum(len(r.computed) for r in pooled),
                  **({"clip": sum(len(r.computed) for r in clipped)} if p.seed.method == "clip" else {})},
        skipped=[(k, why) for k, why in skipped] + [s for c in collections for s in c.skipped]
        + [(i, why) for e in (pseudo_eval, pred_eval) if e for i, why in e.metrics.get("skipped", [])],
        images={"labelled": len(labelled.image_ids), "targets": len(target.image_ids) if target else 0,
                "distinct": len(jobs)},
        seconds=clock.seconds,
    )
    for name, m in (("pseudo-labels", summary.pseudo_label_metrics), ("retrieval", summary.prediction_metrics)):
        if m:
            log.info("%s mIoU %.4f over %d images", name, m["classes"]["miou"], m["images"])
    for line in summary_warnings(summary):
        log.warning("looks wrong: %s", line)
    publish_run_report(summary, datasets, targets, params, device)
    return summary


def _evaluate(store: str, inputs: list[DatasetInput], collection: DatasetRef, version: VersionRef,
              verify: bool) -> VersionRef | None:
    if not any(collection.has_truth):
        return None
    return checked(evaluate, version_complete, store=store, datasets=inputs, collection=collection,
                   labels_version=version, verify=verify)
