"""retrieval/exact.py: exact torch search equals FAISS Flat, round-trips as an artifact, needs no FAISS."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import scipy.sparse as sp

from retrieval.exact import ExactIndex, resolve_device
from retrieval.index import IndexConfig, build_index, load_index, save_index, search
from retrieval.retriever import Retriever
from tests.conftest import ROOT, TINY_DATA, compose_cfg

N, D = 3000, 24
TORCH = IndexConfig(factory="Flat", use_gpu=False, backend="torch")
FLAT = IndexConfig(factory="Flat", use_gpu=False)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)  # no ties in the scores


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((300, D)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 10, 200, N])
def test_exact_torch_equals_faiss_flat(items, queries, k):
    exact, flat = build_index(items, TORCH), build_index(items, FLAT)
    assert isinstance(exact, ExactIndex) and exact.device.type == "cpu" and exact.ntotal == N
    s1, i1 = search(exact, queries, k)
    s2, i2 = search(flat, queries, k + 1)  # one more: is the k-th a near-tie with the (k+1)-th?
    assert s1.dtype == np.float32 and i1.dtype == np.int64 and i1.shape == (len(queries), k)
    np.testing.assert_allclose(s1, s2[:, :k], rtol=1e-5, atol=1e-5)  # the same score at every rank
    # Ids agree at every rank whose score is clear of its neighbours' (float sums in another order
    # may swap two items whose scores differ in the last bits).
    gaps = np.abs(np.diff(s2, axis=1, prepend=np.inf, append=-np.inf))  # (B, k + 2)
    clear = np.minimum(gaps[:, :-1], gaps[:, 1:])[:, :k] > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(i1[clear], i2[:, :k][clear])
    assert (np.diff(s1, axis=1) <= 0).all()  # best first


def test_query_batches_are_split_to_bound_memory(items, queries):
    small = ExactIndex(items, "cpu", max_scores=N * 7)  # 7 queries per product: 300 queries in 43 steps
    whole = ExactIndex(items, "cpu")
    np.testing.assert_array_equal(small.search(queries, 50)[1], whole.search(queries, 50)[1])
    s, i = whole.search(queries[:0], 5)
    assert s.shape == i.shape == (0, 5)


def test_search_clamps_k_to_the_catalog_like_faiss(items, queries):
    s, i = search(build_index(items[:7], TORCH), queries[:3], 50)
    assert i.shape == (3, 7) and sorted(i[0]) == list(range(7))


def test_save_load_round_trip(items, queries, tmp_path):
    index = build_index(items, TORCH)
    save_index(index, TORCH, tmp_path / "items.faiss")
    loaded, cfg = load_index(tmp_path / "items.faiss", use_gpu=False)
    assert asdict(cfg) == asdict(TORCH) and isinstance(loaded, ExactIndex)
    for a, b in zip(search(loaded, queries, 20), search(index, queries, 20)):
        np.testing.assert_array_equal(a, b)


def test_retriever_excludes_seen_items_the_same_with_either_index(items, queries):
    seen = sp.random(len(queries), N, density=0.01, format="csr", random_state=3)
    answers = [Retriever(lambda x: x, build_index(items, c), None, items).search(queries, 30, seen)
               for c in (TORCH, FLAT)]
    np.testing.assert_array_equal(answers[0][1], answers[1][1])
    hit = seen[np.repeat(np.arange(len(queries)), 30), answers[0][1].ravel()]
    assert not np.asarray(hit).any()


def test_no_gpu_visible_falls_back_to_cpu():
    import torch

    assert resolve_device(False).type == "cpu"
    assert resolve_device(True).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_small_catalogs_stay_on_the_cpu_even_with_a_gpu(monkeypatch):
    """On an H200 the GPU added ~1 ms to a request over 5,000 items (docs/gpu.md): below
    index.gpu_min_items the exact index and FAISS keep the CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(True, 5_000, 200_000).type == "cpu"
    assert resolve_device(True, 1_000_000, 200_000).type == "cuda"
    assert resolve_device(True).type == "cuda"  # no size given: the caller decides
    faiss = pytest.importorskip("faiss")
    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda ix: moved.append(ix) or ix, raising=False)
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    build_index(x, IndexConfig(use_gpu=True))  # default threshold: 500 items stay on the CPU
    assert moved == []
    build_index(x, IndexConfig(use_gpu=True, gpu_min_items=100))
    assert len(moved) == 1


@pytest.mark.parametrize("cfg, message", [
    (IndexConfig(backend="annoy"), r"index.backend='annoy' is unknown; known: faiss, torch"),
    (IndexConfig(gpu_min_items=-1), r"index.gpu_min_items=-1 must be a whole number >= 0"),
    (IndexConfig(gpu_min_items=None), r"index.gpu_min_items=None must be a whole number >= 0"),
    (IndexConfig(factory="IVF16,Flat", backend="torch"), r"takes index.factory=Flat, got 'IVF16,Flat'"),
])
def test_bad_backend_config_names_the_fix(items, cfg, message):
    with pytest.raises(ValueError, match=message):
        build_index(items, cfg)


@pytest.mark.parametrize("call, message", [
    (lambda x, q: ExactIndex(x[0], "cpu"), r"non-empty \(N, D\) array, got shape \(24,\)"),
    (lambda x, q: ExactIndex(x, "cpu", max_scores=0), r"max_scores=0 must be >= 1"),
    (lambda x, q: ExactIndex(x, "cpu").search(q[:, :5], 3), r"queries must be \(B, 24\), got shape \(300, 5\)"),
    (lambda x, q: ExactIndex(x, "cpu").search(q, 0), r"k=0 must be in 1..3000"),
])
def test_bad_inputs_name_the_value(items, queries, call, message):
    with pytest.raises(ValueError, match=message):
        call(items, queries)


def test_exact_path_imports_and_runs_without_faiss():
    code = (
        "import sys; sys.modules['faiss'] = None\n"  # any `import faiss` now raises ImportError
        "import numpy as np\n"
        "import retrieval.index, retrieval.retriever, pipeline.artifacts\n"
        "from retrieval.index import IndexConfig, build_index, search\n"
        "x = np.eye(4, dtype=np.float32)\n"
        "print(search(build_index(x, IndexConfig(backend='torch', use_gpu=False)), x[:2], 1)[1].ravel().tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1]"


def test_retrieval_stage_with_exact_torch_index(tmp_path):
    from train import train

    m = train(compose_cfg(tmp_path, TINY_DATA + ["stage=retrieval", "index=exact_torch", "trainer.max_epochs=1",
                                                "retrieval.refit.mode=none"]))
    assert m["two_tower/test/recall@50"] > 0
    index, cfg = load_index(tmp_path / "run" / "artifacts" / "items.faiss")
    assert cfg.backend == "torch" and isinstance(index, ExactIndex)
    np.testing.assert_array_equal(index.embeddings(), np.load(tmp_path / "run" / "artifacts" / "item_embeddings.npy"))
