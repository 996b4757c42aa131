"""Dense integer indices for external string ids.

The catalog (every item in the items table) and the user table define the index spaces, so a
cold item (no interactions at all) still has an index, a row of features and a place in the
FAISS index. Unknown external ids map to -1 here; callers decide what that means (cold-start).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


SMALL_LOOKUP = 32  # lookups of at most this many ids go through a dict


class IdVocab:
    """A fixed, ordered list of external ids and its inverse."""

    def __init__(self, ids: list[str] | np.ndarray | pd.Series):
        self.ids = np.asarray([str(i) for i in ids], dtype=object)
        self._index: pd.Index | None = pd.Index(self.ids)
        if not self._index.is_unique:
            raise ValueError("IdVocab ids must be unique")
        self._positions: dict[str, int] | None = None  # built on the first small lookup

    def extend(self, new_ids) -> None:
        """Append ids the vocabulary does not hold (live users): O(new) for the dict lookups; the
        pandas index of large lookups is rebuilt lazily, once, on the next large lookup."""
        new = np.asarray([str(i) for i in new_ids], dtype=object)
        if len(set(new.tolist())) != len(new) or (self.lookup(new) >= 0).any():
            raise ValueError("IdVocab.extend takes ids it does not hold yet, each once")
        if self._positions is None:
            self._positions = {v: i for i, v in enumerate(self.ids.tolist())}
        start = len(self.ids)
        self._positions.update({v: start + j for j, v in enumerate(new.tolist())})
        self.ids = np.concatenate([self.ids, new])
        self._index = None

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids) -> np.ndarray:
        """External ids -> int64 indices; unknown ids -> -1."""
        values = np.asarray(ids, dtype=object)
        if values.size <= SMALL_LOOKUP:  # a request's handful of ids: a dict, not a pandas index (~0.3 ms)
            if self._positions is None:
                self._positions = {v: i for i, v in enumerate(self.ids.tolist())}
            get = self._positions.get
            return np.fromiter((get(str(v), -1) for v in values.ravel()), np.int64, values.size).reshape(values.shape)
        if self._index is None:
            self._index = pd.Index(self.ids)
        return self._index.get_indexer(pd.Index(values.astype(str))).astype(np.int64)

    def to_json(self) -> list[str]:
        return [str(i) for i in self.ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> "IdVocab":
        return cls(json.loads(Path(path).read_text()))


def interaction_matrix(
    interactions: pd.DataFrame, users: IdVocab, items: IdVocab, binary: bool = True
) -> sp.csr_matrix:
    """(n_users, n_items) CSR of interactions; duplicates summed, then clipped to 1 if binary."""
    u = users.lookup(interactions["user_id"].to_numpy())
    i = items.lookup(interactions["item_id"].to_numpy())
    keep = (u >= 0) & (i >= 0)
    if "weight" in interactions.columns and not binary:
        data = interactions["weight"].to_numpy(dtype=np.float32)[keep]
    else:
        data = np.ones(int(keep.sum()), dtype=np.float32)
    m = sp.csr_matrix((data, (u[keep], i[keep])), shape=(len(users), len(items)), dtype=np.float32)
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m
