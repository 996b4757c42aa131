"""Candidate retrieval: request -> user tower -> FAISS -> top-k unseen items.

Used the same way by offline evaluation, the batch command and the serving models.
"""

from __future__ import annotations

import sys

import numpy as np

from features.store import FeatureStore, SparseRows
from inference.models import TorchModel
from retrieval.index import search


def is_torch_module(model) -> bool:
    """Whether ``model`` is a ``torch.nn.Module``, without importing torch on the served path (a
    module can exist only once torch was imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def excluded_entries(exclude, items: np.ndarray) -> np.ndarray:
    """(B, K) bool: whether each ``items[b, j]`` is stored in row b of ``exclude`` (B, N: scipy CSR or
    :class:`features.store.SparseRows`). A binary search per row, no scipy element indexing
    (~0.2 ms a call)."""
    ex = exclude if getattr(exclude, "has_sorted_indices", False) else exclude.tocsr()  # SparseRows: as it is
    if not ex.has_sorted_indices:
        ex = ex.copy()
        ex.sort_indices()
    data = None if isinstance(ex, SparseRows) else ex.data  # SparseRows store ones only
    out = np.zeros(items.shape, dtype=bool)
    for b in range(len(items)):
        lo, hi = ex.indptr[b], ex.indptr[b + 1]
        row = ex.indices[lo:hi] if data is None else ex.indices[lo:hi][data[lo:hi] != 0]  # explicit 0: not excluded
        if len(row):
            out[b] = row[np.minimum(np.searchsorted(row, items[b]), len(row) - 1)] == items[b]
    return out


class Retriever:
    """A user encoder, an item index and the feature store that feeds them.

    ``user_encoder`` maps user-tower inputs (dict of numpy arrays) to (B, D) query embeddings: the
    PyTorch tower offline (:class:`TorchModel`), an onnxruntime session or a Triton call online.
    """

    def __init__(self, user_encoder, index, store: FeatureStore, item_embeddings: np.ndarray):
        self.user_encoder = TorchModel(user_encoder) if is_torch_module(user_encoder) else user_encoder
        self.index = index
        self.store = store
        self.item_embeddings = item_embeddings  # (N, D), for exact re-scoring and the ranker

    def embed_users(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """User-tower inputs -> (B, D) float32 query embeddings."""
        return np.asarray(self.user_encoder(inputs), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query, skipping each row's excluded items.

        Over-fetches by the largest number of excluded items in the batch so that k survive.
        Returns scores (B, k) float32 and item indices (B, k) int64, -1 / -inf where fewer exist.
        """
        extra = int(np.diff(exclude.indptr).max()) if exclude is not None and exclude.nnz else 0
        scores, items = search(self.index, queries, k + extra)
        out_s = np.full((len(items), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(items), k), -1, dtype=np.int64)
        if exclude is not None and extra:  # the kept items in score order, then -1 / -inf
            keep = ~excluded_entries(exclude, items) & (items >= 0)
            for b in range(len(items)):
                kept_i, kept_s = items[b][keep[b]][:k], scores[b][keep[b]][:k]
                out_i[b, : len(kept_i)], out_s[b, : len(kept_s)] = kept_i, kept_s
            return out_s, out_i
        n = min(k, items.shape[1])
        out_s[:, :n], out_i[:, :n] = scores[:, :n], items[:, :n]
        return out_s, out_i

    def embed_requests(self, users: np.ndarray, timestamps: np.ndarray, recent: np.ndarray | None = None,
                       attributes=None) -> np.ndarray:
        """The user tower on a batch of requests. -> (B, D) query embeddings."""
        return self.embed_users(self.store.user_inputs(users, timestamps, recent, attributes))

    def candidates(self, queries: np.ndarray, users: np.ndarray, k: int, exclude_seen: bool = True,
                   seen=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k index items for the queries, each known user's seen items skipped (``seen``: the
        users' ``store.seen_rows`` when the caller already has them). -> scores, items (B, k)."""
        exclude = (self.store.seen_rows(users) if seen is None else seen) if exclude_seen else None
        return self.search(queries, k, exclude)

    def retrieve(self, users: np.ndarray, timestamps: np.ndarray, k: int, exclude_seen: bool = True,
                 recent: np.ndarray | None = None, attributes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for a batch of requests. -> (scores (B, k), items (B, k), queries (B, D))."""
        queries = self.embed_requests(users, timestamps, recent, attributes)
        scores, items = self.candidates(queries, users, k, exclude_seen)
        return scores, items, queries
