"""retrieval/index.py: build -> search -> save -> load round trips, ids, search parameters, errors."""

from __future__ import annotations

from dataclasses import asdict

import faiss
import numpy as np
import pytest

from retrieval.index import IndexConfig, build_index, load_index, save_index, search

N, D, K = 2000, 16, 10
CONFIGS = {
    "flat": IndexConfig(factory="Flat", use_gpu=False),
    "ivf": IndexConfig(factory="IVF16,Flat", nprobe=4, use_gpu=False),
    "hnsw": IndexConfig(factory="HNSW16", ef_search=48, use_gpu=False),
    "ivf_refine": IndexConfig(factory="IVF16,PQ4x4fs,RFlat", nprobe=8, k_factor_rf=16, use_gpu=False),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread: tiny indexes gain nothing from more, and a busy CI core stalls every barrier."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # (N, D) unit rows: each item is its own top-1


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((50, D)).astype(np.float32)


@pytest.fixture(scope="module")
def built(items) -> dict[str, faiss.Index]:
    """Each config built once for the module (searching does not change an index)."""
    return {name: build_index(items, cfg, seed=0) for name, cfg in CONFIGS.items()}


def search_params(index: faiss.Index) -> dict[str, int]:
    """nprobe / efSearch / k_factor_rf as set inside the index, whatever wraps it."""
    out = {}
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)
    if isinstance(inner, faiss.IndexRefine):
        out["k_factor_rf"] = int(inner.k_factor)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        out["nprobe"] = ivf.nprobe
    if isinstance(inner, faiss.IndexHNSW):
        out["efSearch"] = inner.hnsw.efSearch
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_load_round_trip_gives_identical_results(name, built, queries, tmp_path):
    cfg, index = CONFIGS[name], built[name]
    assert index.ntotal == N
    scores, ids = search(index, queries, K)
    assert scores.shape == ids.shape == (len(queries), K)
    assert scores.dtype == np.float32 and ids.dtype == np.int64

    save_index(index, cfg, tmp_path / "items.faiss")
    loaded, loaded_cfg = load_index(tmp_path / "items.faiss", use_gpu=False)
    assert asdict(loaded_cfg) == asdict(cfg)
    scores2, ids2 = search(loaded, queries, K)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(scores2, scores)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_faiss_ids_are_catalog_indices(name, items, built):
    index = built[name]
    probe = np.arange(0, N, 97)
    scores, ids = search(index, items[probe], K)
    assert (ids >= 0).all() and (ids < N).all()
    # Each score is the inner product with the catalog row its id names.
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[ids], items[probe]), rtol=1e-5, atol=1e-5)
    if name == "flat":  # exact: a unit vector's best match is itself
        np.testing.assert_array_equal(ids[:, 0], probe)


def test_ivf_visiting_every_list_matches_exact_search(items, queries, built):
    _, exact = search(built["flat"], queries, K)
    _, ivf = search(build_index(items, IndexConfig(factory="IVF16,Flat", nprobe=16, use_gpu=False)), queries, K)
    np.testing.assert_array_equal(ivf, exact)


@pytest.mark.parametrize("name, expected", [
    ("ivf", {"nprobe": 4}), ("hnsw", {"efSearch": 48}), ("flat", {}), ("ivf_refine", {"nprobe": 8, "k_factor_rf": 16}),
])
def test_search_params_are_set_and_survive_save_load(name, expected, built, tmp_path):
    index = built[name]
    assert search_params(index) == expected
    save_index(index, CONFIGS[name], tmp_path / "items.faiss")
    loaded, _ = load_index(tmp_path / "items.faiss", use_gpu=False)
    assert search_params(loaded) == expected


def test_k_larger_than_catalog_returns_every_item(items):
    scores, ids = search(build_index(items[:5], CONFIGS["flat"]), items[:2], 50)
    assert ids.shape == (2, 5)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]


def test_bad_factory_string_raises_value_error_naming_it(items):
    with pytest.raises(ValueError, match=r"bad faiss index_factory string 'IVF16,Flaat'"):
        build_index(items, IndexConfig(factory="IVF16,Flaat", use_gpu=False))


@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_raises(k, items, built):
    with pytest.raises(ValueError, match=rf"k must be positive, got {k}"):
        search(built["flat"], items[:2], k)


@pytest.mark.parametrize("bad", [np.empty((0, D), np.float32), np.ones(D, np.float32)], ids=["empty", "1-d"])
def test_empty_or_flat_embeddings_raise(bad):
    with pytest.raises(ValueError, match=r"embeddings must be a non-empty \(N, D\) array"):
        build_index(bad, CONFIGS["flat"])


def test_load_missing_index_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FAISS index at"):
        load_index(tmp_path / "missing.faiss")


def test_ivf_with_refine_builds(items, queries, built):
    index = build_index(items, IndexConfig(factory="IVF16,PQ4x4fs,RFlat", nprobe=16, k_factor_rf=64, use_gpu=False))
    _, ids = search(index, queries, K)
    _, exact = search(built["flat"], queries, K)
    assert (ids == exact).mean() > 0.9


def test_explicit_idmap_prefix_is_not_wrapped_twice(items, queries, built):
    index = build_index(items, IndexConfig(factory="IDMap2,IVF16,Flat", nprobe=16, use_gpu=False))
    assert isinstance(index, faiss.IndexIDMap2)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexIVFFlat)
    np.testing.assert_array_equal(search(index, queries, K)[1], search(built["flat"], queries, K)[1])
