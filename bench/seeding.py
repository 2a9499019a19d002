"""Ablations of seeding: the seed stage's parameters one at a time, and prototypes of other ways to use the
evidence (label propagation, a linear probe, both together as TUSS's GLCC, a multiple-instance classifier),
all in-process on the proposals and features a store holds.

    python bench/seeding.py --data ../shared/data/msrc21-dev --store runs/scene-store --out bench/results/seeding-msrc21.json

``--proposals KEY --pooled KEY`` name stored keys; without them the flow runs first. Every row is scored
against the oracle restricted to the image labels (and background where the classes have one), as in
``bench/scenes.py``. The prototypes hold a dense ``[P, P]`` similarity of all proposals: they are for
collections of a few thousand proposals, to decide what is worth building within the scale rule, not for
use.

Rows:
  seed stage (default)       the flow's seeding
  rounds=0, 4, 6, 8          refinement rounds
  quantile=0.9               the quantile of the matches in images without a class
  claim_labels=false         no label claims its best proposal
  label propagation          the default seeds spread over a 10-NN graph of all proposals (alpha 0.9, 20 steps),
                             each proposal then takes its best allowed class
  linear probe               a cosine classifier trained on the default seeds (allowed classes only), applied back
  GLCC                       propagation, then a probe trained on the propagated soft labels, averaged with them
  MIL classifier             a cosine classifier trained from the image labels alone: an image's score for a class
                             is its best proposal's, against the image's labels (binary cross-entropy)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import format_table, provenance, publish  # noqa: E402
from bench.evidence import stored_keys  # noqa: E402
from bench.quality import load_split, seed_labels  # noqa: E402
from bench.scenes import scores  # noqa: E402
from maskbank.flows.params import RunParams  # noqa: E402
from maskbank.flows.stages.ingest import DatasetInput  # noqa: E402
from maskbank.storage.store import Store  # noqa: E402

NEG = -1e9


class Collection:
    """The proposals of a labelled collection as tensors: features, owning image, allowed classes."""

    def __init__(self, images: list, num_classes: int, background: bool) -> None:
        self.images = images
        self.x = F.normalize(torch.tensor(np.concatenate([im.features for im in images]), dtype=torch.float32), dim=1)
        self.owner = np.concatenate([np.full(len(im.features), j) for j, im in enumerate(images)])
        labels = np.zeros((len(images), num_classes), bool)
        for j, im in enumerate(images):
            labels[j, im.labels] = True
        labels[:, 0] = background
        self.image_labels = labels
        self.allowed = torch.tensor(labels[self.owner])
        self.k = num_classes

    def per_image(self, labels: np.ndarray) -> list[np.ndarray]:
        return [labels[self.owner == j] for j in range(len(self.images))]

    def best_allowed(self, scores: torch.Tensor) -> np.ndarray:
        return torch.where(self.allowed, scores, torch.tensor(NEG)).argmax(1).numpy()


def propagate(c: Collection, seeds: torch.Tensor, k: int = 10, alpha: float = 0.9, steps: int = 20) -> torch.Tensor:
    """Soft labels: ``seeds`` ``[P, K]`` spread over the symmetric ``k``-NN graph of the proposals."""
    sim = c.x @ c.x.T
    sim.fill_diagonal_(-1)
    v, i = sim.topk(min(k, len(sim) - 1), dim=1)
    w = torch.zeros_like(sim).scatter_(1, i, v.clamp(min=0) ** 3)
    w = w + w.T
    d = 1 / torch.sqrt(w.sum(1).clamp(min=1e-8))
    w = d[:, None] * w * d[None]
    out = seeds.clone()
    for _ in range(steps):
        out = alpha * w @ out + (1 - alpha) * seeds
    out = torch.where(c.allowed, out, torch.zeros(()))
    return out / out.sum(1, keepdim=True).clamp(min=1e-8)


def probe(c: Collection, targets: torch.Tensor, epochs: int = 100, lr: float = 0.01, tau: float = 0.05) -> torch.Tensor:
    """A cosine linear classifier trained on soft ``targets`` over each proposal's allowed classes; its
    probabilities over them."""
    w = (targets.T @ c.x).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(epochs):
        logits = torch.where(c.allowed, c.x @ F.normalize(w, dim=1).T / tau, torch.tensor(NEG))
        loss = -(targets * torch.log_softmax(logits, 1).clamp(min=NEG)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.softmax(torch.where(c.allowed, c.x @ F.normalize(w, dim=1).T / tau, torch.tensor(NEG)), 1)


def mil(c: Collection, epochs: int = 200, lr: float = 0.05, tau: float = 0.05) -> torch.Tensor:
    """Class scores of a cosine classifier trained from the image labels alone (max over each image's
    proposals, binary cross-entropy with the image labels; background left out)."""
    torch.manual_seed(0)
    w = torch.zeros(c.k, c.x.shape[1], requires_grad=True)
    b = torch.zeros(c.k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    own = torch.tensor(c.owner)
    target = torch.tensor(c.image_labels[:, 1:], dtype=torch.float32)
    for _ in range(epochs):
        logits = c.x @ F.normalize(w, dim=1).T / tau + b
        image = torch.full((len(c.images), c.k), NEG).scatter_reduce(0, own[:, None].expand(-1, c.k), logits, "amax")
        loss = F.binary_cross_entropy_with_logits(image[:, 1:], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return c.x @ F.normalize(w, dim=1).T / tau + b


def rows_for(images: list, names: list[str], params: RunParams, background: bool) -> dict[str, dict]:
    dev = torch.device("cpu")
    score = lambda labels: scores(images, labels, names, background)
    seed = params.seed
    default = seed_labels(images, len(names), seed, dev, background=background)
    rows = {"seed stage (default)": score(default)}
    for change in ({"rounds": 0}, {"rounds": 4}, {"rounds": 6}, {"rounds": 8}, {"quantile": 0.9}, {"claim_labels": False}):
        name = ", ".join(f"{k}={str(v).lower()}" for k, v in change.items())
        rows[name] = score(seed_labels(images, len(names), dataclasses.replace(seed, **change) if dataclasses.is_dataclass(seed)
                                       else seed.model_copy(update=change), dev, background=background))
    c = Collection(images, len(names), background)
    one_hot = F.one_hot(torch.tensor(np.concatenate(default)).long(), len(names)).float()
    spread = propagate(c, one_hot)
    rows["label propagation"] = score(c.per_image(c.best_allowed(spread)))
    rows["linear probe"] = score(c.per_image(c.best_allowed(probe(c, one_hot))))
    rows["GLCC (propagation + probe)"] = score(c.per_image(c.best_allowed((spread + probe(c, spread)) / 2)))
    rows["MIL classifier"] = score(c.per_image(c.best_allowed(mil(c))))
    allowed = lambda im: sorted({0, *im.labels}) if background else (im.labels or None)
    rows["oracle (restricted)"] = score([im.proposals.majority(allowed(im)) for im in images])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--store", type=Path, default=Path("runs/scene-store"))
    parser.add_argument("--proposals", help="proposals key the store holds (with --pooled: the flow is not run)")
    parser.add_argument("--pooled", help="pooled key the store holds")
    parser.add_argument("--out", type=Path, default=Path("runs/seeding.json"))
    parser.add_argument("--device", default="auto", help="for the flow, when it runs")
    args = parser.parse_args(argv)
    origin = provenance("bench/seeding.py", argv)
    params = RunParams()
    results, lines = {"datasets": []}, []
    for data in args.data:
        pk, plk, skipped = stored_keys(args.store, data, args.proposals, args.pooled, params, args.device)
        split = load_split(Store.open(str(args.store), create=False), DatasetInput(path=str(data)), pk, plk, skipped)
        rows = rows_for(split.images, split.ref.class_names, params, split.ref.has_background)
        oracle = rows["oracle (restricted)"]["miou"]
        results["datasets"].append({"dataset": str(data), "images": len(split.images), "rows": rows})
        lines += [f"{split.ref.name}: {len(split.images)} images",
                  format_table(["seeding", "mIoU", "/ oracle", "pixel acc", "mean class acc"],
                               [[k, v["miou"], v["miou"] / oracle, v["pixel_accuracy"], v["mean_class_accuracy"]]
                                for k, v in rows.items()]), ""]
    publish(results, args.out, "\n".join(lines), origin)
    return results


if __name__ == "__main__":
    main()
