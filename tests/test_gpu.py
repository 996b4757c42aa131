"""GPU paths: run only where CUDA is visible (skipped elsewhere, see conftest)."""

import numpy as np
import pytest
import torch

from retrieval.index import IndexConfig, build_index, search
from retrieval.trainer import resolve_precision
from tests.conftest import TINY_DATA, compose_cfg
from train import train


@pytest.mark.gpu
def test_training_picks_gpu_and_bf16(tmp_path):
    assert resolve_precision("auto") in ("bf16-mixed", "32-true")
    m = train(compose_cfg(tmp_path, TINY_DATA + ["stage=retrieval", "trainer=default", "trainer.max_epochs=1"]))
    assert m["two_tower/test/recall@50"] > 0


@pytest.mark.gpu
def test_faiss_gpu_index_matches_cpu():
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-cpu installed here; install the [gpu] extra for faiss-gpu")
    x = np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32)
    cpu = build_index(x, IndexConfig(use_gpu=False))
    gpu = build_index(x, IndexConfig(use_gpu=True))
    assert "Gpu" in type(gpu).__name__ or torch.cuda.is_available()
    np.testing.assert_array_equal(search(cpu, x[:50], 10)[1], search(gpu, x[:50], 10)[1])
