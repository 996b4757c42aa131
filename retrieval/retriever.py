"""Candidate retrieval: request -> user tower -> FAISS -> top-k unseen items.

Used the same way by offline evaluation, the batch command and the serving models.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from features.store import FeatureStore
from retrieval.index import search


class TorchModel:
    """Adapts an ``nn.Module`` taking a dict of tensors to numpy in, numpy out (eval mode).

    Args:
        module: the plain model (user tower, ranker, student).
        device: where it runs; inputs are copied there and outputs back to the CPU (``cuda`` for
            the in-process GPU path, see docs/gpu.md).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, inputs: dict[str, np.ndarray]):
        out = self.module({k: torch.as_tensor(v).to(self.device) for k, v in inputs.items()})
        if isinstance(out, tuple):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()


class Retriever:
    """A user encoder, an item index and the feature store that feeds them.

    ``user_encoder`` maps user-tower inputs (dict of numpy arrays) to (B, D) query embeddings: the
    PyTorch tower offline (:class:`TorchModel`), an onnxruntime session or a Triton call online.
    """

    def __init__(self, user_encoder, index, store: FeatureStore, item_embeddings: np.ndarray):
        self.user_encoder = TorchModel(user_encoder) if isinstance(user_encoder, torch.nn.Module) else user_encoder
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

    def retrieve(self, users: np.ndarray, timestamps: np.ndarray, k: int, exclude_seen: bool = True,
                 recent: np.ndarray | None = None, attributes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for a batch of requests. -> (scores (B, k), items (B, k), queries (B, D))."""
        queries = self.embed_users(self.store.user_inputs(users, timestamps, recent, attributes))
        exclude = None
        if exclude_seen:
            known = np.asarray(users) >= 0
            exclude = self.store.seen[np.where(known, users, 0)]
            if not known.all():
                exclude = sp.diags(known.astype(np.float32)) @ exclude
                exclude.eliminate_zeros()
            exclude = exclude.tocsr()
        scores, items = self.search(queries, k, exclude)
        return scores, items, queries
