"""Shared fixtures: the real Hydra config, shrunk to tiny synthetic data, CPU, no logger."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")

# Small enough for seconds on 2 cores, big enough to have structure to learn.
TINY_DATA = [
    "data=synthetic",
    "data.loader.n_users=300",
    "data.loader.n_items=400",
    "data.loader.n_interactions=6000",
    "data.loader.n_categories=8",
    "logger=csv",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "retrieval.batch_size=256",
    "retrieval.history_len=20",
    "retrieval.eval_ks=[10,50]",
    "eval.ks=[10,20]",
]


def compose_cfg(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose configs/train.yaml with overrides; outputs and caches go under tmp_path."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"paths.log_dir={tmp_path}/logs",
                f"paths.output_dir={tmp_path}/run",
                f"export.repository={tmp_path}/triton_repo",
                "progress=false",
                *(overrides or []),
            ],
        )
    with open_dict(cfg):
        cfg.overrides = list(overrides or [])
    OmegaConf.set_struct(cfg, False)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_cfg(tmp_path, TINY_DATA)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """Prepared tiny synthetic data, shared by tests that only read it."""
    from features.prepare import prepare

    return prepare(compose_cfg(tmp_path_factory.mktemp("prep"), TINY_DATA))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete trained run (retrieval + ranking) on tiny synthetic data; its run directory."""
    from train import train

    d = tmp_path_factory.mktemp("tiny_run")
    train(compose_cfg(d, TINY_DATA + ["stage=ranking", "ranking.max_epochs=3", "eval.cold_users=50"]))
    return d / "run"


@pytest.fixture(scope="session")
def tiny_student_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run with a distilled student (gate off), exported with the student as the default
    ranker; (run directory, repository)."""
    from export.repository import export_if_needed
    from train import train

    d = tmp_path_factory.mktemp("student_run")
    cfg = compose_cfg(d, TINY_DATA + ["stage=distill", "ranking.max_epochs=2", "eval.cold_users=50",
                                      "distill.max_epochs=2", "distill.gate.min_retained=0.0",
                                      "export.ranker=ranker_student"])
    train(cfg)
    export_if_needed(cfg, d / "run")
    return d / "run", d / "triton_repo"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is visible; everything else always runs."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_deployed_run(tmp_path_factory) -> Path:
    """A trained run whose served state was rebuilt from all interactions (stage=deploy)."""
    from train import train

    d = tmp_path_factory.mktemp("tiny_deployed")
    train(compose_cfg(d, TINY_DATA + ["stage=deploy", "ranking.max_epochs=2", "eval.cold_users=20",
                                      "retrieval.refit.mode=none"]))
    return d / "run"
