"""Per-user time-ordered interaction histories, flat (one implementation for the feature store
and the towers' training data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Histories:
    """Per-user time-ordered items, flat: user u owns ``codes[offsets[u]:offsets[u+1]]``."""

    offsets: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (nnz,) int64 catalog item indices
    codes: np.ndarray  # (nnz,) int64 item-id feature codes (0 = unknown item)
    timestamps: np.ndarray  # (nnz,) int64

    @classmethod
    def build(cls, data, frame: pd.DataFrame) -> "Histories":
        """From prepared data (its user / item vocabularies and item table) and an interactions frame;
        rows with an unknown user or item are left out."""
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
