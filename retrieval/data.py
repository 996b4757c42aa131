"""Tensors for the towers: catalog item features, user histories, training batches.

A user's history is the item-id codes of their items in time order; the user tower sees the most
recent ``history_len`` of them. Two ways to build training histories (``history_mode``):
- ``causal``: only items before the target (next-item prediction);
- ``bag``: the user's most recent training items with the target itself removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset as TorchDataset

from features.encoders import context_from_timestamp
from features.prepare import Prepared

HISTORY_MODES = ("causal", "bag")


@dataclass
class Histories:
    """Per-user time-ordered items, flat: user u owns ``codes[offsets[u]:offsets[u+1]]``."""

    offsets: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (nnz,) int64 catalog item indices
    codes: np.ndarray  # (nnz,) int64 item-id feature codes (0 = unknown item)
    timestamps: np.ndarray  # (nnz,) int64

    @classmethod
    def build(cls, data: Prepared, frame: pd.DataFrame) -> "Histories":
        u = data.users.lookup(frame["user_id"].to_numpy())
        i = data.items.lookup(frame["item_id"].to_numpy())
        ts = frame["timestamp"].to_numpy(dtype=np.int64)
        keep = (u >= 0) & (i >= 0)
        u, i, ts = u[keep], i[keep], ts[keep]
        order = np.lexsort((i, ts, u))  # by user, then time (item id breaks ties)
        u, i, ts = u[order], i[order], ts[order]
        offsets = np.zeros(len(data.users) + 1, dtype=np.int64)
        np.add.at(offsets, u + 1, 1)
        return cls(np.cumsum(offsets), i, data.item_table["item_id"][i], ts)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def recent(self, users: np.ndarray, length: int) -> np.ndarray:
        """The last ``length`` item codes of each user, right-aligned, 0-padded. -> (B, L) int64."""
        end = self.offsets[users + 1]
        idx = end[:, None] - length + np.arange(length)[None, :]  # (B, L)
        valid = idx >= self.offsets[users][:, None]
        return np.where(valid, self.codes[np.clip(idx, 0, max(len(self.codes) - 1, 0))] if len(self.codes) else 0, 0)

    def recent_items(self, users: np.ndarray, length: int) -> np.ndarray:
        """Like :meth:`recent` but catalog item indices, -1 padded. -> (B, L) int64."""
        end = self.offsets[users + 1]
        idx = end[:, None] - length + np.arange(length)[None, :]
        valid = idx >= self.offsets[users][:, None]
        return np.where(valid, self.items[np.clip(idx, 0, max(len(self.items) - 1, 0))] if len(self.items) else -1, -1)

    def last_timestamp(self, users: np.ndarray) -> np.ndarray:
        """Timestamp of each user's latest item; -1 for users with none."""
        end = self.offsets[users + 1]
        has = end > self.offsets[users]
        return np.where(has, self.timestamps[np.clip(end - 1, 0, max(len(self.timestamps) - 1, 0))] if len(self.timestamps) else -1, -1)


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
