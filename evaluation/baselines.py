"""Non-neural baselines: MostPop, ItemKNN (cosine) and EASE.

All models follow the :class:`Recommender` protocol: ``fit`` on a (n_users, n_items) CSR matrix of
implicit feedback (stored non-zeros count as 1), then ``score`` a batch of user indices against the
whole catalog. Scoring does not mask history; evaluation does that (``topk_excluding``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from features.cooccurrence import ease_weights, item_cosine_similarity


@runtime_checkable
class Recommender(Protocol):
    """What evaluation needs from a model."""

    def fit(self, train: sp.csr_matrix) -> "Recommender":
        """Learn from (n_users, n_items) interactions; returns self."""

    def score(self, users: np.ndarray) -> np.ndarray:
        """(B,) int64 user indices -> (B, n_items) float32 scores, higher is better."""


def binarize(train: sp.spmatrix) -> sp.csr_matrix:
    """(U, N) sparse -> (U, N) float32 CSR with 1.0 at every stored non-zero."""
    if not sp.issparse(train) or train.ndim != 2:
        raise TypeError(f"train must be a 2-D scipy.sparse matrix, got {type(train).__name__}")
    x = sp.csr_matrix(train, dtype=np.float32, copy=True)
    x.eliminate_zeros()
    x.sum_duplicates()
    x.data[:] = 1.0
    x.sort_indices()
    return x


class _Fitted:
    """Shared checks: training matrix kept for scoring, user indices validated."""

    train_: sp.csr_matrix | None = None

    def _train(self) -> sp.csr_matrix:
        if self.train_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train) before score()")
        return self.train_

    def _rows(self, users: np.ndarray) -> sp.csr_matrix:
        x = self._train()
        users = np.asarray(users)
        if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
            raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} {users.dtype}")
        if users.size and (users.min() < 0 or users.max() >= x.shape[0]):
            bad = users[(users < 0) | (users >= x.shape[0])][0]
            raise ValueError(f"user index {int(bad)} outside 0..{x.shape[0] - 1} of the fitted matrix")
        return x[users]  # (B, N)


class MostPop(_Fitted):
    """Scores every item by its number of training interactions, the same for every user."""

    def fit(self, train: sp.spmatrix) -> "MostPop":
        self.train_ = binarize(train)
        self.counts_ = np.asarray(self.train_.sum(axis=0), dtype=np.float32).ravel()  # (N,)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        rows = self._rows(users)
        return np.repeat(self.counts_[None, :], rows.shape[0], axis=0)  # (B, N)


class ItemKNN(_Fitted):
    """Item-item cosine kNN: sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink).

    For each target item only the ``k_neighbors`` most similar items are kept, so the similarity
    matrix has at most N * k_neighbors entries. It is built ``block_size`` target items at a time
    with sparse products only, which scales to ~1M items. Time and peak memory follow the
    co-occurrence nnz of one block (at worst block_size * N entries when popular items co-occur
    with everything); lower ``block_size`` for huge catalogs.
    Score of item j for user u = sum over items i in u's history of sim(i, j).

    Args:
        k_neighbors: neighbours kept per item (>= 1).
        shrink: non-negative constant added to the denominator; damps rare-item similarities.
        block_size: target items per sparse product.
    """

    def __init__(self, k_neighbors: int, shrink: float, block_size: int = 2048):
        if isinstance(k_neighbors, bool) or not isinstance(k_neighbors, (int, np.integer)) or k_neighbors < 1:
            raise ValueError(f"k_neighbors must be a positive int, got {k_neighbors!r}")
        if not np.isfinite(shrink) or shrink < 0:
            raise ValueError(f"shrink must be a finite number >= 0, got {shrink!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size!r}")
        self.k_neighbors, self.shrink, self.block_size = int(k_neighbors), float(shrink), int(block_size)

    def fit(self, train: sp.spmatrix) -> "ItemKNN":
        self.train_ = binarize(train)  # (U, N)
        # sim_[i, j] = similarity of neighbour i to target item j; user row @ sim_ sums over history.
        self.sim_ = item_cosine_similarity(self.train_, self.k_neighbors, self.shrink, self.block_size)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        rows = self._rows(users)
        return np.asarray((rows @ self.sim_).toarray(), dtype=np.float32)  # (B, N)


class EASE(_Fitted):
    """EASE (Steck, 2019): B = I - P / diag(P), P = (X^T X + l2 I)^-1, diag(B) = 0.

    Memory and time are O(N^2) and O(N^3): the Gram matrix, its inverse and B are dense N x N
    float64 (~2 * 8 * N^2 bytes at peak; 20k items ~ 6.4 GB). Fitting refuses above ``max_items``.

    Args:
        l2: ridge strength (> 0); typical values 100-1000 on MovieLens-sized data.
        max_items: largest catalog allowed.
        side: (N, F) item attributes, already weighted, added to the Gram matrix
            (side-information EASE, see :func:`features.cooccurrence.ease_weights`), or None.
    """

    def __init__(self, l2: float, max_items: int = 20_000, side: sp.spmatrix | None = None):
        if not np.isfinite(l2) or l2 <= 0:
            raise ValueError(f"l2 must be a finite number > 0, got {l2!r}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items!r}")
        self.l2, self.max_items, self.side = float(l2), int(max_items), side

    def fit(self, train: sp.spmatrix) -> "EASE":
        x = self.train_ = binarize(train)  # (U, N)
        n_items = x.shape[1]
        if n_items > self.max_items:
            gib = 2 * 8 * n_items**2 / 2**30
            raise ValueError(
                f"EASE with n_items={n_items} needs ~{gib:.1f} GiB of dense N x N float64 matrices, "
                f"above max_items={self.max_items}; use ItemKNN, filter rare items, or raise max_items"
            )
        self.weights_ = ease_weights(x, self.l2, self.side)  # (N, N)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        rows = self._rows(users)
        return np.asarray(rows @ self.weights_, dtype=np.float32)  # (B, N)
