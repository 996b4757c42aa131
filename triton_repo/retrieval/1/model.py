"""``retrieval``: FAISS search over the item index, for clients that want raw candidates.

Query embeddings (B, D) and k (B, 1) in; item indices, item ids and inner-product scores (B, k)
out, best first; -1 / "" / -inf where the catalog has fewer than k items. Uses the same
``retrieval.index`` functions as training and ``recommend``. Requests with the same k that the
dynamic batcher hands over together share one search. Its files are checked against the
repository's ``checksums.json`` at load (:mod:`inference.integrity`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from inference.integrity import verify_files
from retrieval.index import load_index, search


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    """FAISS index + item ids, loaded once per instance."""

    def initialize(self, args: dict) -> None:
        version = Path(args["model_repository"]) / args["model_version"]
        verify_files(version.parent.parent, ["retrieval/"])  # checksums.json: a damaged index is named, not loaded
        self.index, _ = load_index(version / "items.faiss")
        self.ids = np.array([s.encode("utf-8") for s in json.loads((version / "item_ids.json").read_text())] + [b""],
                            dtype=np.object_)  # index -1 -> ""
        self.max_k = int(json.loads((version / "retrieval.json").read_text())["max_k"])

    def _check(self, query: np.ndarray, k: np.ndarray) -> str | None:
        if query.ndim != 2 or query.shape[1] != self.index.d:
            return f"input 'query' has shape {list(query.shape)}; send [batch, {self.index.d}]"
        if not np.isfinite(query).all():
            return "input 'query' holds NaN or infinite values"
        if len(np.unique(k)) != 1 or not 1 <= int(k.ravel()[0]) <= self.max_k:
            return f"input 'k' is {k.ravel().tolist()}; send one integer in 1..{self.max_k} for every row"
        return None

    def execute(self, requests: list) -> list:
        """Validate each request, then one FAISS search per distinct k."""
        responses: list = [None] * len(requests)
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            query = pb_utils.get_input_tensor_by_name(request, "query").as_numpy()
            k = pb_utils.get_input_tensor_by_name(request, "k").as_numpy()
            problem = self._check(query, k)
            if problem:
                responses[i] = _error(problem)
            else:
                groups.setdefault(int(k.ravel()[0]), []).append((i, query))
        for k, members in groups.items():
            scores, items = search(self.index, np.concatenate([q for _, q in members]), k)
            pad = k - items.shape[1]  # catalog smaller than k
            if pad > 0:
                items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            start = 0
            for i, query in members:
                it, sc = items[start:start + len(query)], scores[start:start + len(query)]
                start += len(query)
                responses[i] = pb_utils.InferenceResponse([
                    pb_utils.Tensor("item_index", it.astype(np.int64)), pb_utils.Tensor("item_id", self.ids[it]),
                    pb_utils.Tensor("score", sc.astype(np.float32))])
        return responses
