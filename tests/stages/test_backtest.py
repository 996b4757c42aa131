"""The backtest builds the product from the data before a cut and scores the served answers after it."""

import json

import pandas as pd

from pipeline.artifacts import RunArtifacts
from tests.conftest import TINY_DATA, compose_cfg
from train import train


def test_backtest_global_cut_has_no_leakage_and_scores_every_model(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + ["stage=backtest", "eval.backtest.protocols=[temporal_global]",
                                              "split=temporal_global", "ranking.max_epochs=2", "eval.cold_users=20"])
    m = train(cfg)
    for model in ("pipeline", "ease", "itemknn", "mostpop"):
        assert 0 <= m[f"{model}/backtest_temporal_global/ndcg@10"] <= 1, model
    assert m["ease/backtest_temporal_global/ndcg@10"] > m["mostpop/backtest_temporal_global/ndcg@10"]
    assert 0 <= m["pipeline/backtest_temporal_global/cold_user_share"] <= 1
    inner = RunArtifacts(tmp_path / "run" / "backtest_temporal_global")
    art = inner.manifest()["artifacts"]
    served = pd.read_parquet(inner.path("interactions"))
    # what the product was built from ends before the cut: every "after" interaction is later
    from features.prepare import load_dataset

    everything = load_dataset(cfg.data).interactions
    cut = served["timestamp"].max()
    assert len(served) < len(everything) and (everything["timestamp"] > cut).any()
    for name, entry in art.items():
        if entry["saw"]:
            assert entry["saw"]["last_timestamp"] <= cut, name
    # the ranker's window (inner validation) is later than everything its retriever was trained on
    assert art["two_tower"]["saw"]["last_timestamp"] < art["ranker"]["saw"]["first_timestamp"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Backtest (as served)" in report and "pipeline / EASE NDCG@10" in report
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["pipeline/backtest_temporal_global/hr@10"] >= 0
