"""The ``deploy`` stage: rebuild what is served from every interaction given, after evaluation.

Evaluation (every stage before this one) answers the test split from train+valid and chooses every
hyperparameter there; those numbers are diagnostics. What is served must know everything up to
now: each user's latest interactions in their history and seen set, today's popularity, item
first-seen times, co-occurrence / EASE over all interactions. This stage rebuilds those
(:func:`pipeline.refresh.build_served_state`) over train+valid+test and overwrites the run's
``store``, ``ranker_features`` and ``interactions`` artifacts; the manifest records that they saw
all data while the towers and the ranker keep what they were trained on (the towers on train, the
ranker on the validation window: retraining them on everything is not done here, see README).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from evaluation.report import add_section
from features.prepare import Prepared
from pipeline.artifacts import RunArtifacts, data_seen
from pipeline.refresh import build_served_state, save_served_state
from ranking.model import build_ranker
from ranking.trainer import fit_ranker
from stages.ranking import RankingResult, training_lists
from stages.retrieval import RetrievalResult

log = logging.getLogger(__name__)


def all_interactions(data: Prepared) -> pd.DataFrame:
    """Every interaction of the split (train, valid and test), time-ordered per user."""
    parts = [data.split.train, data.split.valid, data.split.test]
    return pd.concat(parts, ignore_index=True).sort_values(["user_id", "timestamp", "item_id"], kind="stable",
                                                           ignore_index=True)


def retrain_ranker(data: Prepared, cfg: DictConfig, retrieval: RetrievalResult, ranking: RankingResult,
                   out_dir: Path, logger, progress: bool) -> dict:
    """The ranker trained again on the validation *and* test windows' lists, written as the run's ranker.

    Leakage-free: the towers that produce the candidates were trained on the train split only and
    never saw either window; each window's features use the history known before it. The
    hyperparameters (epochs by early stopping, residual weights per route) are chosen again on
    held-out lists split by user, as in the ranking stage. The student keeps being served: its
    inputs (the same towers) are unchanged; it was distilled from the validation-window teacher.
    """
    valid_lists = ranking.lists
    test_lists = training_lists(data, retrieval, cfg, ranking.ease_content, part="test")
    inputs = {k: np.concatenate([valid_lists[0][k], test_lists[0][k]]) for k in valid_lists[0]}
    labels, valid, groups = (np.concatenate([a, b]) for a, b in zip(valid_lists[1:4], test_lists[1:4]))
    weights = None  # exposure negatives: both windows' or none
    if valid_lists[4] is not None and test_lists[4] is not None:
        weights = np.concatenate([valid_lists[4], test_lists[4]])
    tower_dim = ranking.pipeline.retriever.item_embeddings.shape[1]
    torch.manual_seed(cfg.seed)
    ranker = build_ranker(data.features, tower_dim, **cfg.ranking.model)
    stats = fit_ranker(ranker, inputs, labels, valid, cfg.ranking, cfg.trainer, logger, out_dir / "deploy", cfg.seed,
                       progress, groups, weights)
    windows = pd.concat([data.split.valid, data.split.test], ignore_index=True)
    with RunArtifacts(out_dir).writing("ranker", saw=data_seen(windows), retrained_at_deploy=True) as path:
        torch.save({"state_dict": ranker.state_dict(), "model_cfg": OmegaConf.to_container(cfg.ranking.model, resolve=True),
                    "tower_dim": tower_dim}, path)
    return stats


def run_deploy(data: Prepared, cfg: DictConfig, retrieval: RetrievalResult, ranking: RankingResult, out_dir: Path,
               logger, progress: bool) -> None:
    """Overwrite the run's served state with one built from all interactions (and, with
    ``deploy.retrain_ranker``, the ranker with one trained on the latest windows too)."""
    if cfg.deploy.retrain_ranker and data.test.nnz:
        stats = retrain_ranker(data, cfg, retrieval, ranking, out_dir, logger, progress)
        add_section(out_dir, "Deployed ranker", (
            f"Retrained on {stats['train_lists']} lists of the validation and test windows (held-out list NDCG@10 "
            f"{stats['best_val_ndcg@10']:.4f}, prior alone {stats['prior_val_ndcg@10']:.4f}, residual weight per "
            f"route {stats['route_scale']}"
            + (f"; {stats['exposure_negatives']:,} exposure negatives weighted {cfg.ranking.impression_negatives.weight}"
               if stats.get("exposure_negatives") else "")
            + "); the in-split metrics above are those of the validation-window ranker."))
    history = all_interactions(data)
    retriever = ranking.pipeline.retriever
    store, features = build_served_state(data, history, retriever.item_embeddings,
                                         OmegaConf.to_container(cfg.ranking, resolve=True), retriever.store.history_len,
                                         ranking.ease_content)
    # The log position the merged events reached (train.py events=): recommend tails the log from there.
    log_info = RunArtifacts(out_dir).manifest().get("event_log") or {}
    cursor = {"event_log": log_info["cursor"]} if log_info.get("cursor") else {}
    save_served_state(RunArtifacts(out_dir), store, features, history, deployed=True,
                      ease_content_weight=ranking.ease_content, **cursor)
    saw = data_seen(history)
    with_history = int((store.last_ts >= 0).sum())
    paths = {"users": len(store.users), "users_attribute_path": len(store.users) - with_history,
             "items": len(store.items), "items_content_only": int((store.popularity == 0).sum())}
    RunArtifacts(out_dir).note("deployed_paths", paths)
    log.info("deployed state over %d interactions (%s); %d users with history", len(history), saw, with_history)
    add_section(out_dir, "Deployed state", (
        f"What is served was rebuilt from all {saw['interactions']:,} interactions (up to timestamp "
        f"{saw['last_timestamp']}), not only train+valid: {with_history:,} of {len(store.users):,} users have a "
        f"history ({paths['users_attribute_path']:,} users of the users table with none take the attribute path), "
        f"{int((store.popularity > 0).sum()):,} of {len(store.items):,} items were seen ({paths['items_content_only']:,} "
        "never interacted with are in the index through their content embedding). Models are "
        "unchanged (towers trained on train, ranker on the validation window); the metrics above are the "
        "in-split diagnostics."))
