"""pipeline.item_vectors.ItemVectors: vectors kept per item, computed once, shared between threads."""

import threading
import time

import numpy as np

from pipeline.item_vectors import ItemVectors


class _Store:
    """What ItemVectors reads of a feature store: the items, their attribute table, the caches to tell."""

    def __init__(self, n: int):
        self.item_table = {"genre": np.arange(n, dtype=np.int64) % 7, "year": np.arange(n, dtype=np.int64)}
        self.items = list(range(n))
        self.item_caches = set()

    def grow(self, extra: int) -> None:
        n = len(self.items)
        self.item_table = {"genre": np.arange(n + extra, dtype=np.int64) % 7,
                           "year": np.arange(n + extra, dtype=np.int64)}
        self.items = list(range(n + extra))


class _Ranker:
    """A content encoder that takes its time (releasing the GIL, as onnxruntime does) and counts its rows."""

    content_inputs = ("genre", "year")

    def __init__(self):
        self.rows = 0

    def item_vectors(self, x):
        time.sleep(0.002)
        self.rows += len(x["year"])
        return np.stack([x["genre"] * 1.0, x["year"] * 2.0, x["year"] + 0.5], axis=1).astype(np.float32)


def _expected(items):
    return np.stack([items % 7 * 1.0, items * 2.0, items + 0.5], axis=1).astype(np.float32)


def test_vectors_are_computed_once_and_kept():
    store, ranker = _Store(50), _Ranker()
    vectors = ItemVectors(store, ranker)
    items = np.array([3, 3, 9, 0])
    np.testing.assert_array_equal(vectors.rows(items), _expected(items))
    assert ranker.rows == 3  # each item once, the repeat included
    vectors.rows(items)
    assert ranker.rows == 3
    vectors.forget(np.array([9, 999]))  # an index past the table is ignored
    np.testing.assert_array_equal(vectors.rows(items), _expected(items))
    assert ranker.rows == 4
    assert vectors.fill() == 47 and ranker.rows == 51


def test_threads_share_one_table_while_the_catalog_grows():
    """Threads asking at once (the first ones find no table yet), the catalog growing meanwhile: every
    answer is each item's own vector and every kept row is right. Under CPython's GIL this also passes
    without the lock (the one harmful race, two first computations replacing each other's table, needs
    a thread switch between two lines): it holds the answers under threads, not the lock itself."""
    store, ranker = _Store(200), _Ranker()
    vectors = ItemVectors(store, ranker)
    start, errors = threading.Barrier(9), []

    def ask(seed: int) -> None:
        rng = np.random.default_rng(seed)
        start.wait()
        for _ in range(15):
            items = rng.integers(0, len(store.items), 12)
            got = vectors.rows(items)
            if not np.array_equal(got, _expected(items)):
                errors.append((seed, items))

    threads = [threading.Thread(target=ask, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    start.wait()
    for _ in range(5):
        time.sleep(0.005)
        store.grow(40)
    for t in threads:
        t.join()
    assert not errors
    n = len(store.items)
    kept = np.flatnonzero(vectors.have[:n])
    np.testing.assert_array_equal(vectors.table[kept], _expected(kept))
