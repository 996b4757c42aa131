"""W&B offline runs hold the config, the final metrics and the run's artifacts; sweeps are summarised."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evaluation.wandb_offline import read_offline_run
from tests.conftest import TINY_DATA, compose_cfg
from tests.retrieval.test_ddp import _run_train

WANDB_OFF = [d for d in TINY_DATA if d != "logger=csv"] + ["logger=wandb"]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline W&B with every folder it writes under tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    return tmp_path


def _offline_runs(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "wandb").glob("offline-run-*"))


def test_offline_run_holds_config_metrics_and_artifacts(wandb_env):
    from train import train

    cfg = compose_cfg(wandb_env, WANDB_OFF + ["stage=retrieval", "retrieval.refit.mode=none", "trainer.max_epochs=1"])
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    (run_dir,) = _offline_runs(out)
    recorded = read_offline_run(run_dir)
    assert recorded["config"]["hydra"]["data"]["loader"]["n_users"] == 300
    assert recorded["config"]["hydra"]["stage"] == "retrieval"
    for key in ("two_tower/test/recall@50", "two_tower/valid/ndcg@10"):
        assert recorded["summary"][key] == pytest.approx(metrics[key])
    files = run_dir / "files"
    assert yaml.safe_load((files / "config.resolved.yaml").read_text())["stage"] == "retrieval"
    assert (files / "metrics.json").exists() and (files / "report.md").exists()
    assert list((files / "media" / "images" / "report").glob("ndcg_at_k*.png"))
    # The run's artifacts/ folder as one W&B artifact: towers, index, embeddings, feature store.
    run_id = run_dir.name.rsplit("-", 1)[-1]
    model = recorded["artifacts"][f"run-{run_id}-model"]
    assert model["type"] == "model"
    assert {"two_tower.pt", "items.faiss", "item_embeddings.npy", "manifest.json"} <= set(model["files"])
    assert any(f.startswith("store/") for f in model["files"])
    assert recorded["artifacts"][f"run-{run_id}-metrics"]["type"] == "run_table"
    assert not list(out.rglob("hybrid-recommender"))  # no stray Lightning checkpoint folder


def test_multirun_one_grouped_run_per_job_and_a_summary(wandb_env):
    logs = wandb_env / "logs"
    res = _run_train(["-m", "seed=1,2", "stage=baselines", *WANDB_OFF, "progress=false", f"paths.log_dir={logs}",
                      "optimized_metric=ease/valid/ndcg@10", "hydra.sweep.dir=" + str(logs / "multirun" / "sweep0")],
                     wandb_env, 300)
    assert res.returncode == 0, res.stdout[-4000:]
    sweep = logs / "multirun" / "sweep0"
    jobs = [sweep / "0", sweep / "1"]
    groups = set()
    for job in jobs:
        (run_dir,) = _offline_runs(job)  # one run per job: job 1 did not write into job 0's run
        recorded = read_offline_run(run_dir)
        groups.add(recorded["config"]["hydra"]["logger"]["wandb"]["group"])
        assert recorded["config"]["hydra"]["seed"] == int(job.name) + 1
        assert "ease/test/ndcg@10" in recorded["summary"]
    assert groups == {"sweep0"}
    table = (sweep / "sweep_summary.md").read_text()
    assert "seed=1" in table and "seed=2" in table and "ease/valid/ndcg@10" in table
    rows = (sweep / "sweep_summary.csv").read_text().splitlines()
    assert len(rows) == 3


def test_selection_metric_names_the_known_keys(tiny_cfg):
    from evaluation.tracking import selection_metric

    tiny_cfg.optimized_metric = "two_tower/valid/recall@50"
    assert selection_metric(tiny_cfg, {"two_tower/valid/recall@50": 0.25}) == 0.25
    tiny_cfg.optimized_metric = "two_tower/valid/recal@50"
    with pytest.raises(KeyError, match=r"recal@50.*two_tower/valid/recall@50"):
        selection_metric(tiny_cfg, {"two_tower/valid/recall@50": 0.25, "two_tower/test/recall@50": 0.2})
    tiny_cfg.optimized_metric = None
    assert selection_metric(tiny_cfg, {}) is None
