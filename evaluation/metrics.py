"""Top-k selection, ranking metrics (RecBole definitions) and beyond-accuracy metrics.

Pure numpy over dense score arrays and scipy CSR interaction matrices. Users and items are dense
indices; ``topk`` arrays hold item indices, best first. Metric keys are ``name@k``; callers add the
stage prefix (``val/ndcg@10``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from inference.topk import as_csr as _as_csr
from inference.topk import check_k as _check_k

RANKING_METRICS = ("recall", "precision", "hr", "mrr", "ndcg", "map")
# what evaluate_scorer reports at each k, the beyond-accuracy ones too: what a selection may maximise
SELECTABLE_METRICS = (*RANKING_METRICS, "coverage", "gini", "novelty")


def _check_topk(topk: np.ndarray, n_items: int) -> np.ndarray:
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.shape[0] == 0 or topk.shape[1] == 0:
        raise ValueError(f"topk must be a non-empty 2-D (users, K) array, got shape {topk.shape}")
    if not np.issubdtype(topk.dtype, np.integer):
        raise TypeError(f"topk must hold integer item indices, got dtype {topk.dtype}")
    _check_k(n_items, "n_items")
    if topk.min() < 0:
        raise ValueError(f"topk holds negative item index {int(topk.min())}; indices are 0..n_items-1")
    if topk.max() >= n_items:
        raise ValueError(f"topk holds item index {int(topk.max())} >= n_items={n_items}")
    return topk.astype(np.int64, copy=False)


def ranking_metrics(
    topk: np.ndarray, truth: sp.spmatrix, ks: list[int], per_user: bool = False
) -> dict[str, float] | dict[str, np.ndarray]:
    """Recall, precision, HR, MRR, NDCG and MAP at each k (RecBole's definitions).

    Args:
        topk: (U, K) int item indices, best first, no duplicates within a row.
        truth: (U, N) sparse relevant items per user (stored non-zeros are relevant).
        ks: cut-offs, each 1 <= k <= K.
        per_user: if True return (U,) arrays instead of means; users without truth hold NaN.

    Returns:
        ``{"recall@10": mean, ...}`` averaged over users with >= 1 truth item.

    Raises:
        ValueError: on bad shapes/indices/ks, or when no user has a truth item.
    """
    if not sp.issparse(truth) or truth.ndim != 2:
        raise TypeError(f"truth must be a 2-D scipy.sparse matrix, got {type(truth).__name__}")
    n_users, n_items = truth.shape
    topk = _check_topk(topk, n_items)
    if topk.shape[0] != n_users:
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {n_users}; rows must align")
    if len(ks) == 0:
        raise ValueError("ks is empty; pass at least one cut-off, e.g. [10]")
    big_k = topk.shape[1]
    for k in ks:
        _check_k(k, "each of ks")
        if k > big_k:
            raise ValueError(f"cut-off {k} in ks exceeds the list length K={big_k}")
    srt = np.sort(topk, axis=1)
    if (np.diff(srt, axis=1) == 0).any():
        raise ValueError("topk has a duplicate item within a row; each list must be unique")
    truth = _as_csr(truth, "truth", (n_users, n_items))
    n_truth = np.diff(truth.indptr)  # (U,)
    has_truth = n_truth > 0
    if not has_truth.any():
        raise ValueError("truth has no relevant item for any user; nothing to evaluate")

    # Row-major CSR with sorted indices gives globally sorted keys user*N + item.
    keys = np.repeat(np.arange(n_users, dtype=np.int64), n_truth) * n_items + truth.indices
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + topk  # (U, K)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    hits = keys[pos] == query  # (U, K) bool
    n_true = np.where(has_truth, n_truth, 1).astype(np.float64)  # avoid 0-division; masked later

    out: dict[str, np.ndarray] = {}
    ranks = np.arange(1, big_k + 1, dtype=np.float64)  # (K,)
    disc = 1.0 / np.log2(ranks + 1.0)  # (K,)
    for k in ks:
        h = hits[:, :k].astype(np.float64)  # (U, k)
        n_hit = h.sum(axis=1)
        any_hit = n_hit > 0
        first = np.argmax(hits[:, :k], axis=1)  # 0-based rank of the first hit
        ideal_len = np.minimum(n_true, k).astype(np.int64)  # (U,)
        idcg = np.cumsum(disc[:k])[ideal_len - 1]
        prec_at = np.cumsum(h, axis=1) / ranks[:k]  # (U, k)
        per = {
            "recall": n_hit / n_true,
            "precision": n_hit / k,
            "hr": any_hit.astype(np.float64),
            "mrr": np.where(any_hit, 1.0 / (first + 1.0), 0.0),
            "ndcg": (h @ disc[:k]) / idcg,
            "map": (prec_at * h).sum(axis=1) / ideal_len,
        }
        for name in RANKING_METRICS:
            out[f"{name}@{k}"] = np.where(has_truth, per[name], np.nan)
    if per_user:
        return out
    return {key: float(v[has_truth].mean()) for key, v in out.items()}


def item_popularity(interactions: sp.spmatrix) -> np.ndarray:
    """Share of users who interacted with each item, for :func:`novelty`.

    Items never seen count as seen once (p = 1 / n_users), which bounds novelty by log2(n_users).

    Args:
        interactions: (U, N) sparse matrix, usually the training split.

    Returns:
        (N,) float64 probabilities in (0, 1].
    """
    if not sp.issparse(interactions) or interactions.shape[0] == 0:
        raise ValueError("interactions must be a scipy.sparse matrix with at least one user")
    m = _as_csr(interactions, "interactions", interactions.shape)
    counts = np.bincount(m.indices, minlength=m.shape[1])
    return np.maximum(counts, 1) / m.shape[0]


def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one list. (U, K) -> scalar in (0, 1]."""
    topk = _check_topk(topk, n_items)
    return float(np.unique(topk).size / n_items)


def _exposure(topk: np.ndarray, n_items: int) -> np.ndarray:
    topk = _check_topk(topk, n_items)
    return np.sort(np.bincount(topk.ravel(), minlength=n_items)).astype(np.float64)  # (N,) asc


def exposure_gini(topk: np.ndarray, n_items: int) -> float:
    """Gini coefficient of per-item exposure counts over the whole catalog.

    0 means every item is recommended equally often; (N-1)/N (-> 1) means one item takes all.
    """
    x = _exposure(topk, n_items)  # (N,) ascending
    i = np.arange(1, n_items + 1, dtype=np.float64)
    return float(((2.0 * i - n_items - 1.0) * x).sum() / (n_items * x.sum()))


def lorenz_curve(topk: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of exposure: x = share of items (least exposed first), y = share of exposure.

    Returns:
        (x, y), each (N + 1,) float64 from 0 to 1.
    """
    x = _exposure(topk, n_items)
    share_items = np.arange(n_items + 1, dtype=np.float64) / n_items
    share_exposure = np.concatenate([[0.0], np.cumsum(x)]) / x.sum()
    return share_items, share_exposure


def novelty(topk: np.ndarray, item_popularity: np.ndarray) -> float:
    """Mean self-information -log2(p_i) of recommended items.

    Args:
        topk: (U, K) item indices.
        item_popularity: (N,) share of users who interacted with each item, in [0, 1]; see
            :func:`item_popularity`. Zeros are clipped to 1e-12 to avoid log(0).
    """
    p = np.asarray(item_popularity, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"item_popularity must be 1-D (N,), got shape {p.shape}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"item_popularity must be probabilities in [0, 1], got range [{p.min()}, {p.max()}]; "
            "pass item_popularity(train) rather than raw counts"
        )
    topk = _check_topk(topk, p.size)
    return float(-np.log2(np.clip(p[topk], 1e-12, 1.0)).mean())


def intra_list_diversity(topk: np.ndarray, item_vectors: np.ndarray, chunk: int = 4096) -> float:
    """Mean over lists of 1 - mean pairwise cosine similarity of the listed items' vectors.

    Pairs involving a zero vector count as similarity 0.

    Args:
        topk: (U, K) item indices, K >= 2.
        item_vectors: (N, F) dense features (e.g. genre one-hots).
        chunk: users per block, bounds memory at chunk * K * F floats.
    """
    v = np.asarray(item_vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"item_vectors must be 2-D (N, F), got shape {v.shape}")
    topk = _check_topk(topk, v.shape[0])
    big_k = topk.shape[1]
    if big_k < 2:
        raise ValueError(f"intra_list_diversity needs lists of length >= 2, got K={big_k}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)  # (N, F)
    total = 0.0
    for start in range(0, topk.shape[0], chunk):
        u = unit[topk[start : start + chunk]]  # (C, K, F)
        s = u.sum(axis=1)  # (C, F)
        # sum_{i != j} <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2, without a K x K matrix
        pair_sum = (s * s).sum(axis=1) - (u * u).sum(axis=(1, 2))  # (C,)
        total += (1.0 - pair_sum / (big_k * (big_k - 1))).sum()
    return float(total / topk.shape[0])
