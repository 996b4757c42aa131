"""FAISS in one place: build, save, load and search an inner-product index of item embeddings.

Indexes are made with ``faiss.index_factory`` strings (``Flat`` for exact search on small
catalogs; ``IVF4096,Flat``, ``HNSW32``, ``IVF4096,PQ32`` ... for large ones). FAISS ids are
catalog item indices (``add_with_ids``), so results map straight back to item ids. A GPU copy is
used when faiss sees a GPU (and the index type supports it); saving always writes the CPU form.

``backend: torch`` (``configs/index/exact_torch.yaml``) builds :class:`retrieval.exact.ExactIndex`
instead: exact search by a torch matrix product, on the GPU when one is visible, with no FAISS at
all. Its artifact keeps the same names (``items.faiss`` holds the embeddings in ``.npy`` form,
``items.faiss.json`` says ``backend: torch``), so loading, export and serving need no change.
FAISS is imported only where a FAISS index is built, read or written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.exact import ExactIndex, resolve_device

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)
# faiss logs its loader's probe at INFO on every import (four lines, one of them "Could not load
# library with AVX2 support", printed by every command that logs at INFO). It is noise: faiss-cpu
# 1.15 is one library with dynamic dispatch (`faiss.get_compile_options()`: "OPTIMIZE DD AVX2").
logging.getLogger("faiss.loader").setLevel(logging.WARNING)


@dataclass
class IndexConfig:
    """How to build and query an index (``configs/index/*.yaml``)."""

    factory: str = "Flat"
    nprobe: int | None = None  # IVF: lists visited per query
    ef_search: int | None = None  # HNSW: search breadth
    k_factor_rf: int | None = None  # refine (",RFlat"): re-rank k * k_factor_rf approximate hits exactly
    train_size: int = 200_000  # vectors sampled to train IVF / PQ
    use_gpu: bool = True  # only when faiss (or torch, for backend torch) sees a GPU
    # ... and the catalog has this many items: below it the CPU answers one query sooner (docs/gpu.md)
    gpu_min_items: int = 200_000
    backend: str = "faiss"  # faiss | torch (exact matrix product + top-k, retrieval/exact.py)


BACKENDS = ("faiss", "torch")


def check_config(cfg: IndexConfig) -> None:
    """Reject a backend / factory pair that cannot be built, naming the fix."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"index.backend={cfg.backend!r} is unknown; known: {', '.join(BACKENDS)} (configs/index)")
    if isinstance(cfg.gpu_min_items, bool) or not isinstance(cfg.gpu_min_items, int) or cfg.gpu_min_items < 0:
        raise ValueError(f"index.gpu_min_items={cfg.gpu_min_items!r} must be a whole number >= 0 (configs/index; "
                         f"0: any catalog on the GPU when one is visible)")
    if cfg.backend == "torch" and cfg.factory != "Flat":
        raise ValueError(f"index.backend=torch is exact search and takes index.factory=Flat, got {cfg.factory!r}; "
                         f"use backend=faiss for approximate indexes")


def _apply_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    import faiss

    params = []
    if cfg.nprobe is not None:
        params.append(f"nprobe={cfg.nprobe}")
    if cfg.ef_search is not None:
        params.append(f"efSearch={cfg.ef_search}")
    if cfg.k_factor_rf is not None:
        params.append(f"k_factor_rf={cfg.k_factor_rf}")
    if params:
        inner = index
        while isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):  # parameters live on the wrapped index
            inner = faiss.downcast_index(inner.index)
        faiss.ParameterSpace().set_index_parameters(inner, ",".join(params))


def _maybe_gpu(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    import faiss

    if not cfg.use_gpu or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return index
    if index.ntotal < cfg.gpu_min_items:
        log.info("catalog of %d items < index.gpu_min_items=%d: keeping the CPU index", index.ntotal, cfg.gpu_min_items)
        return index
    if "HNSW" in cfg.factory:
        log.info("HNSW has no GPU implementation in faiss; keeping the CPU index")
        return index
    log.info("faiss sees %d GPU(s): moving the index to GPU", faiss.get_num_gpus())
    return faiss.index_cpu_to_all_gpus(index)


def build_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int = 0) -> faiss.Index | ExactIndex:
    """Build an inner-product index over (N, D) embeddings; FAISS id i = catalog item i."""
    check_config(cfg)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    if cfg.backend == "torch":
        return ExactIndex(x, resolve_device(cfg.use_gpu, len(x), cfg.gpu_min_items))
    import faiss

    try:
        base = faiss.index_factory(x.shape[1], cfg.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"bad faiss index_factory string {cfg.factory!r} (configs/index): {e}") from e
    # IVF indexes take ids natively; everything else (Flat, HNSW, IVF + refine) is wrapped.
    index = base if isinstance(base, faiss.IndexIVF) or cfg.factory.startswith("IDMap") else faiss.IndexIDMap2(base)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(len(x), size=min(cfg.train_size, len(x)), replace=False)]
        index.train(sample)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    _apply_search_params(index, cfg)
    return _maybe_gpu(index, cfg)


def search(index: faiss.Index | ExactIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product. -> scores (B, k) float32, item indices (B, k) int64 (-1 = none)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(q, min(k, index.ntotal))


def upsert_vectors(index: faiss.Index | ExactIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Put (B, D) ``vectors`` into the index under catalog ids ``ids``: an id the index holds has its
    vector replaced (removed, then added), a new id is added. No rebuild: O(B) for ``IDMap2(Flat)``
    / IVF adds (an IVF index assigns new vectors to its trained lists); removal is O(N) for a Flat
    index (it compacts its storage) and O(list) for IVF. HNSW cannot remove: replacing a vector there
    raises ValueError (the caller keeps the old vector until a rebuild).

    Raises:
        ValueError: shapes disagree, or the index cannot replace a vector.
    """
    ids = np.asarray(ids, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(ids) or x.shape[1] != index.d:
        raise ValueError(f"vectors {x.shape} must be ({len(ids)}, {index.d})")
    if not len(ids):
        return
    if isinstance(index, ExactIndex):
        index.upsert(ids, x)
        return
    import faiss

    old = ids[ids < index.ntotal]  # every catalog item is in the index: ids 0..ntotal-1 are held
    if len(old):
        try:
            index.remove_ids(faiss.IDSelectorBatch(old))
        except RuntimeError as e:
            raise ValueError(f"this {type(index).__name__} index cannot replace vectors ({e}); rebuild it to "
                             "re-embed items, or serve a Flat / IVF index") from e
    index.add_with_ids(x, ids)


def save_index(index: faiss.Index | ExactIndex, cfg: IndexConfig, path: str | Path) -> None:
    """Write ``<path>`` (faiss, or ``.npy`` embeddings for backend torch) and ``<path>.json`` (parameters)."""
    path = Path(path)
    if isinstance(index, ExactIndex):
        with path.open("wb") as f:  # np.save on a path would append ".npy"
            np.save(f, index.embeddings())
        Path(str(path) + ".json").write_text(json.dumps(asdict(cfg)))
        return
    import faiss

    cpu = faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__ else index
    faiss.write_index(cpu, str(path))
    Path(str(path) + ".json").write_text(json.dumps(asdict(cfg)))


def load_index(path: str | Path, use_gpu: bool | None = None) -> tuple[faiss.Index | ExactIndex, IndexConfig]:
    """Read an index saved by :func:`save_index`, restoring its search parameters."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no FAISS index at {path}; run `python train.py stage=retrieval` first")
    cfg = IndexConfig(**json.loads(Path(str(path) + ".json").read_text()))
    if use_gpu is not None:
        cfg.use_gpu = use_gpu
    check_config(cfg)
    if cfg.backend == "torch":
        items = np.load(path)
        return ExactIndex(items, resolve_device(cfg.use_gpu, len(items), cfg.gpu_min_items)), cfg
    import faiss

    index = faiss.read_index(str(path))
    _apply_search_params(index, cfg)
    return _maybe_gpu(index, cfg), cfg
