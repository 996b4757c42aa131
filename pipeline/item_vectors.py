"""Per-item vectors a ranker computes from item attributes alone, kept for the catalog.

A ranker's content group reads nothing but the candidate item's attributes, so its vector is the same
for an item in every request. A ranker exported with ``content.onnx`` (:class:`inference.models.OnnxCallable`
with ``content_inputs``) takes that vector in place of the attributes; :class:`ItemVectors` computes it
for an item the first time the item is a candidate and keeps it, so a request gathers 200 rows of a
table instead of running the content encoder on 200 rows (docs/serving.md, "Eighth pass").

The table follows the store: items added online (a longer catalog) are computed on first use, and
:meth:`features.store.FeatureStore.items_changed` (called by :class:`pipeline.catalog.OnlineCatalog` for
every updated item) drops the kept vectors of changed items. A loaded run's default ranker computes
every item's vector at load (:meth:`fill`, from ``RunArtifacts.load_pipeline``: ~1 s for 1M items), the
others on first use. The table
is (catalog items x H) float32 from its first row on (128 MB for 1M items at H = 32), copied when the
catalog outgrows it (by a quarter more each time). Safe to share between threads: computing, growing
and forgetting hold a lock; a request whose items are all kept only reads.
"""

from __future__ import annotations

import threading

import numpy as np

from features.store import FeatureStore


class ItemVectors:
    """One ranker's content vectors over one store's items.

    Args:
        store: the feature store whose ``item_table`` holds the attributes.
        ranker: a callable with ``content_inputs`` (attribute names) and ``item_vectors(inputs) -> (R, H)``.
    """

    def __init__(self, store: FeatureStore, ranker):
        self.store, self.ranker = store, ranker
        self.names = tuple(ranker.content_inputs)
        self.table = np.zeros((0, 0), np.float32)
        self.have = np.zeros(0, bool)  # whether an item's row in ``table`` is current
        self._lock = threading.Lock()  # around every write (a read of kept rows needs none)
        store.item_caches.add(self)

    def fill(self, chunk: int = 65_536) -> int:
        """Compute every item's vector not kept yet (at load: a request then only gathers, whatever the
        catalog size), ``chunk`` items per call. -> how many were computed."""
        n = len(self.store.items)
        kept = int(self.have[:n].sum())
        for start in range(0, n, chunk):
            items = np.arange(start, min(start + chunk, n))
            if len(self.have) < n or not self.have[items].all():
                self.rows(items)
        return n - kept

    def forget(self, items: np.ndarray) -> None:
        """Drop the kept vectors of these item indices (their attributes changed)."""
        items = np.asarray(items, np.int64)
        with self._lock:
            self.have[items[items < len(self.have)]] = False

    def rows(self, items: np.ndarray) -> np.ndarray:
        """(R, H) the vectors of catalog item indices ``items`` (R,), computed for those not kept yet."""
        if len(self.store.items) > len(self.have) or not self.have[items].all():
            with self._lock:  # another thread may be growing the table or computing the same items
                n = len(self.store.items)
                if n > len(self.have):  # the catalog grew: a quarter more room than it needs (amortised copies)
                    self._grow(n if not len(self.have) else n + n // 4)
                missing = ~self.have[items]
                if missing.any():
                    new = np.unique(items[missing])
                    vectors = np.asarray(self.ranker.item_vectors({name: self.store.item_table[name][new]
                                                                   for name in self.names}), np.float32)
                    if self.table.shape[1] != vectors.shape[1]:  # the first rows computed: the width is known now
                        self.table = np.zeros((len(self.have), vectors.shape[1]), np.float32)
                    self.table[new] = vectors
                    self.have[new] = True
        return self.table[items]

    def _grow(self, rows: int) -> None:
        have = np.zeros(rows, bool)
        have[: len(self.have)] = self.have
        table = np.zeros((rows, self.table.shape[1]), np.float32)
        table[: len(self.table)] = self.table
        self.have, self.table = have, table
