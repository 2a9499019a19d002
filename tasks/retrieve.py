"""Exact cosine retrieval over a ``PrototypeBank`` and the rules that turn neighbours into a label.

Rules (``classify``):

* ``"majority"`` (ModuSeg): the ``k`` (25) nearest prototypes over the whole bank vote; most votes
  wins, ties go to the larger summed similarity. Score: mean similarity of the winner's neighbours.
  ``class_scores``: each class's share of the votes.
* ``"class_balanced"`` (default): each class scores the mean of its ``k`` (5, capped at the class's
  bank size) highest similarities; the best class wins and its value is the score (or, with
  ``margin=True``, its lead over the runner-up). A class with many prototypes, such as background,
  cannot win by count. ``class_scores``: those per-class values.
* ``"knn_weighted"``: like ``"majority"`` (k = 25) but each vote is divided by the class's share of
  the bank. ``class_scores``: each class's share of the weighted votes.

``allowed`` restricts the candidate classes per query: disallowed classes score ``-inf`` and their
prototypes are never neighbours. A query with no candidate (or a zero query vector) gets label ``-1``
and score ``-inf``. Similarities are computed in float32 with torch, on CUDA when asked, in query
chunks that keep the ``[chunk, M]`` similarity block within ``memory_budget`` bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from maskbank.tasks.bank import PrototypeBank
from maskbank.tasks.models.device import resolve_device

RULES = ("majority", "class_balanced", "knn_weighted")
DEFAULT_NEIGHBOURS = 25  # k of both neighbour rules, "majority" and "knn_weighted" (ModuSeg: 25)
DEFAULT_K = {"majority": DEFAULT_NEIGHBOURS, "class_balanced": 5, "knn_weighted": DEFAULT_NEIGHBOURS}
MIN_QUERY_NORM = 1e-6
UNASSIGNED = -1

Allowed = np.ndarray | Sequence[Iterable[int]]


def allowed_matrix(allowed: Allowed, num_queries: int, num_classes: int) -> np.ndarray:
    """``bool[Q, K]`` from either that matrix or one iterable of allowed class ids per query."""
    if isinstance(allowed, np.ndarray) and allowed.dtype == bool:
        if allowed.shape != (num_queries, num_classes):
            raise ValueError(f"allowed must be ({num_queries}, {num_classes}), got {allowed.shape}")
        return allowed
    if len(allowed) != num_queries:
        raise ValueError(f"allowed has {len(allowed)} entries for {num_queries} queries")
    matrix = np.zeros((num_queries, num_classes), dtype=bool)
    for row, classes in enumerate(allowed):
        ids = np.asarray(list(classes), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"allowed classes of query {row} must lie in [0, {num_classes}), got {ids.tolist()}")
        matrix[row, ids] = True
    return matrix


class BankIndex:
    """A ``PrototypeBank`` resident on ``device``, sorted by class, ready for repeated queries."""

    def __init__(
        self, bank: PrototypeBank, device: str | torch.device = "auto", memory_budget: int = 256 * 2**20
    ) -> None:
        if memory_budget < 1:
            raise ValueError(f"memory_budget must be positive, got {memory_budget}")
        self.device = resolve_device(device)
        self.num_classes = bank.num_classes
        self.memory_budget = int(memory_budget)
        self.order = np.argsort(bank.labels, kind="stable")
        self.counts = bank.class_counts()
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.vectors = torch.from_numpy(bank.vectors[self.order]).to(self.device)
        self.labels = torch.from_numpy(bank.labels[self.order].astype(np.int64)).to(self.device)
        counts = torch.from_numpy(self.counts).to(self.device, torch.float32)
        self.frequency_weight = torch.where(counts > 0, len(bank) / counts.clamp(min=1), 0.0)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def _chunks(self, num_queries: int) -> Iterable[slice]:
        step = max(1, self.memory_budget // (8 * max(len(self), 1)))
        for start in range(0, num_queries, step):
            yield slice(start, min(start + step, num_queries))

    def _queries(self, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"queries must be [Q, {self.vectors.shape[1]}], got {queries.shape}")
        q = torch.from_numpy(queries).to(self.device)
        norms = q.norm(dim=1, keepdim=True)
        valid = norms[:, 0] >= MIN_QUERY_NORM
        return q / norms.clamp(min=MIN_QUERY_NORM), valid

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top-``k`` (capped at the bank size): ``(float32[Q, k] similarities, int64[Q, k] bank rows)``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q, _ = self._queries(queries)
        k = min(k, len(self))
        sims, rows = [], []
        for chunk in self._chunks(q.shape[0]):
            values, idx = (q[chunk] @ self.vectors.T).topk(k, dim=1)
            sims.append(values.cpu())
            rows.append(idx.cpu())
        if not sims:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(sims).numpy(), self.order[torch.cat(rows).numpy()]

    def classify(
        self,
        queries: np.ndarray,
        *,
        rule: str = "class_balanced",
        k: int | None = None,
        allowed: Allowed | None = None,
        margin: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label ``[Q, C]`` queries: ``(int32[Q] labels, float32[Q] scores, float32[Q, K] class_scores)``."""
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if margin and rule != "class_balanced":
            raise ValueError("margin applies only to rule='class_balanced'")
        k = DEFAULT_K[rule] if k is None else int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q, valid = self._queries(queries)
        num_queries, num_classes = q.shape[0], self.num_classes
        permitted = torch.ones((num_queries, num_classes), dtype=torch.bool, device=self.device)
        if allowed is not None:
            permitted = torch.from_numpy(allowed_matrix(allowed, num_queries, num_classes)).to(self.device)
        permitted = permitted & valid[:, None]
        labels, scores, class_scores = [], [], []
        for chunk in self._chunks(num_queries):
            sims = q[chunk] @ self.vectors.T
            if rule == "class_balanced":
                out = self._class_balanced(sims, permitted[chunk], k, margin)
            else:
                out = self._vote(sims, permitted[chunk], k, weighted=rule == "knn_weighted")
            for acc, value in zip((labels, scores, class_scores), out, strict=True):
                acc.append(value.cpu())
        if not labels:
            return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, num_classes), np.float32)
        return (
            torch.cat(labels).numpy().astype(np.int32),
            torch.cat(scores).numpy().astype(np.float32),
            torch.cat(class_scores).numpy().astype(np.float32),
        )

    def _class_balanced(
        self, sims: torch.Tensor, permitted: torch.Tensor, k: int, margin: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        per_class = torch.full((sims.shape[0], self.num_classes), -torch.inf, device=self.device)
        for cls in np.flatnonzero(self.counts):
            block = sims[:, int(self.offsets[cls]) : int(self.offsets[cls + 1])]
            per_class[:, cls] = block.topk(min(k, block.shape[1]), dim=1).values.mean(dim=1)
        per_class = per_class.masked_fill(~permitted, -torch.inf)
        best, label = per_class.max(dim=1)
        score = best
        if margin:
            runner_up = per_class.topk(2, dim=1).values[:, 1] if self.num_classes > 1 else torch.full_like(best, -1.0)
            score = best - torch.where(torch.isfinite(runner_up), runner_up, -1.0)
        return self._unassign(label, score, torch.isfinite(best)) + (per_class,)

    def _vote(
        self, sims: torch.Tensor, permitted: torch.Tensor, k: int, weighted: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sims = sims.masked_fill(~permitted[:, self.labels], -torch.inf)
        shape = (sims.shape[0], self.num_classes)
        hits = torch.zeros(shape, device=self.device)
        summed = torch.zeros(shape, device=self.device)
        if len(self):
            values, idx = sims.topk(min(k, len(self)), dim=1)
            found = torch.isfinite(values)
            neighbour_labels = self.labels[idx]
            hits.scatter_add_(1, neighbour_labels, found.float())
            summed.scatter_add_(1, neighbour_labels, torch.where(found, values, 0.0))
        votes = hits * self.frequency_weight if weighted else hits
        most = votes.max(dim=1, keepdim=True).values
        candidates = (votes == most) & (hits > 0)
        label = summed.masked_fill(~candidates, -torch.inf).argmax(dim=1)
        winner_hits = hits.gather(1, label[:, None])[:, 0]
        score = summed.gather(1, label[:, None])[:, 0] / winner_hits.clamp(min=1)
        share = votes / votes.sum(dim=1, keepdim=True).clamp(min=1e-12)
        share = share.masked_fill(~permitted, -torch.inf)
        return self._unassign(label, score, winner_hits > 0) + (share,)

    @staticmethod
    def _unassign(
        label: torch.Tensor, score: torch.Tensor, assigned: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.where(assigned, label, UNASSIGNED)
        score = torch.where(assigned, score, -torch.inf)
        return label, score


def classify(
    queries: np.ndarray,
    bank: PrototypeBank | BankIndex,
    *,
    rule: str = "class_balanced",
    k: int | None = None,
    allowed: Allowed | None = None,
    margin: bool = False,
    device: str | torch.device = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label each ``[Q, C]`` query by retrieval over ``bank``: ``(int32[Q], float32[Q], float32[Q, K])``.

    ``k`` defaults to 25 for ``"majority"`` / ``"knn_weighted"`` and 5 (per class) for
    ``"class_balanced"``. Pass a ``BankIndex`` to keep the bank on the device across calls; ``device``
    only applies when ``bank`` is a ``PrototypeBank``.
    """
    index = bank if isinstance(bank, BankIndex) else BankIndex(bank, device)
    return index.classify(queries, rule=rule, k=k, allowed=allowed, margin=margin)


def rule_k(rule: str, k: int, k_per_class: int) -> int:
    """The k a rule uses: ``k_per_class`` prototypes averaged per class by ``"class_balanced"``, ``k``
    neighbours for the voting rules."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return k_per_class if rule == "class_balanced" else k
