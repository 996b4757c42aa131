"""Item-item co-occurrence models (cosine kNN, EASE), shared by the baselines and the ranker."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def item_cosine_similarity(x: sp.csr_matrix, k_neighbors: int, shrink: float, block_size: int) -> sp.csr_matrix:
    """sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink), top ``k_neighbors`` per target item.

    Built ``block_size`` target items at a time with sparse products only (scales to ~1M items;
    peak memory follows one block's co-occurrence nnz).

    Args:
        x: (U, N) binary float32 CSR interactions.

    Returns:
        (N, N) float32 CSR; entry [i, j] is the similarity of neighbour i to target j, so
        ``user_rows @ sim`` sums each target's similarity over the user's items.
    """
    n_items = x.shape[1]
    xc = x.tocsc()
    norms = np.sqrt(np.diff(xc.indptr).astype(np.float64))  # (N,) sqrt(|U_i|)
    rows, cols, vals = [], [], []
    for start in range(0, n_items, block_size):
        stop = min(start + block_size, n_items)
        co = (xc[:, start:stop].T.tocsr() @ x).tocsr()  # (b, N) co-occurrence counts
        co.sort_indices()
        target = np.repeat(np.arange(start, stop), np.diff(co.indptr))  # (nnz,)
        sim = co.data / (norms[target] * norms[co.indices] + shrink)
        keep = (co.indices != target) & (sim > 0)  # no self-similarity
        target, neigh, sim = target[keep], co.indices[keep], sim[keep]
        order = np.lexsort((-sim, target))  # per target, similarity desc (stable: index asc)
        target, neigh, sim = target[order], neigh[order], sim[order]
        first = np.searchsorted(target, target, side="left")
        top = np.arange(target.size) - first < k_neighbors
        rows.append(neigh[top])
        cols.append(target[top])
        vals.append(sim[top].astype(np.float32))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items), dtype=np.float32
    )


def ease_weights(x: sp.csr_matrix, l2: float, side: sp.spmatrix | None = None) -> np.ndarray:
    """EASE (Steck, 2019): B = I - P / diag(P), P = (X^T X + S S^T + l2 I)^-1, diag(B) = 0.

    Dense O(N^2) memory, O(N^3) time: for catalogs up to ~20k items. ``side`` adds item content as
    extra "users" (side-information EASE): items that share attributes then predict each other
    a little even with few co-interactions.

    Args:
        x: (U, N) binary interactions.
        l2: ridge strength (> 0).
        side: (N, F) item attributes, already scaled by their weight, or None.

    Returns:
        (N, N) float32 weights; ``user_rows @ B`` scores every item.
    """
    n_items = x.shape[1]
    gram = (x.T @ x).toarray().astype(np.float64)  # (N, N)
    if side is not None:
        gram += (side @ side.T).toarray() if sp.issparse(side) else side @ side.T
    gram[np.diag_indices(n_items)] += l2
    p = np.linalg.inv(gram)  # (N, N) symmetric positive definite
    del gram
    p /= -np.diag(p).copy()[None, :]  # in place: B_ij = -P_ij / P_jj
    p[np.diag_indices(n_items)] = 0.0
    return p.astype(np.float32)
