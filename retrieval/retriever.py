"""Candidate retrieval: request -> user tower -> FAISS -> top-k unseen items.

Used the same way by offline evaluation, the batch command and the serving models.
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp

from features.store import FeatureStore
from inference.models import TorchModel
from retrieval.index import search


def is_torch_module(model) -> bool:
    """Whether ``model`` is a ``torch.nn.Module``, without importing torch on the served path (a
    module can exist only once torch was imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


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

    def search(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query, skipping each row's excluded items.

        Over-fetches by the largest number of excluded items in the batch so that k survive.
        Returns scores (B, k) float32 and item indices (B, k) int64, -1 / -inf where fewer exist.
        """
        extra = int(np.diff(exclude.indptr).max()) if exclude is not None and exclude.nnz else 0
        scores, items = search(self.index, queries, k + extra)
        if exclude is not None and extra:
            rows = np.repeat(np.arange(len(items)), items.shape[1])
            excluded = np.asarray(exclude[rows, np.clip(items.ravel(), 0, None)]).reshape(items.shape) > 0
            drop = excluded | (items < 0)
            # stable: keep kept items in score order, push dropped ones to the end
            order = np.argsort(drop, axis=1, kind="stable")
            items = np.take_along_axis(items, order, 1)
            scores = np.take_along_axis(scores, order, 1)
            drop = np.take_along_axis(drop, order, 1)
            items = np.where(drop, -1, items)
            scores = np.where(drop, -np.inf, scores)
        out_s = np.full((len(items), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(items), k), -1, dtype=np.int64)
        n = min(k, items.shape[1])
        out_s[:, :n], out_i[:, :n] = scores[:, :n], items[:, :n]
        return out_s, out_i

    def embed_requests(self, users: np.ndarray, timestamps: np.ndarray, recent: np.ndarray | None = None,
                       attributes=None) -> np.ndarray:
        """The user tower on a batch of requests. -> (B, D) query embeddings."""
        return self.embed_users(self.store.user_inputs(users, timestamps, recent, attributes))

    def candidates(self, queries: np.ndarray, users: np.ndarray, k: int,
                   exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k index items for the queries, each known user's seen items skipped. -> scores, items (B, k)."""
        exclude = self.store.seen_rows(users) if exclude_seen else None
        return self.search(queries, k, exclude)

    def retrieve(self, users: np.ndarray, timestamps: np.ndarray, k: int, exclude_seen: bool = True,
                 recent: np.ndarray | None = None, attributes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for a batch of requests. -> (scores (B, k), items (B, k), queries (B, D))."""
        queries = self.embed_requests(users, timestamps, recent, attributes)
        scores, items = self.candidates(queries, users, k, exclude_seen)
        return scores, items, queries
