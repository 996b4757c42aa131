"""Vectors added to / replaced in a built index while serving (retrieval.index.upsert_vectors)."""

import numpy as np
import pytest

from retrieval.index import IndexConfig, build_index, search, upsert_vectors


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("cfg", [IndexConfig(factory="Flat", use_gpu=False),
                                 IndexConfig(factory="Flat", backend="torch", use_gpu=False),
                                 IndexConfig(factory="IVF4,Flat", nprobe=4, use_gpu=False)])
def test_new_vectors_are_found_and_replaced_ones_move(cfg):
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(200, 16)))
    index = build_index(base, cfg)
    new = unit(rng.normal(size=(30, 16)))
    for start in range(0, 30, 7):  # several batches: the exact index grows its buffer in between
        chunk = np.arange(200 + start, 200 + min(start + 7, 30))
        upsert_vectors(index, chunk, new[chunk - 200])
    assert index.ntotal == 230
    _, top = search(index, new, 1)
    np.testing.assert_array_equal(top[:, 0], np.arange(200, 230))
    moved = unit(rng.normal(size=(2, 16)))
    upsert_vectors(index, np.array([5, 210]), moved)
    assert index.ntotal == 230
    scores, top = search(index, moved, 1)
    np.testing.assert_array_equal(top[:, 0], [5, 210])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    _, old = search(index, base[5:6], 3)
    assert 5 not in old[0, :1] or np.allclose(base[5], moved[0])  # the old vector is gone
    with pytest.raises(ValueError, match="vectors"):
        upsert_vectors(index, np.array([1, 2]), moved[:1])


def test_the_exact_index_takes_new_ids_only_in_catalog_order():
    index = build_index(unit(np.eye(4, 8) + 0.1), IndexConfig(factory="Flat", backend="torch", use_gpu=False))
    with pytest.raises(ValueError, match="continue the catalog from 4"):
        upsert_vectors(index, np.array([6]), unit(np.ones((1, 8))))
