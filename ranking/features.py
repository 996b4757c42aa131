"""Ranker inputs for (request, candidate) pairs, grouped by signal.

Groups (each fused late by :class:`ranking.model.LateFusionRanker`):
- collaborative: user and item tower embeddings, the retrieval score, and two co-occurrence
  scores of the candidate against everything the user has interacted with: item-item cosine
  (any catalog size) and EASE (catalogs up to ``ease_max_items``; 0 above, logged); the three
  scores again standardised within the request's list; whether the request has any known items
  (``has_history``: 0 for the no-information cold route);
- content: the item's attributes (every item feature except its id);
- user: the user's attributes (every user feature except the id);
- context: hour, day of week, time since the user's last interaction, the item's age;
- popularity: overall and recent (last ``recent_days`` before the request) interaction counts.

The same :class:`CandidateFeatures` serves offline training, evaluation and the Triton models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference.topk import topk_excluding
from features.cooccurrence import ease_weights, item_cosine_similarity
from features.store import FeatureStore, SparseRows, row_positions, sum_rows
from ranking.rules import member

GROUPS = ("collaborative", "content", "user", "context", "popularity")
COLLABORATIVE = ("user_emb", "item_emb", "retrieval_score", "cooc_score", "ease_score", "retrieval_z", "cooc_z", "ease_z",
                 "has_history")
# Scores also given standardised within each request's list: a history of 80% of the data (the
# ranker's training window) and one of 90% (test, serving) put raw sums on different scales.
LIST_RELATIVE = {"retrieval_z": "retrieval_score", "cooc_z": "cooc_score", "ease_z": "ease_score"}
CONTEXT_NUMERIC = ("since_last", "item_age")
POPULARITY = ("pop_all", "pop_recent")
log = logging.getLogger(__name__)
_SHIFT = 32  # item index in the high bits, timestamp in the low bits of one sortable key
PADDED_MAX_ENTRIES = 8_000_000  # cosine weights kept as (N, K) arrays up to this many slots (~96 MB)
DENSE_MAX_ITEMS = 4096  # up to this catalog size the cosine weights are also one dense (N, N) table (<= 64 MB):
# a request sums its known items' rows and reads the candidates there (113-144 against 218-270 us for
# the scattered (known x candidates) block, 1,682 items and 200 candidates, 2026-12-02's slower machine)
DENSE_ROWS_PER_CANDIDATE = 16  # whole rows while the catalog is at most this many times the candidates
DENSE_ROWS_MAX_ENTRIES = 1 << 22  # and the known rows hold at most this many weights (16 MB); else the block
SORT_MAX_ITEMS = 8192  # up to this catalog size each row's top by one partition and a stable sort of the cut
# (exact ties; 8 against 25 us at 1,682 items, m = 100), above it topk_excluding over the batch
LIVE_KEYS_MERGE = 65_536  # live event keys kept apart from the history's before one merge


def input_groups(store: FeatureStore) -> dict[str, list[str]]:
    """Input names per group for this store's features (the ranker's input table)."""
    return {
        "collaborative": list(COLLABORATIVE),
        "content": [s.name for s in store.features.specs["item"] if s.name != "item_id"],
        "user": [s.name for s in store.features.specs["user"] if s.name != "user_id"],
        "context": [s.name for s in store.features.specs["context"]] + list(CONTEXT_NUMERIC),
        "popularity": list(POPULARITY),
    }


def item_content(store: FeatureStore) -> sp.csr_matrix:
    """(N, F) multi-hot of every categorical / multi-categorical / text (token) item attribute except
    the id (padding code 0 left out); numeric attributes are not used."""
    blocks = []
    for spec in store.features.specs["item"]:
        if spec.name == "item_id" or spec.kind not in ("categorical", "multi_categorical", "text"):
            continue
        codes = np.asarray(store.item_table[spec.name])
        codes = codes.reshape(len(codes), -1)  # (N, M): one or several codes per item
        rows = np.repeat(np.arange(len(codes)), codes.shape[1])
        keep = codes.ravel() > 0
        blocks.append(sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], codes.ravel()[keep])),
                                    shape=(len(codes), int(codes.max()) + 1)))
    if not blocks:
        return sp.csr_matrix((len(store.items), 0), dtype=np.float32)
    return sp.hstack(blocks).tocsr().sign()


def _finite(v: np.ndarray) -> np.ndarray:
    """-inf (no candidate) -> -1, NaN -> 0 (``np.nan_to_num(v, neginf=-1)``, only when needed)."""
    return v if np.isfinite(v).all() else np.nan_to_num(v, neginf=-1.0)


def _first_smallest(values: np.ndarray, n: int) -> np.ndarray:
    """``values.argsort(kind="stable")[:n]`` (ties by lower index) without sorting the whole row: one
    partition finds the n-th smallest value, and only the values up to it (every tie included) are sorted."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    cut = values[np.argpartition(values, n - 1)[:n]].max()
    head = np.flatnonzero(values <= cut)  # ascending index: the stable sort keeps ties in that order
    if len(head) < n:  # NaN among the first n (no order of its own): the full sort, as argsort places it
        return values.argsort(kind="stable")[:n]
    return head[values[head].argsort(kind="stable")][:n]


def _known_columns(rows, weights):
    """``rows`` cut to the items ``weights`` (co-occurrence / EASE) know: items added while serving
    (pipeline/catalog.py) have no column there until a refresh."""
    n = weights.shape[0]
    if rows.shape[1] == n:
        return rows
    return rows.cut(n) if isinstance(rows, SparseRows) else rows[:, :n]


def _keys_between(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the sorted ``keys`` lie in [lo, hi), per entry: one binary search of all 2R bounds
    in sorted order (successive searches then touch nearby parts of a large key array: -50 us a
    request with 100k keys, A/B in docs/serving.md). (R,), (R,) -> (R,)"""
    bounds = np.concatenate([lo, hi])
    order = bounds.argsort(kind="stable")
    pos = np.empty(len(bounds), np.int64)
    pos[order] = keys.searchsorted(bounds[order])
    return pos[len(lo):] - pos[:len(lo)]


def list_standardise(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(v - list mean) / list std over each row's real candidates; 0 for constant rows and gaps.
    (..., C): the last axis is the list (e.g. (B, C), or (S, B, C) for S scores at once)."""
    if v.shape[-1] and ok.all():  # every place holds a candidate (the usual list): the same sums without the masks
        n = v.shape[-1]
        d = v - v.sum(-1, keepdims=True).astype(np.float64) / n  # float64, as the masked sum / count array
    else:
        n = np.maximum(ok.sum(-1, keepdims=True), 1)
        mean = np.where(ok, v, 0).sum(-1, keepdims=True) / n
        d = np.where(ok, v - mean, 0)
    std = np.sqrt((d**2).sum(-1, keepdims=True) / n)
    return np.where(std > 1e-12, d / np.maximum(std, 1e-12), 0).astype(np.float32)


class CandidateFeatures:
    """Looks up and derives every ranker input from the feature store and history statistics."""

    def __init__(self, store: FeatureStore, item_embeddings: np.ndarray, cooc: sp.csr_matrix, ease: np.ndarray | None,
                 item_first_ts: np.ndarray, event_keys: np.ndarray, recent_days: float):
        self.store = store
        self.item_embeddings = item_embeddings  # (N, D)
        self.cooc = cooc  # (N, N) item-item cosine, [neighbour, target]
        self.ease = ease  # (N, N) dense EASE weights, or None for large catalogs
        self.item_first_ts = item_first_ts  # (N,) first interaction time, -1 if none
        self.event_keys = event_keys  # sorted (item << 32 | timestamp) of history interactions
        self.recent_seconds = int(recent_days * 86400)
        self.live_keys = np.zeros(0, np.int64)  # the same keys for live events (small; merged at LIVE_KEYS_MERGE)
        # recent counts at one request time, kept per item until the time or the events change (_counts_at)
        self._counts_key, self._counts, self._counted = None, np.zeros(0, np.int64), np.zeros(0, bool)

    def add_events(self, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Live interactions: they count in recent popularity and set a never-seen item's first-seen time."""
        items, timestamps = np.asarray(items, np.int64), np.asarray(timestamps, np.int64)
        keys = (items << _SHIFT) | np.clip(timestamps, 0, (1 << _SHIFT) - 1)
        self._counts_key = None  # every kept recent count may have changed
        self.live_keys = np.sort(np.concatenate([self.live_keys, keys]))
        if len(self.live_keys) >= LIVE_KEYS_MERGE:  # one O(history) merge per many events
            self.event_keys = np.sort(np.concatenate([self.event_keys, self.live_keys]))
            self.live_keys = np.zeros(0, np.int64)
        never = self.item_first_ts[items] < 0
        self.item_first_ts[items[never]] = np.iinfo(np.int64).max  # then the minimum of its events
        np.minimum.at(self.item_first_ts, items, timestamps)

    @classmethod
    def build(cls, store: FeatureStore, history: pd.DataFrame, item_embeddings: np.ndarray, k_neighbors: int,
              shrink: float, ease_l2: float | None, ease_max_items: int, recent_days: float,
              ease_content: float) -> "CandidateFeatures":
        """From the store (built on ``history``) and the history interactions themselves;
        ``ease_content``: weight of the item attributes in EASE (0: interactions only)."""
        cooc = item_cosine_similarity(store.seen, k_neighbors, shrink, block_size=2048)
        ease = None
        if ease_l2 and len(store.items) <= ease_max_items:
            ease = ease_weights(store.seen, ease_l2, ease_content * item_content(store) if ease_content else None)
        elif ease_l2:
            log.info("catalog of %d items > ranking.cooc.ease_max_items=%d: ease_score is 0", len(store.items), ease_max_items)
        items = store.items.lookup(history["item_id"].to_numpy())
        ts = history["timestamp"].to_numpy(dtype=np.int64)
        keep = items >= 0
        keys = np.sort((items[keep] << _SHIFT) | np.clip(ts[keep], 0, (1 << _SHIFT) - 1))
        first = np.full(len(store.items), -1, dtype=np.int64)
        order = np.argsort(ts[keep], kind="stable")[::-1]
        first[items[keep][order]] = ts[keep][order]  # the earliest write wins (reverse time order)
        return cls(store, item_embeddings, cooc.tocsr(), ease, first, keys, recent_days)

    @classmethod
    def from_config(cls, store: FeatureStore, history: pd.DataFrame, item_embeddings: np.ndarray, ranking_cfg,
                    ease_content: float) -> "CandidateFeatures":
        """:meth:`build` with the ``ranking`` config's ``cooc`` and ``recent_days`` (a DictConfig or dict)."""
        c = ranking_cfg["cooc"]
        return cls.build(store, history, item_embeddings, c["k_neighbors"], c["shrink"], c["ease_l2"],
                         c["ease_max_items"], ranking_cfg["recent_days"], ease_content)

    def recent_counts(self, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Interactions with each item in [t - recent_days, t). (R,), (R,) -> (R,)

        Rows that all share one time (a served request's candidates) read counts kept per item for that
        time (:meth:`_counts_at`): requests in the same second share them until an event arrives."""
        if len(timestamps) and timestamps[0] == timestamps[-1] and (timestamps == timestamps[0]).all():
            return self._counts_at(items, int(timestamps[0]))
        return self._count(items, timestamps)

    def _counts_at(self, items: np.ndarray, t: int) -> np.ndarray:
        """:meth:`recent_counts` of ``items`` at one time ``t``: each item's count is computed once for
        that time and kept until the time changes or live events arrive (:meth:`add_events`)."""
        if self._counts_key != (t, id(self.event_keys)):
            self._counted[:] = False
            self._counts_key = (t, id(self.event_keys))
        top = int(items.max(initial=-1)) + 1
        if top > len(self._counted):  # a longer catalog (items added online)
            self._counts = np.concatenate([self._counts, np.zeros(top - len(self._counts), np.int64)])
            self._counted = np.concatenate([self._counted, np.zeros(top - len(self._counted), bool)])
        missing = ~self._counted[items]
        if missing.any():
            new = items[missing]  # a repeated item is counted twice and written twice: the same value
            self._counts[new] = self._count(new, np.full(len(new), t, np.int64))
            self._counted[new] = True
        return self._counts[items]

    def _count(self, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        top = (1 << _SHIFT) - 1  # np.minimum / np.maximum, not np.clip: ~8 us less a call (the hot path)
        hi = (items << _SHIFT) | np.minimum(np.maximum(timestamps, 0), top)
        lo = (items << _SHIFT) | np.minimum(np.maximum(timestamps - self.recent_seconds, 0), top)
        counts = _keys_between(self.event_keys, lo, hi)
        if len(self.live_keys):
            counts = counts + _keys_between(self.live_keys, lo, hi)
        return counts

    def history_rows(self, users: np.ndarray, recent: np.ndarray | None = None,
                     seen: SparseRows | None = None) -> SparseRows:
        """(B, N) binary: each request's known items (stored history, plus items the request carries);
        ``seen``: the users' ``store.seen_rows`` when the caller already has them."""
        rows = self.store.seen_rows(users) if seen is None else seen
        if recent is not None:  # e.g. a cold user's session
            rows = SparseRows.from_lists([np.union1d(rows.row(b), r[r >= 0]) for b, r in enumerate(recent)],
                                         rows.shape[1])
        return rows

    def _ease_product(self, rows, cache: dict | None) -> np.ndarray:
        """``rows @ ease`` (B, N), computed once per batch when the caller passes a ``cache`` dict
        (the co-occurrence candidates and the ranker's ease_score both read it)."""
        if cache is not None and cache.get("ease_rows") is rows:
            return cache["ease"]
        product = np.asarray(_known_columns(rows, self.ease) @ self.ease)
        if cache is not None:
            cache["ease_rows"], cache["ease"] = rows, product
        return product

    def history_top(self, rows, m: int, cache: dict | None = None) -> np.ndarray:
        """The m best unseen items by co-occurrence with each request's items (``rows``: binary (B, N),
        :class:`SparseRows` or scipy CSR, see :meth:`history_rows`; EASE when available, else cosine), best first, ties by index; -1 where
        fewer score above zero. (B, N) -> (B, m)

        With the sparse cosine weights (large catalogs) only the items that co-occur are looked at,
        never a dense row over the whole catalog.
        """
        weights = self.ease if self.ease is not None else self.cooc
        known = _known_columns(rows, weights)
        if self.ease is not None:
            scores = self._ease_product(rows, cache)
            out = np.full((rows.shape[0], m), -1, dtype=np.int64)
            n = min(m, scores.shape[1])
            if scores.shape[1] <= SORT_MAX_ITEMS:  # per row: score desc, ties by lower index
                for b in range(rows.shape[0]):
                    neg = -scores[b]
                    neg[known.indices[known.indptr[b] : known.indptr[b + 1]]] = np.inf  # the request's own items
                    top = _first_smallest(neg, n)
                    out[b, :n] = np.where(neg[top] < 0, top, -1)
                return out
            top = topk_excluding(scores, known, n)
            out[:, :n] = np.where(np.take_along_axis(scores, top, 1) > 0, top, -1)
            return out
        out = np.full((known.shape[0], m), -1, dtype=np.int64)
        for b, (idx, val) in enumerate(self._cosine_product(rows, cache)):
            keep = (val > 0) & ~member(idx, known.indices[known.indptr[b] : known.indptr[b + 1]])
            idx, val = idx[keep], val[keep]
            top = _first_smallest(-val, min(m, len(val)))  # best first; idx ascending: ties by index
            out[b, : len(top)] = idx[top]
        return out

    def _cosine_product(self, rows, cache: dict | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``rows @ cooc`` as each request's (target indices ascending, summed cosine weights), the items
        that co-occur with its known ones only; computed once per batch when the caller passes a
        ``cache`` dict (the co-occurrence candidates and the ranker's cooc_score both read it). The
        known items' weight rows gathered, sorted by target and summed per target: no (B, N) product,
        and no catalog-sized scratch array as scipy's sparse product allocates (300 against 180 us at
        1M items)."""
        if cache is not None and cache.get("cosine_rows") is rows:
            return cache["cosine"]
        known, product = _known_columns(rows, self.cooc), []
        for b in range(known.shape[0]):
            pos, _ = row_positions(self.cooc, known.indices[known.indptr[b] : known.indptr[b + 1]])
            order = np.argsort(self.cooc.indices[pos], kind="stable")  # per target, in known-item order
            idx, val = self.cooc.indices[pos][order].astype(np.int64), self.cooc.data[pos][order]
            if len(idx):
                first = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
                idx, val = idx[first], np.add.reduceat(val, first)
            product.append((idx, val.astype(np.float32)))
        if cache is not None:
            cache["cosine_rows"], cache["cosine"] = rows, product
        return product

    @property
    def cooc_by_target(self) -> sp.csr_matrix:
        """The cosine weights transposed, [target, neighbour], sorted indices (built once, kept)."""
        if getattr(self, "_cooc_t_for", None) is not self.cooc:  # built for these weights (a refresh replaces them)
            t = self.cooc.T.tocsr()
            t.sort_indices()
            self._cooc_t, self._cooc_t_for = t, self.cooc
        return self._cooc_t

    @property
    def cooc_padded(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The cosine weights by target as two (N, K) arrays (neighbour index, weight; padding: item 0
        with weight 0), K the most neighbours of any item; None above PADDED_MAX_ENTRIES (a 1M-item
        catalog would need GBs: the CSR path serves it)."""
        by_target = self.cooc_by_target
        if getattr(self, "_padded_for", None) is not by_target:
            lens = np.diff(by_target.indptr)
            k = int(lens.max(initial=0))
            self._padded = None
            if by_target.shape[0] * max(k, 1) <= PADDED_MAX_ENTRIES:
                n = by_target.shape[0]
                col = np.arange(k)[None, :] < lens[:, None]  # (N, K) real entries
                # int32 indices when they fit: half the memory a request's (C, K) gather reads
                index = np.int32 if n < np.iinfo(np.int32).max else np.int64
                neighbours, w = np.zeros((n, k), index), np.zeros((n, k), np.float32)
                neighbours[col], w[col] = by_target.indices, by_target.data  # row-major: CSR order
                self._padded = (neighbours, w)
            self._padded_for = by_target
        return self._padded

    @property
    def cooc_dense(self) -> np.ndarray | None:
        """The cosine weights as a dense (N, N) [neighbour, target] table (None above DENSE_MAX_ITEMS);
        rebuilt when the weights are replaced (a refresh)."""
        if getattr(self, "_dense_for", None) is not self.cooc:
            n = self.cooc.shape[0]
            self._dense = self.cooc.toarray().astype(np.float32) if n <= DENSE_MAX_ITEMS else None
            self._dense_for = self.cooc
        return self._dense

    def prepare_tables(self) -> str | None:
        """Build now the cosine table a request's :meth:`history_scores` reads (each is built on first
        use and kept), so the first request with a history does not pay for it: 25 ms for the dense
        table of 1,682 items, on top of a 2 ms request. The dense table up to DENSE_MAX_ITEMS; the padded
        one on mid-size catalogs (with EASE there, the cosine product is not at hand from the
        candidates); on catalogs without EASE nothing (the candidates' cosine product serves the
        request). -> which table (None: none)."""
        if self.cooc_dense is not None:
            return "dense"
        if self.ease is not None and self.cooc_padded is not None:
            return "padded"
        return None

    def _item_mask(self, n: int) -> np.ndarray:
        """A (n,) all-False bool buffer kept between calls (a 1M-item catalog: 1 MB not zeroed per request)."""
        if getattr(self, "_mask", None) is None or len(self._mask) != n:
            self._mask = np.zeros(n, dtype=bool)
        return self._mask

    def history_scores(self, weights, rows, items: np.ndarray, cache: dict | None = None) -> np.ndarray:
        """Sum of item-item ``weights`` from each request's items (``rows``, see :meth:`history_rows`)
        to each candidate. (B, N), (B, C) -> (B, C)

        The cosine weights: on catalogs up to DENSE_MAX_ITEMS the known items' rows of a dense table
        summed (contiguous reads) and read at the candidates; above, no (B, N) product: each
        candidate's [target, neighbour] row matched against the request's items through a
        boolean table, O(candidates x neighbours) per request ((N, K) tables up to PADDED_MAX_ENTRIES,
        CSR rows beyond), or, when ``cache`` holds the batch's cosine product (:meth:`history_top` on a
        catalog without EASE), looked up in it. The same sums with and without ``cache`` on small
        catalogs (the dense rows come first). EASE reads the batch's cached dense product."""
        out = np.zeros(items.shape, dtype=np.float32)
        n = weights.shape[0]
        items = np.where(items < n, items, -1)  # an item added online: 0 until a refresh
        safe = np.maximum(items, 0)
        if weights is self.cooc and self.cooc_dense is not None:  # small catalogs: the known items' rows summed
            dense = self.cooc_dense
            for r in range(items.shape[0]):
                known = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]  # sorted: those added online last
                known = known[: np.searchsorted(known, n)]
                if not len(known):
                    continue
                if n <= DENSE_ROWS_PER_CANDIDATE * items.shape[1] and len(known) * n <= DENSE_ROWS_MAX_ENTRIES:
                    # whole rows (contiguous), then the candidates
                    out[r] = sum_rows(dense, known)[safe[r]]
                else:  # the (known x candidates) block, scattered reads: fewer of them than whole rows
                    out[r] = dense[known[:, None], safe[r][None, :]].sum(axis=0)
        elif weights is self.cooc and cache is not None and cache.get("cosine_rows") is rows:
            # the candidates found in history_top's product (large catalogs without EASE; on small ones the
            # dense rows above, summed one after another: the product's reduceat adds in another order)
            for r, (idx, val) in enumerate(cache["cosine"]):
                if len(idx):
                    pos = np.minimum(np.searchsorted(idx, safe[r]), len(idx) - 1)
                    out[r] = np.where(idx[pos] == safe[r], val[pos], 0.0)
        elif weights is self.cooc and self.cooc_padded is not None:  # mid-size catalogs: (N, K) tables, 4 array ops
            neighbours, w = self.cooc_padded
            mask = self._item_mask(rows.shape[1])  # the request's items, as a lookup table (all False between calls)
            for r in range(items.shape[0]):
                known = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
                if not len(known):
                    continue
                cand = safe[r]
                mask[known] = True
                try:
                    hit = mask[neighbours[cand]]  # (C, K): which of each candidate's neighbours the request knows
                finally:
                    mask[known] = False
                out[r] = (w[cand] * hit).sum(axis=1)
        elif weights is self.cooc:
            by_target = self.cooc_by_target
            mask = self._item_mask(rows.shape[1])  # the request's items, as a lookup table (all False between calls)
            for r in range(items.shape[0]):
                known = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
                if not len(known):
                    continue
                pos, lens = row_positions(by_target, items[r])  # each candidate's neighbours; -1: none
                if not len(pos):
                    continue
                mask[known] = True
                try:
                    vals = np.where(mask[by_target.indices[pos]], by_target.data[pos], 0.0)
                finally:
                    mask[known] = False
                starts = np.cumsum(lens) - lens  # a trailing 0: every start indexes it, the last segment ends there
                sums = np.add.reduceat(np.append(vals, 0.0), starts)
                out[r] = np.where(lens > 0, sums, 0.0)
        elif weights is self.ease and self.ease is not None:
            out[:] = np.take_along_axis(self._ease_product(rows, cache), safe, axis=1)
        else:
            scores = rows @ weights  # (B, N), sparse or dense
            if sp.issparse(scores):  # look the candidates up in each sparse row: no dense (B, N)
                scores = scores.tocsr()
                scores.sort_indices()
                for r in range(items.shape[0]):
                    idx = scores.indices[scores.indptr[r] : scores.indptr[r + 1]]
                    val = scores.data[scores.indptr[r] : scores.indptr[r + 1]]
                    if not len(idx):
                        continue
                    pos = np.clip(np.searchsorted(idx, safe[r]), 0, len(idx) - 1)
                    out[r] = np.where(idx[pos] == safe[r], val[pos], 0.0)
            else:
                out[:] = np.take_along_axis(np.asarray(scores), safe, axis=1)
        return np.where(items >= 0, out, 0.0)

    def build_inputs(self, users: np.ndarray, timestamps: np.ndarray, queries: np.ndarray, items: np.ndarray,
                     scores: np.ndarray, recent: np.ndarray | None = None, attributes=None,
                     rows: SparseRows | None = None, user_x: dict[str, np.ndarray] | None = None,
                     cache: dict | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Flat (B*C, ...) ranker inputs for B requests with C candidates each (-1 = no candidate);
        ``rows``: the requests' :meth:`history_rows`, ``user_x``: their ``store.user_inputs`` and
        ``cache``: the batch's products (:meth:`history_top`), when the caller already has them;
        ``skip``: item attributes the ranker does not need (it takes their vector instead)."""
        b, c = items.shape
        flat = np.maximum(items.ravel(), 0)
        ts = np.repeat(np.asarray(timestamps, dtype=np.int64), c)
        rows = self.history_rows(users, recent) if rows is None else rows
        if user_x is None:
            user_x = self.store.user_inputs(users, timestamps, recent, attributes)
        x: dict[str, np.ndarray] = {
            "user_emb": np.repeat(queries.astype(np.float32), c, axis=0),
            "item_emb": self.item_embeddings[flat],
            "retrieval_score": _finite(scores.ravel().astype(np.float32)),
            "cooc_score": np.log1p(self.history_scores(self.cooc, rows, items, cache).ravel()),
            "ease_score": (self.history_scores(self.ease, rows, items, cache).ravel() if self.ease is not None
                           else np.zeros(b * c, dtype=np.float32)),
            "has_history": np.repeat((np.diff(rows.indptr) > 0).astype(np.float32), c),
        }
        ok = items >= 0
        z = list_standardise(np.stack([x[raw].reshape(b, c) for raw in LIST_RELATIVE.values()]), ok[None])
        for j, name in enumerate(LIST_RELATIVE):
            x[name] = z[j].ravel()
        for name in self.store.features.encoders["item"]:
            if name != "item_id" and name not in skip:
                x[name] = self.store.item_table[name][flat]
        for name in self.store.features.encoders["user"]:
            if name != "user_id":
                x[name] = np.repeat(user_x[name], c, axis=0)
        for name in self.store.features.encoders["context"]:
            x[name] = np.repeat(user_x[name], c, axis=0)
        last = np.repeat(np.where(users >= 0, self.store.last_ts[np.maximum(users, 0)], -1), c)
        x["since_last"] = np.where(last >= 0, np.log1p(np.maximum(ts - last, 0) / 3600.0), -1.0).astype(np.float32)
        first = self.item_first_ts[flat]
        x["item_age"] = np.where(first >= 0, np.log1p(np.maximum(ts - first, 0) / 86400.0), -1.0).astype(np.float32)
        x["pop_all"] = np.log1p(self.store.popularity[flat]).astype(np.float32)
        x["pop_recent"] = np.log1p(self.recent_counts(flat, ts)).astype(np.float32)
        return x

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sp.save_npz(out / "cooc.npz", self.cooc, compressed=False)
        keys = np.sort(np.concatenate([self.event_keys, self.live_keys])) if len(self.live_keys) else self.event_keys
        np.savez(out / "ranker_tables.npz", item_embeddings=self.item_embeddings, item_first_ts=self.item_first_ts,
                 event_keys=keys)
        if self.ease is not None:
            np.save(out / "ease.npy", self.ease)
        else:
            (out / "ease.npy").unlink(missing_ok=True)  # an older state's table must not be read back
        (out / "ranker_features.json").write_text(json.dumps({"recent_seconds": self.recent_seconds,
                                                             "ease": self.ease is not None}))

    @classmethod
    def load(cls, out_dir: str | Path, store: FeatureStore) -> "CandidateFeatures":
        d = Path(out_dir)
        z = np.load(d / "ranker_tables.npz")
        meta = json.loads((d / "ranker_features.json").read_text())
        has_ease = meta.get("ease", (d / "ease.npy").exists())  # as saved (older runs did not say: the file)
        if has_ease and not (d / "ease.npy").exists():  # the ranker learned from EASE scores: no silent swap
            raise FileNotFoundError(f"{d / 'ease.npy'} is missing (the ranker was trained on EASE scores; without "
                                    "them every list would change): restore it, or refresh/rebuild the run's state")
        ease = np.load(d / "ease.npy") if has_ease else None
        return cls(store, z["item_embeddings"], sp.load_npz(d / "cooc.npz").tocsr(), ease, z["item_first_ts"],
                   z["event_keys"], meta["recent_seconds"] / 86400)
