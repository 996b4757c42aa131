"""Full-ranking evaluation of any scorer, and hyper-parameter selection on the validation split.

Every user is ranked against the whole catalog with their history masked (no negative sampling),
as RecBole's ``full`` mode does. Only users with at least one held-out item count.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from evaluation.baselines import Recommender
from evaluation.metrics import (
    RANKING_METRICS,
    SELECTABLE_METRICS,
    exposure_gini,
    intra_list_diversity,
    item_coverage,
    item_popularity as popularity_of,
    novelty,
    ranking_metrics,
)
from inference.topk import topk_excluding


def _check_inputs(users: np.ndarray, history: sp.spmatrix, truth: sp.spmatrix, ks, batch_size) -> np.ndarray:
    for name, m in (("history", history), ("truth", truth)):
        if not sp.issparse(m) or m.ndim != 2:
            raise TypeError(f"{name} must be a 2-D scipy.sparse matrix, got {type(m).__name__}")
    if history.shape != truth.shape:
        raise ValueError(f"history {history.shape} and truth {truth.shape} must have the same shape")
    users = np.asarray(users)
    if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
        raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} {users.dtype}")
    if users.size and (users.min() < 0 or users.max() >= truth.shape[0]):
        bad = users[(users < 0) | (users >= truth.shape[0])][0]
        raise ValueError(f"user index {int(bad)} outside 0..{truth.shape[0] - 1}")
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return users.astype(np.int64)


def evaluate_scorer(
    score_fn: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    history: sp.spmatrix,
    truth: sp.spmatrix,
    ks: Sequence[int],
    batch_size: int = 1024,
    item_vectors: np.ndarray | None = None,
    item_popularity: np.ndarray | None = None,
    progress: bool = True,
    return_topk: bool = False,
):
    """Rank the whole catalog for each user (history masked) and compute all metrics.

    Args:
        score_fn: (B,) int64 user indices -> (B, N) scores, e.g. ``model.score``.
        users: (U,) candidate user indices; those with no item in ``truth`` are skipped.
        history: (n_users, N) sparse interactions to mask (train; train + valid for test).
        truth: (n_users, N) sparse held-out interactions.
        ks: cut-offs; lists are computed once at max(ks).
        batch_size: users scored per call of ``score_fn``.
        item_vectors: (N, F) item features for ``diversity@k``; omitted when None and for k = 1.
        item_popularity: (N,) share of users per item for ``novelty@k``; derived from ``history``
            when None.
        progress: show a tqdm bar over batches.
        return_topk: also return the lists and the users they belong to.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "coverage@10": ..., "gini@10": ...,
        "novelty@10": ..., ["diversity@10": ...]}``; with ``return_topk``, the tuple
        ``(metrics, topk (U', max(ks)) int64, evaluated_users (U',) int64)``.

    Raises:
        ValueError: bad inputs, a score_fn returning the wrong shape, or no user with truth.
    """
    users = _check_inputs(users, history, truth, ks, batch_size)
    history, truth = sp.csr_matrix(history), sp.csr_matrix(truth)
    n_items = truth.shape[1]
    truth_rows = truth[users]
    users = users[truth_rows.getnnz(axis=1) > 0]
    if users.size == 0:
        raise ValueError("none of the given users has a truth item; nothing to evaluate")
    big_k = max(ks)
    if big_k > n_items:
        raise ValueError(f"max(ks)={big_k} exceeds the number of items N={n_items}")

    batches = [users[i : i + batch_size] for i in range(0, users.size, batch_size)]
    lists = []
    for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
        scores = np.asarray(score_fn(batch))  # (B, N)
        if scores.shape != (batch.size, n_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected {(batch.size, n_items)}")
        lists.append(topk_excluding(scores, history[batch], big_k))
    topk = np.concatenate(lists)  # (U', K)

    pop = popularity_of(history) if item_popularity is None else item_popularity
    metrics = metrics_from_topk(topk, truth[users], ks, pop, item_vectors)
    if return_topk:
        return metrics, topk, users
    return metrics


def metrics_from_topk(
    topk: np.ndarray,
    truth: sp.spmatrix,
    ks: Sequence[int],
    item_popularity: np.ndarray,
    item_vectors: np.ndarray | None = None,
) -> dict[str, float]:
    """All accuracy and beyond-accuracy metrics of ready-made lists.

    Args:
        topk: (U, K) item indices, best first (K >= max(ks)).
        truth: (U, N) held-out interactions of the same users, row for row.
        ks: cut-offs.
        item_popularity: (N,) share of users per item, for ``novelty@k``.
        item_vectors: (N, F) item features for ``diversity@k`` (k >= 2); omitted when None.
    """
    n_items = truth.shape[1]
    metrics = ranking_metrics(topk, truth, list(ks))
    for k in ks:
        head = topk[:, :k]
        metrics[f"coverage@{k}"] = item_coverage(head, n_items)
        metrics[f"gini@{k}"] = exposure_gini(head, n_items)
        metrics[f"novelty@{k}"] = novelty(head, item_popularity)
        if item_vectors is not None and k >= 2:
            metrics[f"diversity@{k}"] = intra_list_diversity(head, item_vectors)
    return metrics


def select_by_validation(
    factory: Callable[[Hashable], Recommender],
    grid: list,
    train: sp.spmatrix,
    valid: sp.spmatrix,
    metric: str = "ndcg@10",
    ks: Sequence[int] = (10,),
) -> tuple[Hashable, dict]:
    """Fit ``factory(param)`` on train for every param, keep the best on the validation split.

    Example: ``select_by_validation(lambda l2: EASE(l2), [100, 500], train, valid)``.

    Args:
        factory: hashable param -> unfitted :class:`Recommender`.
        grid: candidate params, tried in order; the first wins a tie.
        train: (n_users, N) interactions to fit on and to mask.
        valid: (n_users, N) held-out validation interactions.
        metric: key of :func:`evaluate_scorer`'s result to maximise.
        ks: cut-offs to compute; ``metric``'s must be among them.

    Returns:
        (best_param, {param: metric value}).
    """
    if len(grid) == 0:
        raise ValueError("grid is empty; pass at least one parameter value")
    known = {f"{name}@{k}" for k in ks for name in SELECTABLE_METRICS}
    if metric not in known:
        raise ValueError(f"unknown metric {metric!r}; available with ks={list(ks)}: {sorted(known)}")
    users = np.arange(train.shape[0], dtype=np.int64)
    table: dict = {}
    for param in grid:
        model = factory(param).fit(train)
        result = evaluate_scorer(model.score, users, train, valid, ks, progress=False)
        table[param] = result[metric]
    best = max(table, key=table.get)  # max keeps the first of equal values
    return best, table


def fill_short_lists(items: np.ndarray, exclude: sp.csr_matrix) -> np.ndarray:
    """Replace -1 (fewer candidates than k) with excluded items, which can never be hits."""
    if (items >= 0).all():
        return items
    out = items.copy()
    for r in np.flatnonzero((items < 0).any(axis=1)):
        need = np.flatnonzero(out[r] < 0)
        pad = exclude.indices[exclude.indptr[r] : exclude.indptr[r + 1]]
        if len(pad) < len(need):  # not enough excluded items: any item not already listed
            pad = np.setdiff1d(np.arange(exclude.shape[1]), out[r])
        out[r, need] = pad[: len(need)]
    return out
