"""Top-k with per-row exclusions: shared by the served pipeline (co-occurrence candidates) and
offline evaluation (full-ranking lists), so both live on this floor."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"{name} must be a positive int, got {k!r}")


def as_csr(m, name: str, shape: tuple[int, int]) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(m).__name__}")
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, expected {shape}")
    m = sp.csr_matrix(m, copy=True)
    m.eliminate_zeros()  # explicit zeros mean "no interaction"
    m.sort_indices()
    return m


def topk_excluding(scores: np.ndarray, exclude: sp.spmatrix | None, k: int) -> np.ndarray:
    """Top-k items per row, best first, with excluded entries ranked last.

    Ties are broken by lower item index, so the result is deterministic. If a row has fewer than
    ``k`` non-excluded items, its tail holds excluded items (score ``-inf``).

    Args:
        scores: (B, N) float scores; NaN is rejected.
        exclude: (B, N) sparse matrix (or ``features.store.SparseRows``) whose stored non-zeros are masked (e.g. the users' history
            rows), or None.
        k: list length, 1 <= k <= N.

    Returns:
        (B, k) int64 item indices.
    """
    check_k(k)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (B, N), got shape {scores.shape}")
    n_rows, n_items = scores.shape
    if k > n_items:
        raise ValueError(f"k={k} exceeds the number of items N={n_items}")
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    s = np.array(scores, dtype=dtype, copy=True)  # (B, N), masked in place below
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; fix the scorer (NaN has no rank)")
    if exclude is not None:
        ex = exclude  # scipy CSR, or features.store.SparseRows (sorted, all ones): used as they are
        if not (hasattr(ex, "indptr") and tuple(ex.shape) == s.shape and getattr(ex, "has_sorted_indices", False)
                and ex.data.all()):
            ex = as_csr(exclude, "exclude", s.shape)  # a copy in canonical form (~0.1 ms): only when needed
        rows = np.repeat(np.arange(n_rows), np.diff(ex.indptr))
        s[rows, ex.indices] = -np.inf
    top = np.argpartition(s, n_items - k, axis=1)[:, n_items - k:]  # (B, k) unordered
    vals = np.take_along_axis(s, top, axis=1)  # (B, k)
    kth = vals.min(axis=1)  # (B,) the k-th best score
    # argpartition picks arbitrarily among items tied with the k-th score; redo those rows exactly.
    n_tied_all = (s == kth[:, None]).sum(axis=1)
    n_tied_in = (vals == kth[:, None]).sum(axis=1)
    for r in np.flatnonzero(n_tied_all > n_tied_in):
        above = np.flatnonzero(s[r] > kth[r])
        tied = np.flatnonzero(s[r] == kth[r])[: k - above.size]
        top[r] = np.concatenate([above, tied])
        vals[r] = s[r, top[r]]
    order = np.lexsort((top, -vals), axis=1)  # primary: score desc; secondary: index asc
    return np.take_along_axis(top, order, axis=1).astype(np.int64)
