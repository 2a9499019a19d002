"""Quality of pseudo-labels and retrieval against references built on the same proposals and features.

    python bench/quality.py --data ../shared/data/coco-tiny --store runs/quality-store --out runs/quality.json
    python bench/quality.py --data maskbank/sample/coco --store /tmp/q-store --out /tmp/q.json --smoke

The main flow runs four times on one store; proposals and features are computed once and shared by
content key, so the later runs only seed, train the head, build a bank and label val2017:

  1. train2017 + val2017 pseudo-labelled;
  2. train2017 pseudo-labelled and banked, val2017 labelled by retrieval;
  3. run 2 with val2017 labelled by the second stage's head instead (``retrieve.method='segmenter'``);
  4. run 2 with ModuSeg's original bank and retrieval settings.

Rows (mIoU over the dataset's classes, over the 21 PASCAL VOC classes with other objects ignored in the
truth, and pixel accuracy), every one on the same proposals and features:

  pseudo_labels       run 1's pseudo-labels, scored from their stored label maps
  seeds               run 1's seeds: the pseudo-labels before the head fills the pixels no proposal covers
  oracle              each proposal takes its majority truth class: the ceiling the proposals allow
  oracle_restricted   the majority among the image's labels and background: the pseudo-labels' ceiling
                      (equal to ``oracle`` where the image labels are exactly the classes in the truth)
  oracle_val          the oracle on val2017: the ceiling of the retrieval rows
                      (ceilings in pixel accuracy, which the majority maximises; mIoU has no such bound)
  retrieval           run 2's val2017 predictions
  gt_bank             run 2's retrieval against a bank built from train2017's truth instead of its
                      pseudo-labels: the ceiling of retrieval with these features and this bank size
  retrieval_segmenter run 3's val2017 predictions
  retrieval_moduseg   run 4's val2017 predictions (majority vote k=25, 20 fixed erosions, ~300 px)
  gt_bank_moduseg     gt_bank with ModuSeg's settings (``PurifyParams.moduseg()``)

Ablations vary one factor around the flow's defaults, computed in-process from the stored arrays: the
decision rule, the erosion and the outlier filter ratio of retrieval on val2017 for the truth bank and
the pseudo-label bank, and the seeding parameters of the seeds row. Variants change what the
flows compute, the feature layer and the proposal density (points per side, SAM input size): each reruns
the two main flows on the same store (only the changed stage and those after it are computed) and scores
the pseudo-label, oracle, retrieval and truth-bank rows on the same images.

Proposals are disjoint, so a painted label map is a lookup of its proposals' labels (see
``bench/_common.py``) and every in-process row is scored from per-proposal truth histograms. The
``checks`` of the output confirm it on this data: scoring run 1's per-proposal seeds this way, seeding
again in-process, rebuilding run 2's bank and retrieving again with it all reproduce the flow's figures.

With ``--smoke`` the first 2 images of each split are used at light settings (4x4 prompts at 512 px,
224 px features) and two light variants.

Output JSON: ``rows`` and ``ablations`` entries hold ``images``, ``miou``, ``miou_voc21`` and
``pixel_accuracy`` (null where undefined); an ablation's ``row`` names the row it varies, and a variant's
entries add ``proposals_per_image``, ``coverage`` (share of counted pixels inside a proposal) and the
``seconds`` of its two flow runs (stages served from the cache take almost none); ``proposals`` holds the
defaults' proposals per image and coverage; ``ratios`` the steering ratios of the rows' mIoU (goal 0.8);
``prototypes`` the bank sizes; ``checks`` the reproductions above with ``ok``; ``versions``, ``params``,
``images``, ``skipped``, ``seconds`` and ``provenance`` say what was scored and how.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from pydantic import BaseModel

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    ProposalTruth, fold_confusion, format_table, owner_map, proposal_confusion,
    provenance, publish, resize_nearest,
)
from maskbank.flows.params import (  # noqa: E402
    BankParams, EmbedParams, ProposeParams, RetrieveParams, RunParams, SeedParams,
)
from maskbank.flows.refs import DatasetRef  # noqa: E402
from maskbank.flows.stages.bank import load_bank, purify_params  # noqa: E402
from maskbank.flows.stages.embed import features_key  # noqa: E402
from maskbank.flows.stages.ingest import DatasetInput, ingest  # noqa: E402
from maskbank.flows.stages.pool import pooled_key  # noqa: E402
from maskbank.flows.stages.propose import proposals_key  # noqa: E402
from maskbank.storage.datasets import DatasetError, open_dataset, working_size  # noqa: E402
from maskbank.storage.datasets.coco import write_coco_subset  # noqa: E402
from maskbank.storage.store import Store  # noqa: E402
from maskbank.storage.versions import read_version  # noqa: E402
from maskbank.tasks.bank import BankBuilder, PrototypeBank, prototypes_for_image  # noqa: E402
from maskbank.tasks.metrics import ConfusionMatrix, covers_voc, fit_to_truth, miou, pixel_accuracy  # noqa: E402
from maskbank.tasks.models.device import resolve_device  # noqa: E402
from maskbank.tasks.purify import PurifyParams  # noqa: E402
from maskbank.tasks.retrieve import BankIndex  # noqa: E402
from maskbank.tasks.seed import seed_proposals  # noqa: E402

if TYPE_CHECKING:
    from maskbank.flows.label import RunSummary

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco-tiny"
SPLITS = ("train2017", "val2017")
SMOKE_IMAGES = 2
MODUSEG_MIN_AREA_PX = 300
TOLERANCE = 1e-9
P = TypeVar("P", bound=BaseModel)

ROWS = {
    "pseudo_labels": "flow pseudo-labels (train+val)",
    "seeds": "flow seeds (the pseudo-labels before the head fills them)",
    "oracle": "proposal oracle: majority truth class",
    "oracle_restricted": "oracle among image labels + background",
    "oracle_val": "proposal oracle on val",
    "retrieval": "flow retrieval, pseudo-label bank",
    "gt_bank": "retrieval, truth bank",
    "retrieval_segmenter": "flow, val labelled by the head instead of the bank",
    "retrieval_moduseg": "flow retrieval, ModuSeg settings",
    "gt_bank_moduseg": "retrieval, truth bank, ModuSeg settings",
}
RATIOS = {  # name: (numerator row, denominator row); the goal is 0.8 or more
    "pseudo_labels/oracle": ("pseudo_labels", "oracle"),
    "pseudo_labels/oracle_restricted": ("pseudo_labels", "oracle_restricted"),
    "seeds/oracle_restricted": ("seeds", "oracle_restricted"),
    "retrieval/gt_bank": ("retrieval", "gt_bank"),
    "retrieval_segmenter/gt_bank": ("retrieval_segmenter", "gt_bank"),
    "retrieval_moduseg/gt_bank_moduseg": ("retrieval_moduseg", "gt_bank_moduseg"),
}
RULE_GRID: list[dict] = (
    [{"rule": "class_balanced", "k_per_class": k} for k in (1, 3, 5, 10)]
    + [{"rule": "majority", "k": k} for k in (1, 5, 25)]
    + [{"rule": "knn_weighted", "k": 25}]
)
EROSION_GRID: list[dict] = (
    [{"erosion": "scaled", "erosion_fraction": f} for f in (0.1, 0.25, 0.5)]
    + [{"erosion": "fixed", "max_iterations": n} for n in (0, 5, 20)]
)
FILTER_GRID: list[dict] = [{"filter_ratio": r} for r in (0.0, 0.25, 0.5)]
SEED_GRID: list[dict] = (
    [{}]
    + [{"rounds": r} for r in (0, 2)]
    + [{"saliency_weight": w} for w in (0.0, 1.0)]
    + [{"background_bias": b} for b in (0.0, 0.5, 1.0)]
    + [{"claim_labels": c} for c in (False, True)]
    # The evidence caps: out of reach (every image is evidence, as before there were caps), and lowered until
    # they bind on a small set (defaults: 128 images per class, 256 reference).
    + [{"evidence_per_class": 10**6, "reference_images": 10**6}]
    + [{"evidence_per_class": n} for n in (1, 2)]
    + [{"reference_images": n} for n in (20, 40, 80)]
    + [{"evidence_per_class": 2, "reference_images": 40}]
)
# Settings that change proposals or features: each reruns the flows (sharing the store) and scores VARIANT_ROWS.
VARIANT_GRID: list[tuple[str, dict]] = (
    [("feature_layer", {"embed": {"layer": n}}) for n in (6, 8, 9, 11, 12)]
    + [("proposal_density", {"propose": {"input_size": n, "points_per_side": k}})
       for n, k in ((512, 16), (512, 32), (1024, 16))]
)
SMOKE_VARIANT_GRID: list[tuple[str, dict]] = [
    ("feature_layer", {"embed": {"layer": 11}}), ("proposal_density", {"propose": {"points_per_side": 6}}),
]
VARIANT_ROWS = ("pseudo_labels", "oracle", "retrieval", "gt_bank")


@dataclass
class Image:
    """What scoring needs of one image: its truth, its proposals' truth counts and pooled features."""

    image_id: str
    key: str
    labels: list[int]
    truth: np.ndarray
    proposals: ProposalTruth
    features: np.ndarray
    saliency: np.ndarray


@dataclass
class Split:
    ref: DatasetRef
    images: list[Image]
    skipped: list[tuple[str, str]]
    """``(image id, reason)`` of images left out: not processed by the flow, or truth that does not fit."""


def load_split(store: Store, dataset: DatasetInput, proposals: str, pooled: str, skip: set[str]) -> Split:
    """A split's reference (as the flow ingests it) and its images, less those the flow skipped and those
    the flow's evaluation leaves out. Proposals at a reduced working size are scaled to the truth."""
    ref = ingest.fn(dataset, store.url)
    ds = open_dataset(dataset.spec())
    k = len(ref.class_names)
    images, skipped = [], []
    for i, (image_id, key) in enumerate(zip(ref.image_ids, ref.image_keys)):
        if key in skip:
            skipped.append((image_id, "not processed by the flow"))
            continue
        if ref.labels[i] is None or not ref.has_truth[i]:
            raise ValueError(f"{ref.name}: image {image_id!r} needs image labels and pixel truth")
        try:
            truth = ds.truth(image_id)
        except DatasetError as e:
            skipped.append((image_id, f"truth cannot be read: {e}"))
            continue
        props = store.read_proposals(proposals, key)
        rec = ds.record(image_id)
        owner, why = fit_to_truth(owner_map(props.masks()), truth, (rec.height, rec.width), working_size(truth.shape))
        if owner is None:
            skipped.append((image_id, why))
            continue
        counts = ProposalTruth.measure(owner, len(props), truth, k, ds.ignore_index)
        a = store.read_pooled(pooled, key)
        images.append(Image(image_id, key, list(ref.labels[i]), truth, counts, a["features"], a["saliency"]))
    return Split(ref, images, skipped)


def summarise(matrix: np.ndarray, class_names: list[str], images: int) -> dict:
    """mIoU over all classes and the VOC 21 (when the classes cover them), pixel accuracy."""
    voc = fold_confusion(matrix, ConfusionMatrix.for_subset(class_names)).miou() if covers_voc(class_names) else None
    return {"images": images, "miou": miou(matrix), "miou_voc21": voc, "pixel_accuracy": pixel_accuracy(matrix)}


def score_labels(images: Sequence[Image], labels: Sequence[np.ndarray], class_names: list[str]) -> dict:
    """Scores of the label maps painted from per-proposal ``labels`` of ``images``."""
    cm = proposal_confusion([im.proposals for im in images], labels, len(class_names))
    return summarise(cm, class_names, len(images))


def score_version(store: Store, version: str, images: Sequence[Image], class_names: list[str]) -> dict:
    """Scores of a version's stored label maps (as the flow's evaluation reads them)."""
    cm = ConfusionMatrix(len(class_names))
    for im in images:
        cm.update(resize_nearest(store.read_label_map(version, im.key), im.truth.shape), im.truth)
    return summarise(cm.matrix, class_names, len(images))


def version_proposal_labels(store: Store, version: str, images: Sequence[Image]) -> list[np.ndarray]:
    """Per-proposal labels a ``pseudo_labels`` or ``predictions`` version recorded, in ``images`` order."""
    a = read_version(store, version).arrays
    row = {str(k): j for j, k in enumerate(a["image_key"])}
    return [a["proposal_label"][a["proposal_image"] == row[im.key]] for im in images]


class BankImages:
    """Bank images' patch features and label maps (scaled to the size features were made at); builds
    prototype banks as the flow's bank stage does, caching each image's prototypes per purification."""

    def __init__(self, store: Store, features: str, images: Sequence[Image], label_maps: Sequence[np.ndarray],
                 class_names: list[str]) -> None:
        if len(images) != len(label_maps):
            raise ValueError(f"{len(images)} images but {len(label_maps)} label maps")
        self.grids = [store.read_features(features, im.key) for im in images]
        self.label_maps = [resize_nearest(m, g.image_hw) for m, (_, g) in zip(label_maps, self.grids)]
        self.classes = [im.labels for im in images]
        self.class_names = class_names
        keys = [im.key for im in images]
        self.rank = {j: r for r, j in enumerate(sorted(range(len(keys)), key=keys.__getitem__))}
        """Each image's place in content-key order: the order the flow's bank stage keeps its prototypes in."""
        self._prototypes: dict[tuple[int, PurifyParams], tuple[np.ndarray, np.ndarray]] = {}

    def bank(self, params: BankParams, purify: PurifyParams | None = None) -> PrototypeBank:
        """The bank of ``params`` (``purify`` overrides its purification with a fixed-pixel setting)."""
        builder = BankBuilder(self.class_names)
        for j, ((features, geometry), label_map, classes) in enumerate(zip(self.grids, self.label_maps, self.classes)):
            p = purify or purify_params(params, geometry.image_hw)
            if (j, p) not in self._prototypes:
                self._prototypes[j, p] = prototypes_for_image(features, geometry, label_map, classes, p)
            builder.add(self.rank[j], *self._prototypes[j, p])
        return builder.build(drop_ratio=params.filter_ratio)


def retrieval_labels(bank: PrototypeBank, params: RetrieveParams, images: Sequence[Image],
                     device: torch.device) -> list[np.ndarray]:
    """Per-proposal labels of ``images`` by retrieval against ``bank`` with ``params``' rule."""
    index = BankIndex(bank, device=device)
    k = params.k if params.rule != "class_balanced" else params.k_per_class
    return [index.classify(im.features, rule=params.rule, k=k)[0] if len(im.features) else np.zeros(0, np.int32)
            for im in images]


def retrieval_scores(bank: PrototypeBank, params: RetrieveParams, images: Sequence[Image], class_names: list[str],
                     device: torch.device) -> dict:
    """Scores of retrieval against ``bank`` with ``params``' rule on ``images``."""
    return score_labels(images, retrieval_labels(bank, params, images, device), class_names)


def seed_labels(images: Sequence[Image], num_classes: int, params: SeedParams,
                device: torch.device, background: bool = True) -> list[np.ndarray]:
    """Per-proposal seed labels of ``images`` as one labelled collection, as the flow's seed stage makes them
    (images in content-key order, which decides the ones a capped evidence group takes); ``background``:
    whether the collection's class list has a background class."""
    order = sorted(range(len(images)), key=lambda j: images[j].key)
    labels = _seed_labels([images[j] for j in order], num_classes, params, device, background)
    out: list[np.ndarray] = [np.empty(0)] * len(images)
    for j, lab in zip(order, labels):
        out[j] = lab
    return out


def _seed_labels(images: Sequence[Image], num_classes: int, params: SeedParams,
                 device: torch.device, background: bool) -> list[np.ndarray]:
    features = np.concatenate([im.features for im in images])
    saliency = np.concatenate([im.saliency for im in images])
    index = np.concatenate([np.full(len(im.features), j, np.int64) for j, im in enumerate(images)])
    multi_hot = np.zeros((len(images), num_classes), bool)
    for j, im in enumerate(images):
        multi_hot[j, im.labels] = True
    use_saliency = params.saliency_weight > 0 and len(saliency) and not np.isnan(saliency).any()
    result = seed_proposals(features, index, multi_hot, saliency=saliency if use_saliency else None,
                            config=params.config(background), device=device)
    return [result.labels[index == j] for j in range(len(images))]


def updated(params: P, change: dict) -> P:
    """A validated copy of ``params`` with the fields of ``change`` replaced."""
    return type(params)(**{**params.model_dump(), **change})


def moduseg_params(params: RunParams, image_area: float) -> RunParams:
    """``params`` with ModuSeg's bank (3x3 x 20 erosions, no fallback, 300 px at ``image_area`` pixels, 25 %
    filter) and retrieval (majority of k=25, NMS 0.4)."""
    bank = BankParams(erosion="fixed", max_iterations=20, min_area=MODUSEG_MIN_AREA_PX / image_area, filter_ratio=0.25)
    retrieve = updated(params.retrieve, {"rule": "majority", "k": 25, "nms_iou": 0.4})
    return updated(params, {"bank": bank.model_dump(), "retrieve": retrieve.model_dump()})


def describe(change: dict, prefix: str = "") -> str:
    """``change`` as ``a=1 b.c=2`` (nested dicts dotted)."""
    parts = [describe(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k}={v}" for k, v in change.items()]
    return " ".join(parts) or "flow defaults"


def changed(params: RunParams, change: dict) -> RunParams:
    """``params`` with the stage fields of ``change`` (``{"embed": {"layer": 8}}``) replaced."""
    return updated(params, {stage: updated(getattr(params, stage), fields).model_dump()
                            for stage, fields in change.items()})


def ablations(gt: BankImages, pseudo: BankImages, val: Sequence[Image], labelled: Sequence[Image],
              params: RunParams, class_names: list[str], device: torch.device) -> list[dict]:
    """One factor at a time around the flow's defaults: retrieval rule, erosion and filter ratio for both
    banks (val images), and seeding parameters (the labelled collection)."""
    variants = (
        [("rule", c, params.bank, updated(params.retrieve, c)) for c in RULE_GRID]
        + [("erosion", c, updated(params.bank, c), params.retrieve) for c in EROSION_GRID]
        + [("filter_ratio", c, updated(params.bank, c), params.retrieve) for c in FILTER_GRID]
    )
    out = []
    for row, source in (("gt_bank", gt), ("retrieval", pseudo)):
        for group, change, bank_params, rule in variants:
            bank = source.bank(bank_params)
            out.append({"group": group, "row": row, "setting": describe(change), "prototypes": len(bank),
                        **retrieval_scores(bank, rule, val, class_names, device)})
    seeded: dict[SeedParams, dict] = {}
    for change in SEED_GRID:
        seed = updated(params.seed, change)
        if seed not in seeded:
            seeded[seed] = score_labels(labelled, seed_labels(labelled, len(class_names), seed, device), class_names)
        out.append({"group": "seeding", "row": "pseudo_labels", "setting": describe(change), "prototypes": None, **seeded[seed]})
    return out


def _check(value: float, reference: float) -> dict:
    ok = (math.isnan(value) and math.isnan(reference)) or abs(value - reference) <= TOLERANCE
    return {"value": value, "reference": reference, "ok": bool(ok)}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


def _plain(value: object) -> object:
    """JSON-ready: NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def smoke_params() -> RunParams:
    return RunParams(propose=ProposeParams(input_size=512, points_per_side=4), embed=EmbedParams(long_side=224))


@dataclass
class Setting:
    """The flows of one parameter setting and the rows scored from them."""

    params: RunParams
    runs: dict[str, RunSummary]
    train: Split
    val: Split
    gt: BankImages
    """Prototype source of the truth bank (train2017's truth masks on these features)."""
    banks: dict[str, PrototypeBank]
    """The banks of the ``retrieval`` (the flow's, from pseudo-labels) and ``gt_bank`` rows."""
    rows: dict[str, dict]
    proposals: dict
    """``per_image``: mean proposals per labelled image; ``coverage``: share of counted pixels in a proposal."""
    seconds: float

    @property
    def labelled(self) -> list[Image]:
        return self.train.images + self.val.images


def evaluate_setting(store: Path, train: DatasetInput, val: DatasetInput, params: RunParams, device: str,
                     extra_skips: set[str] = frozenset()) -> Setting:
    """Run the pseudo-label flow (train + val) and the retrieval flow (train -> val) with ``params`` and score
    the rows that do not depend on ModuSeg's settings."""
    from maskbank.flows.label import label_images

    t0 = time.perf_counter()
    runs = {
        "pseudo_labels": label_images(datasets=[train, val], store=str(store), params=params, device=device),
        "retrieval": label_images(datasets=[train], targets=[val], store=str(store), params=params, device=device),
    }
    seconds = time.perf_counter() - t0
    st = Store.open(store, create=False)
    pk, fk = proposals_key(params.propose), features_key(params.embed)
    skip = {k for r in runs.values() for k, _ in r.skipped} | set(extra_skips)
    tr, va = (load_split(st, d, pk, pooled_key(pk, fk, params.pool), skip) for d in (train, val))
    names = tr.ref.class_names
    labelled = tr.images + va.images
    gt = BankImages(st, fk, tr.images, [im.truth for im in tr.images], names)
    banks = {"retrieval": load_bank(st, runs["retrieval"].bank), "gt_bank": gt.bank(params.bank)}
    rows = {
        "pseudo_labels": score_version(st, runs["pseudo_labels"].pseudo_labels, labelled, names),
        "seeds": score_version(st, runs["pseudo_labels"].seeds, labelled, names),
        "oracle": score_labels(labelled, [im.proposals.majority() for im in labelled], names),
        "oracle_restricted": score_labels(labelled, [im.proposals.majority([0, *im.labels]) for im in labelled],
                                          names),
        "oracle_val": score_labels(va.images, [im.proposals.majority() for im in va.images], names),
        "retrieval": score_version(st, runs["retrieval"].predictions, va.images, names),
        "gt_bank": retrieval_scores(banks["gt_bank"], params.retrieve, va.images, names, resolve_device(device)),
    }
    covered = sum(int(im.proposals.counts.sum()) for im in labelled)
    counted = covered + sum(int(im.proposals.rest.sum()) for im in labelled)
    proposals = {"per_image": float(np.mean([len(im.proposals) for im in labelled])) if labelled else math.nan,
                 "coverage": covered / counted if counted else math.nan}
    return Setting(params, runs, tr, va, gt, banks, rows, proposals, seconds)


def variant_rows(store: Path, train: DatasetInput, val: DatasetInput, base: Setting,
                 grid: Sequence[tuple[str, dict]], device: str, log: Callable[[str], None]) -> list[dict]:
    """Each ``(group, change)`` of ``grid``: the flows rerun with ``change`` applied to ``base``'s parameters,
    scored on the images ``base`` scored (``VARIANT_ROWS``, plus proposals per image, coverage and seconds)."""
    # Images the base setting left out stay out, so every setting is scored on the same images.
    left_out = {k for s in (base.train, base.val) for k in s.ref.image_keys} - {im.key for im in base.labelled}
    out = []
    for group, change in grid:
        log(f"variant {describe(change)}")
        v = evaluate_setting(store, train, val, changed(base.params, change), device, left_out)
        if [im.key for im in v.labelled] != [im.key for im in base.labelled]:
            raise RuntimeError(f"variant {describe(change)} scored other images than the flow defaults")
        for row in VARIANT_ROWS:
            out.append({"group": group, "row": row, "setting": describe(change),
                        "prototypes": len(v.banks[row]) if row in v.banks else None, **v.rows[row],
                        "proposals_per_image": v.proposals["per_image"], "coverage": v.proposals["coverage"],
                        "seconds": v.seconds})
    return out


def run(data: Path, store: Path, params: RunParams, device: str = "auto", images: int | None = None,
        variants: Sequence[tuple[str, dict]] = VARIANT_GRID, log: Callable[[str], None] = print) -> dict:
    """Run the flows and score every row and ablation; returns the results (see the module docstring)."""
    from maskbank.flows.label import label_images

    with tempfile.TemporaryDirectory(prefix="maskbank-quality-") as tmp:
        if images is None:
            train, val = (DatasetInput(path=str(data), split=s) for s in SPLITS)
        else:
            train, val = (DatasetInput(path=str(write_coco_subset(data, s, Path(tmp), first=images)),
                                       images=str(data / s)) for s in SPLITS)
        image_area = float(np.median([r.height * r.width for r in open_dataset(train.spec()).records]))
        original = moduseg_params(params, image_area)
        base = evaluate_setting(store, train, val, params, device)
        t0 = time.perf_counter()
        moduseg = label_images(datasets=[train], targets=[val], store=str(store), params=original, device=device)
        by_head = label_images(datasets=[train], targets=[val], store=str(store), device=device,
                               params=params.model_copy(update={"retrieve": params.retrieve.model_copy(
                                   update={"method": "segmenter"})}))
        flow_seconds = base.seconds + time.perf_counter() - t0
        if moduseg.skipped:
            raise RuntimeError(f"ModuSeg settings skipped images the flow defaults did not: {moduseg.skipped}")
        log(f"scoring {len(base.train.images)} + {len(base.val.images)} images")
        t0 = time.perf_counter()
        st = Store.open(store, create=False)
        names = base.train.ref.class_names
        labelled, va, dev = base.labelled, base.val.images, resolve_device(device)
        rows = dict(base.rows)
        banks = {**base.banks, "retrieval_moduseg": load_bank(st, moduseg.bank),
                 "gt_bank_moduseg": base.gt.bank(original.bank, PurifyParams.moduseg())}
        rows["retrieval_moduseg"] = score_version(st, moduseg.predictions, va, names)
        rows["retrieval_segmenter"] = score_version(st, by_head.predictions, va, names)
        rows["gt_bank_moduseg"] = retrieval_scores(banks["gt_bank_moduseg"], original.retrieve, va, names, dev)

        pseudo_maps = [st.read_label_map(base.runs["retrieval"].pseudo_labels, im.key) for im in base.train.images]
        pseudo = BankImages(st, features_key(params.embed), base.train.images, pseudo_maps, names)
        ablation_rows = ablations(base.gt, pseudo, va, labelled, params, names, dev)

        flow_bank = banks["retrieval"]
        rebuilt = pseudo.bank(params.bank)
        seed_base = next(a for a in ablation_rows if a["group"] == "seeding" and a["setting"] == "flow defaults")
        checks = {
            "pseudo_labels_by_proposal": _check(
                score_labels(labelled, version_proposal_labels(st, base.runs["pseudo_labels"].seeds,
                                                               labelled), names)["miou"],
                rows["seeds"]["miou"]),
            "pseudo_labels_flow_evaluation": _check(
                rows["pseudo_labels"]["miou"], base.runs["pseudo_labels"].pseudo_label_metrics["classes"]["miou"]),
            "retrieval_flow_evaluation": _check(
                rows["retrieval"]["miou"], base.runs["retrieval"].prediction_metrics["classes"]["miou"]),
            "seed_replicated": _check(seed_base["miou"], rows["seeds"]["miou"]),
            "bank_rebuilt": {"prototypes": len(rebuilt), "reference": len(flow_bank), "ok": bool(
                len(rebuilt) == len(flow_bank) and np.array_equal(rebuilt.labels, flow_bank.labels)
                and np.allclose(rebuilt.vectors, flow_bank.vectors, atol=1e-6))},
            "retrieval_replicated": _check(
                retrieval_scores(flow_bank, params.retrieve, va, names, dev)["miou"], rows["retrieval"]["miou"]),
            "retrieval_moduseg_replicated": _check(
                retrieval_scores(banks["retrieval_moduseg"], original.retrieve, va, names, dev)["miou"],
                rows["retrieval_moduseg"]["miou"]),
        }
        scoring_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ablation_rows += variant_rows(store, train, val, base, variants, device, log)
        variant_seconds = time.perf_counter() - t0

    ratios = {name: {m: _ratio(rows[a][m], rows[b][m]) for m in ("miou", "miou_voc21")}
              for name, (a, b) in RATIOS.items()}
    runs = {**base.runs, "retrieval_segmenter": by_head, "retrieval_moduseg": moduseg}
    return _plain({
        "data": str(data), "store": str(store), "device": str(dev),
        "images": {"train2017": len(base.train.images), "val2017": len(va)},
        "skipped": [list(s) for s in base.train.skipped + base.val.skipped],
        "params": {"flow": params.model_dump(mode="json"), "moduseg": original.model_dump(mode="json"),
                   "gt_bank_moduseg_purify": asdict(PurifyParams.moduseg()), "moduseg_image_area": image_area},
        "versions": {name: {"pseudo_labels": r.pseudo_labels, "bank": r.bank, "predictions": r.predictions}
                     for name, r in runs.items()},
        "rows": {name: {"description": ROWS[name], **rows[name]} for name in ROWS},
        "proposals": base.proposals,
        "prototypes": {name: len(bank) for name, bank in banks.items()},
        "ratios": ratios,
        "ablations": ablation_rows,
        "checks": checks,
        "seconds": {"flows": flow_seconds, "scoring": scoring_seconds, "variants": variant_seconds},
    })


def report(results: dict) -> str:
    """The rows, the ratios we steer by, the ablations and the checks as text tables."""
    metrics = ("miou", "miou_voc21", "pixel_accuracy")
    head = ["row", "images", "mIoU", "mIoU VOC21", "pixel acc", "what"]
    rows = [[name, r["images"], *(r[m] for m in metrics), r["description"]] for name, r in results["rows"].items()]
    ratios = [[name, r["miou"], r["miou_voc21"], "goal >= 0.8"] for name, r in results["ratios"].items()]
    abl = [[a["group"], a["row"], a["setting"], a["prototypes"], *(a[m] for m in metrics)]
           for a in results["ablations"] if "coverage" not in a]
    var = [[a["group"], a["row"], a["setting"], a["prototypes"], *(a[m] for m in metrics), a["proposals_per_image"],
            a["coverage"], a["seconds"]] for a in results["ablations"] if "coverage" in a]
    checks = [[name, "ok" if c["ok"] else "MISMATCH", c.get("value", c.get("prototypes")), c["reference"]]
              for name, c in results["checks"].items()]
    return "\n\n".join([
        format_table(head, rows),
        format_table(["ratio", "mIoU", "mIoU VOC21", ""], ratios),
        format_table(["ablation", "row", "setting", "prototypes", "mIoU", "mIoU VOC21", "pixel acc"], abl),
        format_table(["variant", "row", "setting", "prototypes", "mIoU", "mIoU VOC21", "pixel acc", "proposals/image",
                      "coverage", "flow s"], var),
        format_table(["check", "", "value", "reference"], checks),
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO root with train2017 and val2017")
    parser.add_argument("--store", type=Path, default=Path("runs/quality-store"), help="maskbank store (created)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality.json"), help="results JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--smoke", action="store_true",
                        help=f"first {SMOKE_IMAGES} images per split at light settings (for the test suite)")
    groups = sorted({g for g, _ in VARIANT_GRID})
    parser.add_argument("--variants", nargs="*", choices=groups, default=groups, metavar="GROUP",
                        help=f"variant groups to run ({', '.join(groups)}; all by default, none when given empty); "
                        "each reruns the flows with new proposals or features")
    args = parser.parse_args(argv)
    origin = provenance(__file__, argv)

    params = smoke_params() if args.smoke else RunParams()
    grid = [(g, c) for g, c in (SMOKE_VARIANT_GRID if args.smoke else VARIANT_GRID) if g in args.variants]
    results = run(args.data, args.store, params, args.device, SMOKE_IMAGES if args.smoke else None, grid)
    results["smoke"] = args.smoke
    publish(results, args.out, report(results), origin)
    return results


if __name__ == "__main__":
    main()
