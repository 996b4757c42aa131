"""GPU paths: run only where CUDA is visible (skipped elsewhere, see conftest).

Each test asserts that the work really ran on the GPU (CUDA accelerator, bf16, tensors on the
device) and that it gives the CPU's answers. ``bench/gpu_check.py`` runs these with ``-m gpu`` on a
lent GPU machine, which has no FAISS GPU build: the FAISS test skips there, saying so.
"""

import numpy as np
import pytest
from lightning.pytorch.accelerators import CUDAAccelerator

from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.pipeline import Request
from retrieval.exact import ExactIndex
from retrieval.index import IndexConfig, build_index, load_index, search
from inference.models import TorchModel
from retrieval.trainer import make_trainer
from tests.conftest import TINY_DATA, compose_cfg
from train import train

# gpu_min_items=0: the tiny catalog on the GPU all the same (served catalogs this small stay on the CPU)
GPU_DATA = [o for o in TINY_DATA if not o.startswith("trainer=")] + ["trainer=default", "index=exact_torch",
                                                                   "index.gpu_min_items=0"]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row's ids found in the other's row (floating-point near-ties may swap)."""
    return float(np.mean([len(np.intersect1d(x, y)) / len(x) for x, y in zip(a, b)]))


@pytest.mark.gpu
def test_training_runs_on_the_gpu_in_bf16(tmp_path):
    cfg = compose_cfg(tmp_path, GPU_DATA + ["stage=retrieval", "trainer.max_epochs=1", "retrieval.refit.mode=none"])
    trainer = make_trainer(cfg.trainer, None, [], tmp_path, False)
    assert isinstance(trainer.accelerator, CUDAAccelerator)
    assert trainer.precision == "bf16-mixed"
    m = train(cfg)
    assert m["two_tower/test/recall@50"] > 0
    index, _ = load_index(tmp_path / "run" / "artifacts" / "items.faiss")
    assert isinstance(index, ExactIndex) and index.items.is_cuda  # exact_torch picks the GPU when visible


@pytest.mark.gpu
def test_exact_index_on_the_gpu_equals_the_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50_000, 64)).astype(np.float32)
    q = rng.standard_normal((256, 64)).astype(np.float32)
    gpu = build_index(x, IndexConfig(backend="torch", use_gpu=True, gpu_min_items=0))
    assert gpu.device.type == "cuda" and gpu.items.is_cuda
    s_gpu, i_gpu = search(gpu, q, 100)
    s_cpu, i_cpu = search(ExactIndex(x, "cpu"), q, 100)
    assert overlap(i_gpu, i_cpu) > 0.999
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_pipeline_on_the_gpu_answers_like_the_cpu(tmp_path):
    train(compose_cfg(tmp_path, GPU_DATA + ["stage=ranking", "ranking.max_epochs=2", "eval.cold_users=50",
                                           "trainer.max_epochs=1", "retrieval.refit.mode=none"]))
    art = tmp_path / "run" / "artifacts"
    cpu = load_pipeline(art)
    cpu.retriever.index = ExactIndex(cpu.retriever.item_embeddings, "cpu")
    run = RunArtifacts(art)
    tower = TorchModel(run.load_towers(cpu.store).user_tower, "cuda")
    ranker = TorchModel(run.load_ranker("ranker", cpu.store), "cuda")
    assert next(ranker.module.parameters()).is_cuda and next(tower.module.parameters()).is_cuda
    gpu = load_pipeline(art, user_encoder=tower, rankers={"ranker": ranker})
    assert isinstance(gpu.retriever.index, ExactIndex) and gpu.retriever.index.items.is_cuda
    users = [str(u) for u in cpu.store.users.ids[:40]] + ["nobody-knows-me"]
    requests = [Request(u, 10, 1_700_600_000) for u in users]
    a, b = cpu.recommend(requests), gpu.recommend(requests)
    assert [r.route for r in a] == [r.route for r in b]
    same = np.mean([x.item_ids == y.item_ids for x, y in zip(a, b)])
    assert same >= 0.9, f"only {same:.0%} of GPU lists equal the CPU's"  # bf16-free fp32: near-ties only


@pytest.mark.gpu
def test_faiss_gpu_index_matches_cpu():
    faiss = pytest.importorskip("faiss", reason="no FAISS here (the lent GPU machine has none)")
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss without GPU support (faiss-cpu); install the [gpu] extra for faiss-gpu")
    x = np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32)
    cpu = build_index(x, IndexConfig(use_gpu=False))
    gpu = build_index(x, IndexConfig(use_gpu=True, gpu_min_items=0))
    names, inner = [], gpu
    while inner is not None:  # the GPU index may sit inside the id map / replicas wrapper
        names.append(type(inner).__name__)
        inner = faiss.downcast_index(inner.index) if hasattr(inner, "index") else None
    assert any("Gpu" in n for n in names), names
    assert overlap(search(cpu, x[:50], 10)[1], search(gpu, x[:50], 10)[1]) > 0.99
