"""Exact inner-product search in PyTorch: one matrix product and a top-k, on the GPU when present.

The same ``search(queries, k)`` / ``ntotal`` contract as a FAISS index (so
:func:`retrieval.index.search` and :class:`retrieval.retriever.Retriever` take either), chosen with
``index=exact_torch`` (``configs/index/exact_torch.yaml``). On a GPU this is a sound production
path for catalogs of a few million items: 1M items x 64 dims is 256 MB of float32, and a batch of
256 queries is one (256, D) x (D, 1M) product. It needs no FAISS, so it also runs where no FAISS
GPU build can be installed. Scores are float32 (TF32 is not used), so results equal FAISS ``Flat``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the served FAISS path never loads it
    import torch

log = logging.getLogger(__name__)

# (query, item) scores held at once: 64M float32 = 256 MB; query batches are split to stay under it.
MAX_SCORES = 64_000_000


def resolve_device(use_gpu: bool, n_items: int | None = None, gpu_min_items: int = 0) -> torch.device:
    """``cuda`` when asked for and visible and the catalog has at least ``gpu_min_items`` items,
    else ``cpu`` (logged, not an error). Below that size a query's fixed GPU cost (copies, launches,
    a synchronisation: ~1 ms a request in recommend, docs/gpu.md) exceeds the CPU's whole search."""
    import torch

    if use_gpu and torch.cuda.is_available():
        if n_items is not None and n_items < gpu_min_items:
            log.info("catalog of %d items < index.gpu_min_items=%d: exact search stays on the CPU", n_items,
                     gpu_min_items)
            return torch.device("cpu")
        return torch.device("cuda")
    if use_gpu:
        log.info("no CUDA device visible: exact torch search runs on the CPU")
    return torch.device("cpu")


class ExactIndex:
    """All item embeddings on one device; ids are catalog item indices (row i = item i).

    Args:
        embeddings: (N, D) item embeddings.
        device: where the embeddings live and the product runs.
        max_scores: most (query, item) scores materialised at once (bounds memory for big batches).
    """

    def __init__(self, embeddings: np.ndarray, device: torch.device | str, max_scores: int = MAX_SCORES):
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
        if max_scores < 1:
            raise ValueError(f"max_scores={max_scores} must be >= 1")
        import torch

        self.device = torch.device(device)
        self.items = torch.from_numpy(x).to(self.device)  # (N, D)
        self.ntotal, self.d = x.shape
        self.max_scores = max_scores

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the rows of ids < ntotal, append the others (ids ntotal, ntotal + 1, ... in order).
        Appends go into spare capacity (grown by half when full), so a batch costs O(B) amortised."""
        import torch

        ids = np.asarray(ids, dtype=np.int64)
        new = ids >= self.ntotal
        if not np.array_equal(np.sort(ids[new]), np.arange(self.ntotal, self.ntotal + int(new.sum()))):
            raise ValueError(f"new ids must continue the catalog from {self.ntotal}, got {sorted(ids[new].tolist())}")
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        buf = getattr(self, "_buf", self.items)
        if self.ntotal + int(new.sum()) > len(buf):
            grown = torch.empty((max(self.ntotal + int(new.sum()), len(buf) * 3 // 2 + 16), self.d),
                                dtype=buf.dtype, device=self.device)
            grown[: self.ntotal] = self.items
            buf = grown
        buf[torch.from_numpy(ids).to(self.device)] = x
        self._buf = buf
        self.ntotal += int(new.sum())
        self.items = buf[: self.ntotal]

    def embeddings(self) -> np.ndarray:
        """(N, D) float32 copy on the CPU (what :func:`retrieval.index.save_index` writes)."""
        return self.items.cpu().numpy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product, best first.

        Args:
            queries: (B, D) query embeddings.
            k: items per query, 1..ntotal.

        Returns:
            scores (B, k) float32 and item indices (B, k) int64.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ValueError(f"queries must be (B, {self.d}), got shape {q.shape}")
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"k={k} must be in 1..{self.ntotal} (the catalog size)")
        import torch

        with torch.inference_mode():
            qt = torch.from_numpy(q).to(self.device)
            step = max(1, self.max_scores // self.ntotal)
            scores, ids = [], []
            for s in range(0, len(qt), step):
                top = torch.topk(qt[s : s + step] @ self.items.T, k, dim=1)  # (b, N) -> (b, k), sorted
                scores.append(top.values)
                ids.append(top.indices)
            if not scores:
                return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
            return torch.cat(scores).cpu().numpy(), torch.cat(ids).cpu().numpy().astype(np.int64)
