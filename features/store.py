"""The feature store: everything a request needs looked up, saved as one artifact.

Built offline from a :class:`~features.prepare.Prepared` and a history table (train+valid for
testing and serving), loaded unchanged by the serving code, so offline evaluation and online
requests build model inputs the same way. Unknown users are not an error: they get the
out-of-vocabulary code for every id and whatever attributes / recent items the request carries.
"""

from __future__ import annotations

import json
import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.encoders import FeatureSet, context_from_timestamp
from features.history import Histories
from features.vocab import IdVocab, interaction_matrix

try:  # scipy's compiled CSR x dense kernel: sums a table's rows in place, no gathered copy (see sum_rows)
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # a scipy that moved it: sum_rows gathers the rows with numpy instead
    _csr_matvecs = None

RESORT_S = 1.0  # the most-popular order is sorted again at most this often after live events
ATTRIBUTES = "attributes.json"  # stored_attributes of the users the vocabulary does not hold yet


class FeatureStore:
    """Encoded user/item tables, each known user's recent items and seen set, item popularity."""

    def __init__(self, users: IdVocab, items: IdVocab, features: FeatureSet, user_table: dict[str, np.ndarray],
                 item_table: dict[str, np.ndarray], recent: np.ndarray, last_ts: np.ndarray, seen: sp.csr_matrix,
                 popularity: np.ndarray):
        self.users, self.items, self.features = users, items, features
        self.user_table, self.item_table = user_table, item_table
        self.recent = recent  # (n_users, L) catalog item indices, most recent last, -1 padded
        self.last_ts = last_ts  # (n_users,) latest interaction time, -1 if none
        self.seen = seen  # (n_users, n_items) binary CSR, sorted indices
        if seen is not None:
            self.seen.sort_indices()
        self.popularity = popularity  # (n_items,) interaction counts in the history table
        self._by_popularity: np.ndarray | None = None
        self._sorted_at, self._popularity_changed = 0.0, False
        # Items seen since the store was built (live events, pipeline/online.py), per user index:
        # sorted unique arrays next to the CSR, so an event costs no CSR rebuild. Read through
        # seen_rows / seen_items, folded into ``seen`` by compact_seen.
        self.seen_delta: dict[int, np.ndarray] = {}
        # Attributes stored for users the vocabulary does not hold yet (``upsert_user`` while serving,
        # pipeline/catalog.py): used by their requests (cold-start attribute path) and encoded into
        # their row when their first event makes them known (add_users).
        self.stored_attributes: dict[str, dict] = {}
        # What is kept per item from its attributes (pipeline.item_vectors.ItemVectors): told by items_changed
        self.item_caches: weakref.WeakSet = weakref.WeakSet()

    def items_changed(self, items: np.ndarray) -> None:
        """These item indices' attributes changed in ``item_table``: whatever was kept from them is dropped."""
        for cache in list(self.item_caches):
            cache.forget(items)

    def seen_rows(self, users: np.ndarray) -> "SparseRows":
        """(B, N) binary: each user's seen items (stored and live), sorted; unknown users (-1) get an
        empty row. Built straight from the CSR arrays into :class:`SparseRows`: scipy's row indexing
        and matrix constructor cost ~0.1 ms a call each, more than a served request's whole gather."""
        users = np.asarray(users, dtype=np.int64)
        if self.seen_delta and any(u in self.seen_delta for u in users.tolist()):
            parts = [self.seen_items(u) for u in users.tolist()]  # rows with live items: per row
            lens = np.fromiter((len(p) for p in parts), np.int64, len(parts))
            indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        else:
            indices, lens = gather_rows(self.seen, users)
        return SparseRows.from_lengths(indices, lens, self.seen.shape[1])

    def seen_items(self, user: int) -> np.ndarray:
        """One user's seen item indices, sorted (empty for an unknown user)."""
        if user < 0:
            return np.zeros(0, np.int64)
        base = self.seen.indices[self.seen.indptr[user] : self.seen.indptr[user + 1]]
        extra = self.seen_delta.get(user)
        return base if extra is None else np.union1d(base, extra)

    def add_users(self, user_ids) -> int:
        """Grow the user space, in place, by the ids it does not know (attributes unknown: code 0,
        no history). One copy of the per-user arrays for the whole batch. Returns how many were new."""
        user_ids = np.asarray(user_ids, dtype=object).astype(str)
        unknown = self.users.lookup(user_ids) < 0  # one vectorised lookup
        if not unknown.any():  # the common case of a live batch: nothing to grow
            return 0
        new = pd.unique(user_ids[unknown])
        n = len(new)
        stored = [self.stored_attributes.pop(u, {}) for u in new.tolist()] if self.stored_attributes else [{}] * n
        enc = self.features.transform("user", self._user_frame(new, stored))
        self.user_table = {k: np.concatenate([v, np.asarray(enc[k], dtype=v.dtype)]) for k, v in self.user_table.items()}
        self.recent = np.concatenate([self.recent, np.full((n, self.history_len), -1, self.recent.dtype)])
        self.last_ts = np.concatenate([self.last_ts, np.full(n, -1, self.last_ts.dtype)])
        self.seen.resize((self.seen.shape[0] + n, self.seen.shape[1]))  # appends empty rows (indptr only)
        self.users.extend(new)
        return n

    def _user_frame(self, user_ids, rows: list[dict]) -> pd.DataFrame:
        """Raw user rows (every attribute column; None where a row does not give it)."""
        cols = [s.source for s in self.features.specs["user"] if s.source != "user_id"]
        return pd.DataFrame({"user_id": list(user_ids), **{c: [r.get(c) for r in rows] for c in dict.fromkeys(cols)}})

    def set_user_attributes(self, user_ids, rows: list[dict]) -> int:
        """Store user attributes (raw values, encoded with the run's encoders: unknown values -> OOV).

        A known user's row of the user table gets the encoded values of the attributes given (the
        others keep theirs): the user tower and the ranker's user features read it. An unknown user's
        attributes are kept in ``stored_attributes`` (merged with earlier ones) until an event makes
        them known. O(batch). Returns how many users were known.
        """
        users = self.users.lookup(np.asarray(list(user_ids), dtype=object))
        known = [(u, r) for u, r in zip(users.tolist(), rows) if u >= 0]
        for uid, u, r in zip(user_ids, users.tolist(), rows):
            if u < 0:
                self.stored_attributes[str(uid)] = {**self.stored_attributes.get(str(uid), {}), **r}
        if known:
            idx = np.array([u for u, _ in known], dtype=np.int64)
            enc = self.features.transform("user", self._user_frame(self.users.ids[idx], [r for _, r in known]))
            for spec in self.features.specs["user"]:
                if spec.source == "user_id":
                    continue
                given = np.array([spec.source in r for _, r in known], dtype=bool)
                if given.any():
                    self.user_table[spec.name][idx[given]] = np.asarray(enc[spec.name])[given]
        return len(known)

    def request_attributes(self, user_id: str, given: dict) -> dict:
        """A request's user attributes: those stored for an unknown user, overridden by the request's own."""
        stored = self.stored_attributes.get(user_id) if self.stored_attributes else None
        return {**stored, **given} if stored else given

    def compact_seen(self) -> None:
        """Fold ``seen_delta`` into the CSR (one O(nnz) rebuild for many events)."""
        if not self.seen_delta:
            return
        r = np.concatenate([np.full(len(i), u) for u, i in self.seen_delta.items()])
        c = np.concatenate(list(self.seen_delta.values()))
        delta = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=self.seen.shape)
        self.seen = (self.seen + delta).sign().astype(np.float32).tocsr()
        self.seen.sort_indices()
        self.seen_delta = {}

    def most_popular(self, n: int) -> np.ndarray:
        """The n most popular item indices, best first (ties: lower index first); the full order is
        sorted once and kept (a 1M-item sort costs ~20 ms, too much per request). After live events
        changed popularity it is sorted again, at most once per ``RESORT_S``."""
        now = time.monotonic()
        if self._by_popularity is None or (self._popularity_changed and now - self._sorted_at >= RESORT_S):
            self._by_popularity = np.argsort(-self.popularity, kind="stable")
            self._sorted_at, self._popularity_changed = now, False
        return self._by_popularity[:n]

    def popularity_changed(self) -> None:
        """``popularity`` was updated in place: the next :meth:`most_popular` may sort again."""
        self._popularity_changed = True

    @property
    def history_len(self) -> int:
        return self.recent.shape[1]

    @classmethod
    def build(cls, data, history: pd.DataFrame, history_len: int) -> "FeatureStore":
        """From prepared data and the interactions that count as known history."""
        h = Histories.build(data, history)
        users = np.arange(len(data.users))
        recent, last_ts = h.recent_items(users, history_len), h.last_timestamp(users)
        seen = interaction_matrix(history, data.users, data.items)
        popularity = np.asarray(seen.sum(axis=0)).ravel()
        return cls(data.users, data.items, data.features, data.user_table, data.item_table, recent.astype(np.int64),
                   last_ts.astype(np.int64), seen, popularity)

    def item_codes(self, items: np.ndarray) -> np.ndarray:
        """Catalog indices (-1 = none) -> item-id feature codes (0 = padding / unknown)."""
        codes = self.item_table["item_id"][np.maximum(items, 0)]
        return np.where(items >= 0, codes, 0)

    def user_inputs(self, users: np.ndarray, timestamps: np.ndarray, recent: np.ndarray | None = None,
                    attributes: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
        """User-tower inputs for a batch of requests.

        Args:
            users: (B,) user indices; -1 for an unknown user.
            timestamps: (B,) request times in Unix seconds (context features).
            recent: optional (B, L) catalog item indices the request carries (-1 padded); they
                replace the stored history where given (a row of all -1 keeps the stored one).
            attributes: optional user attribute rows (B rows) for unknown users.
        """
        users = np.asarray(users, dtype=np.int64)
        known = users >= 0
        safe = np.where(known, users, 0)
        x = {}
        for name, table in self.user_table.items():
            col = table[safe]  # a new array (integer indexing copies)
            col[~known] = 0
            x[name] = col
        if attributes is not None and (~known).any():
            enc = self.features.transform("user", attributes)
            for name, col in enc.items():
                if name != "user_id":
                    x[name][~known] = col[~known]
        hist = np.where(known[:, None], self.recent[safe], -1)
        if recent is not None:
            given = (recent >= 0).any(axis=1)
            hist[given] = _right_align(recent[given], self.history_len)
        x["history"] = self.item_codes(hist)
        for s in self.features.specs["context"]:
            x[s.name] = context_from_timestamp(np.asarray(timestamps), s.source)
        return x

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.users.save(out / "users.json")
        self.items.save(out / "items.json")
        self.features.save(out / "encoders.json")
        np.savez(out / "tables.npz", **{f"user.{k}": v for k, v in self.user_table.items()},
                 **{f"item.{k}": v for k, v in self.item_table.items()}, recent=self.recent, last_ts=self.last_ts,
                 popularity=self.popularity)
        self.compact_seen()
        sp.save_npz(out / "seen.npz", self.seen, compressed=False)  # zlib cost 2-3 s per 10M entries on save
        (out / "store.json").write_text(json.dumps({"history_len": self.history_len}))
        attributes = out / ATTRIBUTES
        if self.stored_attributes:  # users known by their attributes only (upsert_user), until their first event
            attributes.write_text(json.dumps(self.stored_attributes))
        elif attributes.exists():
            attributes.unlink()

    @classmethod
    def load(cls, out_dir: str | Path) -> "FeatureStore":
        d = Path(out_dir)
        if not (d / "tables.npz").exists():
            raise FileNotFoundError(f"no feature store in {d}; run `python train.py stage=retrieval` first")
        z = np.load(d / "tables.npz")
        user = {k[5:]: z[k] for k in z.files if k.startswith("user.")}
        item = {k[5:]: z[k] for k in z.files if k.startswith("item.")}
        store = cls(IdVocab.load(d / "users.json"), IdVocab.load(d / "items.json"),
                    FeatureSet.load(d / "encoders.json"), user, item, z["recent"], z["last_ts"],
                    sp.load_npz(d / "seen.npz").tocsr(), z["popularity"])
        if (d / ATTRIBUTES).is_file():
            store.stored_attributes = json.loads((d / ATTRIBUTES).read_text())
        return store


class SparseRows:
    """A few rows of a binary sparse matrix (B, N): what a batch of requests knows (seen items,
    history). Each row's column indices are sorted and unique; every stored value is 1.

    The pipeline's per-request hot path reads these arrays directly (``indptr``, ``indices``);
    :meth:`tocsr` gives the scipy matrix for everything else (its constructor alone costs ~0.1 ms,
    about a tenth of a served request). ``rows @ dense`` sums the rows of ``dense`` each row names.
    """

    has_sorted_indices = True

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_cols: int):
        self.indptr, self.indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int64)
        self.shape = (len(self.indptr) - 1, int(n_cols))

    @classmethod
    def from_lengths(cls, indices: np.ndarray, lengths: np.ndarray, n_cols: int) -> "SparseRows":
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return cls(indptr, indices, n_cols)

    @classmethod
    def from_lists(cls, rows: list[np.ndarray], n_cols: int) -> "SparseRows":
        """From one sorted, unique index array per row."""
        lens = np.fromiter((len(r) for r in rows), np.int64, len(rows))
        return cls.from_lengths(np.concatenate(rows) if rows else np.zeros(0, np.int64), lens, n_cols)

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def data(self) -> np.ndarray:
        return np.ones(len(self.indices), dtype=np.float32)

    def row(self, b: int) -> np.ndarray:
        return self.indices[self.indptr[b] : self.indptr[b + 1]]

    def cut(self, n_cols: int) -> "SparseRows":
        """The same rows without the columns from ``n_cols`` on."""
        keep = self.indices < n_cols
        counts = np.concatenate([[0], np.cumsum(keep)])
        return SparseRows(counts[self.indptr], self.indices[keep], n_cols)

    def tocsr(self) -> sp.csr_matrix:
        m = sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)
        m.has_sorted_indices = True
        return m

    def toarray(self) -> np.ndarray:
        return self.tocsr().toarray()

    def __matmul__(self, other):
        if sp.issparse(other):
            return self.tocsr() @ other
        other = np.asarray(other)
        out = np.zeros((self.shape[0], other.shape[1]), dtype=np.result_type(np.float32, other.dtype))
        for b in range(self.shape[0]):
            idx = self.row(b)
            if len(idx):
                sum_rows(other, idx, out[b])
        return out


def sum_rows(table: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``table[rows].sum(axis=0)`` without gathering the rows into a copy: (N, M), (k,) -> (M,).

    The rows are added one after another in ``rows``' order, as numpy's reduction over axis 0 adds
    them, so the sums are the same to the bit. A served request sums its ~100 known items' rows of
    the (N, N) EASE and cosine tables; the gathered copy (k x N floats) cost half the time:
    104 -> 43 us at 1,682 items (docs/serving.md, "Tenth pass"). ``out``: a (M,) array to add into
    (zeros when None). Anything the compiled kernel does not take as it is (another dtype, a
    non-contiguous table or ``out``, one column, negative indices, an ``out`` that may overlap the
    table) goes through numpy instead; rows outside the table raise IndexError, as numpy does.
    """
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu":  # numpy's own rule for index arrays (floats are not truncated)
        raise IndexError(f"rows must be integer indices, not {rows.dtype}")
    rows = rows.astype(np.int64, copy=False).ravel()
    if out is None:
        out = np.zeros(table.shape[1], dtype=table.dtype)
    elif out.shape != (table.shape[1],):  # the kernel writes table.shape[1] values, whatever out's size
        raise ValueError(f"out has shape {out.shape}; it must be ({table.shape[1]},), one value per column")
    if not len(rows):
        return out
    n, lo, hi = table.shape[0], int(rows.min()), int(rows.max())
    if lo < -n or hi >= n:  # numpy's IndexError: the compiled kernel would read outside the table
        raise IndexError(f"row {lo if lo < -n else hi} is out of bounds for a table of {n} rows")
    if (lo >= 0 and _csr_matvecs is not None and table.ndim == 2 and table.shape[1] > 1
            and table.dtype == out.dtype and table.dtype in (np.float32, np.float64)
            and table.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable
            and not np.may_share_memory(table, out)):
        # one sparse row of ones (the rows asked for) times the table, accumulated into out
        _csr_matvecs(1, n, table.shape[1], np.array([0, len(rows)], np.int64), rows,
                     np.ones(len(rows), table.dtype), table.ravel(), out)
        return out
    out += np.add.reduce(table[rows], axis=0)
    return out


def row_positions(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the entries of CSR rows ``rows`` (-1 = an empty row) lie in ``m.indices`` / ``m.data``,
    row after row, and each row's count: one vectorised gather, no scipy indexing (~0.1 ms a call).
    -> positions (nnz,), lengths (B,)"""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 1:  # one request (the served path): two reads, not a dozen array calls
        start, end = (int(m.indptr[rows[0]]), int(m.indptr[rows[0] + 1])) if rows[0] >= 0 else (0, 0)
        return np.arange(start, end, dtype=np.int64), np.array([end - start], dtype=np.int64)
    known = rows >= 0
    safe = np.where(known, rows, 0)
    start = m.indptr[safe].astype(np.int64)
    lens = np.where(known, m.indptr[safe + 1] - start, 0)
    total = int(lens.sum())
    if not total:
        return np.zeros(0, np.int64), lens
    offsets = np.cumsum(lens) - lens  # where each row starts in the output
    return np.repeat(start - offsets, lens) + np.arange(total), lens


def gather_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The column indices of CSR rows ``rows`` (-1 = an empty row), concatenated, and each row's count."""
    pos, lens = row_positions(m, rows)
    return m.indices[pos], lens


def _right_align(rows: np.ndarray, length: int) -> np.ndarray:
    """Keep the last ``length`` valid entries of each row, right-aligned, -1 padded."""
    out = np.full((len(rows), length), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        v = row[row >= 0][-length:]
        if len(v):
            out[r, -len(v):] = v
    return out
