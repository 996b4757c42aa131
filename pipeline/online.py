"""Live events into a loaded pipeline: the next answer knows what the user just did.

:class:`OnlineState` applies accepted interaction events (already validated: known items, finite
timestamps, see :mod:`events.checks`) to the pipeline's feature store and ranker features, in
memory, in place, in the order of their timestamps:

- the user's recent items (the user tower's history and the co-occurrence candidates' seed):
  the item is appended when the event is at least as new as the user's last one; an event older
  than that (late) is not put into the sequence (its position among the stored items is unknown:
  the store keeps their order, not their times) but counts everywhere else;
- the seen set (never recommended again): ``FeatureStore.seen_delta``, no CSR rebuild per event;
- the last timestamp (``since_last``), overall popularity (the cold candidates' most popular items,
  the rules' popularity backfill, ``pop_all``), recent popularity (``pop_recent``:
  ``CandidateFeatures.live_keys``) and an item's first-seen time;
- an unknown user becomes known (the history path), with unknown attributes.

What it does not change: the models, the FAISS index, the co-occurrence / EASE tables (a
``recsys-refresh`` or a retrain rebuilds those from the event log). The state lives in this
process; ``triton_repo/recommend`` keeps it in step with the shared durable event log before
each request, so every instance (and every server on the host) sees every event; with Redis
configured it reads the shared Redis Stream instead (:mod:`events.redis_bus`), so every server on
every host applies the same events with this same code.

Cost per batch: O(batch) for the per-user state, plus, when a batch brings new users, one copy
of the per-user arrays (O(users); amortised by the batch).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ranking.rules import member

SEEN_COMPACT = 50_000  # live seen entries kept next to the CSR before one merge


class OnlineState:
    """Applies interaction events to ``pipeline``'s store and ranker features.

    Args:
        pipeline: a loaded :class:`pipeline.pipeline.Pipeline` (its store and features are changed).
    """

    def __init__(self, pipeline):
        self.store, self.features = pipeline.store, pipeline.features
        self.catalog = getattr(pipeline, "catalog", None)  # the rules' view: its own copy of popularity
        self.late_users: set[int] = set()  # users of the last batch with an event older than their latest
        self._delta_entries = sum(len(v) for v in self.store.seen_delta.values())

    @classmethod
    def over(cls, store, features) -> "OnlineState":
        """The same over a bare feature store and its ranker features (``recsys-refresh``)."""
        return cls(SimpleNamespace(store=store, features=features))

    def apply(self, events) -> dict[str, int]:
        """Apply a batch of events (columns user_id, item_id, timestamp, as a DataFrame or a dict of
        arrays; items known to the catalog).

        Returns:
            counts: applied, late, new_users, unknown_items (rows skipped: the catalog lacks the item).
        """
        self.late_users = set()
        if not len(events["user_id"]):
            return {"applied": 0, "late": 0, "new_users": 0, "unknown_items": 0}
        # numpy from here on: pandas costs milliseconds per call on the 1-2 events of a live batch
        user_ids = np.asarray(events["user_id"], dtype=object).astype(str)
        item_ids = np.asarray(events["item_id"], dtype=object).astype(str)
        ts = np.asarray(events["timestamp"], dtype=np.float64).astype(np.int64)
        items = self.store.items.lookup(item_ids)
        order = np.lexsort((items, ts))  # by time, ties by item index: the order a rebuild gives
        user_ids, item_ids, ts, items = user_ids[order], item_ids[order], ts[order], items[order]
        known = items >= 0
        unknown = int((~known).sum())
        user_ids, items, ts = user_ids[known], items[known], ts[known]
        new_users = self.store.add_users(user_ids)
        users = self.store.users.lookup(user_ids)
        late = 0
        recent, last = self.store.recent, self.store.last_ts
        for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist()):
            if t >= last[u]:
                recent[u, :-1] = recent[u, 1:]
                recent[u, -1] = i
                last[u] = t
            else:
                late += 1
                self.late_users.add(u)  # refresh rebuilds these users' sequences from their whole history
        fresh = self._add_seen(users, items)
        np.add.at(self.store.popularity, fresh, 1)
        self.store.popularity_changed()
        if self.catalog is not None and self.catalog.popularity is not self.store.popularity:
            # the popularity backfill reads the catalog's (float64) copy: without this it kept the
            # snapshot's counts until a refresh, and an upserted item stayed at 0 (found by a probe)
            np.add.at(self.catalog.popularity, fresh, 1)
        self.features.add_events(items, ts)
        return {"applied": int(len(items)), "late": late, "new_users": new_users, "unknown_items": unknown}

    def _add_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Add (user, item) pairs to the seen sets; returns the items of the pairs that were new
        (popularity counts users per item, as the store's build does: a repeat adds nothing)."""
        store = self.store
        by_user: dict[int, set] = {}
        for u, i in zip(users.tolist(), items.tolist()):
            by_user.setdefault(u, set()).add(i)
        fresh = []
        for u, its in by_user.items():
            new = np.fromiter(sorted(its), np.int64, len(its))
            new = new[~member(new, store.seen_items(u))]
            if len(new):
                fresh.append(new)
                old = store.seen_delta.get(u)
                store.seen_delta[u] = new if old is None else np.union1d(old, new)
                self._delta_entries += len(new)
        if self._delta_entries >= SEEN_COMPACT:
            store.compact_seen()
            self._delta_entries = 0
        return np.concatenate(fresh) if fresh else np.zeros(0, np.int64)
