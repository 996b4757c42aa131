"""Tensors for the towers: catalog item features, user histories, training batches.

A user's history is the item-id codes of their items in time order; the user tower sees the most
recent ``history_len`` of them. Two ways to build training histories (``history_mode``):
- ``causal``: only items before the target (next-item prediction);
- ``bag``: the user's most recent training items with the target itself removed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from features.encoders import context_from_timestamp
from features.history import Histories  # noqa: F401 - re-exported: the towers' training histories
from features.prepare import Prepared

HISTORY_MODES = ("causal", "bag")


def user_inputs(data: Prepared, users: np.ndarray, history: np.ndarray, timestamps: np.ndarray) -> dict[str, torch.Tensor]:
    """User-tower inputs for user indices (B,), history codes (B, L) and request times (B,)."""
    x = {n: torch.as_tensor(v[users]) for n, v in data.user_table.items()}
    for s in data.features.specs["context"]:
        x[s.name] = torch.as_tensor(context_from_timestamp(timestamps, s.source))
    x["history"] = torch.as_tensor(history, dtype=torch.int64)
    return x


def item_inputs(data: Prepared, items: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Item-tower inputs for catalog indices (all items when None)."""
    if items is None:
        return {n: torch.as_tensor(v) for n, v in data.item_table.items()}
    return {n: torch.as_tensor(v[items]) for n, v in data.item_table.items()}


class TrainExamples(TorchDataset):
    """One example per training interaction; a batch is built in :meth:`collate` (vectorised)."""

    def __init__(self, data: Prepared, histories: Histories, history_len: int, history_mode: str):
        if history_mode not in HISTORY_MODES:
            raise ValueError(f"unknown retrieval.history_mode {history_mode!r}; known: {', '.join(HISTORY_MODES)}")
        self.data, self.h, self.L, self.mode = data, histories, history_len, history_mode
        lengths = histories.lengths()
        self.users = np.repeat(np.arange(len(lengths)), lengths)  # (nnz,)
        self.pos = np.arange(len(histories.items)) - histories.offsets[self.users]  # position within user

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict[str, object]:
        r = np.asarray(rows, dtype=np.int64)
        u, p = self.users[r], self.pos[r]
        start, L = self.h.offsets[u], self.L
        if self.mode == "causal":
            idx = start[:, None] + p[:, None] - L + np.arange(L)[None, :]  # the L items before the target
            valid = idx >= start[:, None]
        else:
            end = self.h.offsets[u + 1]
            idx = end[:, None] - L + np.arange(L)[None, :]  # the user's last L items ...
            valid = (idx >= start[:, None]) & (idx != (start + p)[:, None])  # ... minus the target
        history = np.where(valid, self.h.codes[np.clip(idx, 0, len(self.h.codes) - 1)], 0)
        target = self.h.items[r]
        return {
            "user": user_inputs(self.data, u, history, self.h.timestamps[r]),
            "item": item_inputs(self.data, target),
            "item_index": torch.as_tensor(target),
        }
