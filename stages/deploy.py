"""The ``deploy`` stage: rebuild what is served from every interaction given, after evaluation.

Evaluation (every stage before this one) answers the test split from train+valid and chooses every
hyperparameter there; those numbers are diagnostics. What is served must know everything up to
now: each user's latest interactions in their history and seen set, today's popularity, item
first-seen times, co-occurrence / EASE over all interactions. This stage rebuilds those
(:func:`pipeline.refresh.build_served_state`) over train+valid+test and overwrites the run's
``store``, ``ranker_features`` and ``interactions`` artifacts; the manifest records that they saw
all data while the towers and the ranker keep what they were trained on (the towers on train, the
ranker on the validation window), unless ``deploy.retrain_towers``: then the towers are trained
again on train+valid for the epoch count chosen on valid, the ranker on the test window's lists
from them (the newest window the towers never saw), the student distilled again from it, and the
served index and embeddings are theirs (:func:`retrain_towers`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from evaluation.report import add_section
from features.prepare import Prepared, history_frame
from features.store import FeatureStore
from pipeline.artifacts import RunArtifacts, data_seen
from pipeline.refresh import build_served_state, save_served_state
from ranking.distill import DistillGateError
from ranking.model import build_ranker
from ranking.trainer import fit_ranker
from retrieval.index import build_index
from retrieval.retriever import Retriever
from retrieval.towers import item_embeddings
from retrieval.trainer import fit_two_tower
from stages.distill import distill_student
from stages.ranking import RankingResult, save_ranker, training_lists
from stages.retrieval import RetrievalResult, save_towers

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
    save_ranker(RunArtifacts(out_dir), "ranker", ranker, cfg.ranking.model, tower_dim, data_seen(windows),
                retrained_at_deploy=True)
    return stats


def retrain_towers(data: Prepared, cfg: DictConfig, retrieval: RetrievalResult, ranking: RankingResult,
                   out_dir: Path, logger, progress: bool) -> tuple[np.ndarray, dict]:
    """The towers trained again on train+valid (the epoch count chosen on valid), the ranker on the test
    window's lists from them, the student distilled again from that ranker; all written as the run's.

    Leakage-free as the ranking stage: the new towers never saw the test window, whose lists the ranker
    learns from, with the history known before it. A student that fails its gate is taken out of the
    run (the old one was distilled for the old towers: its inputs no longer mean the same).
    Returns the new item embeddings (the served index's) and the stats for the report.
    """
    art = RunArtifacts(out_dir)
    epochs = int(retrieval.stats["best_epochs"])
    if retrieval.refit is not None:  # the retrieval stage trained exactly these (retrieval.refit.mode=scratch)
        towers, tower_stats = retrieval.refit, {"fit_seconds": float(retrieval.stats.get("refit_seconds", 0.0))}
    else:
        towers, tower_stats = fit_two_tower(data, cfg.retrieval, cfg.trainer, logger, out_dir / "deploy", cfg.seed,
                                            progress, refit_epochs=epochs)
    towers.eval()
    emb = item_embeddings(towers, data.item_table)
    index_cfg = instantiate(cfg.index)
    index = build_index(emb, index_cfg, cfg.seed)
    store = FeatureStore.build(data, history_frame(data, "test"), cfg.retrieval.history_len)
    result = RetrievalResult(towers, {"test": Retriever(towers.user_tower, index, store, emb)}, tower_stats)
    inputs, labels, valid, groups, weights = training_lists(data, result, cfg, ranking.ease_content, part="test")
    torch.manual_seed(cfg.seed)
    ranker = build_ranker(data.features, emb.shape[1], **cfg.ranking.model)
    stats = fit_ranker(ranker, inputs, labels, valid, cfg.ranking, cfg.trainer, logger, out_dir / "deploy", cfg.seed,
                       progress, groups, weights)
    ranker.eval()
    out = {"tower_epochs": epochs, "tower_seconds": tower_stats["fit_seconds"], **stats}
    student = None
    if art.has("ranker_student"):
        try:
            student, kept = distill_student(data, cfg, ranker, (inputs, labels, valid, groups, weights), emb.shape[1],
                                            out_dir / "deploy", logger, progress)
            out["student"] = f"distilled again ({kept['retained']:.1%} of the ranker's held-out NDCG@10)"
        except DistillGateError as err:
            log.warning("deploy: the student distilled for the retrained towers failed its gate (%s); the run "
                        "serves no student", err)
            out["student"] = f"failed its gate, none served: {err}"
        art.forget("ranker_student")  # the old one is for the old towers: gone before the new ones are written
    # every model written together, after all the training (a failure above leaves the run as it was)
    seen_towers = data_seen(pd.concat([data.split.train, data.split.valid], ignore_index=True))
    save_towers(art, towers, emb, index, index_cfg, cfg.retrieval, seen_towers, retrained_at_deploy=True)
    save_ranker(art, "ranker", ranker, cfg.ranking.model, emb.shape[1], data_seen(data.split.test),
                retrained_at_deploy=True)
    if student is not None:
        save_ranker(art, "ranker_student", student, cfg.distill.model, emb.shape[1], data_seen(data.split.test),
                    retrained_at_deploy=True)
    return emb, out


def run_deploy(data: Prepared, cfg: DictConfig, retrieval: RetrievalResult, ranking: RankingResult, out_dir: Path,
               logger, progress: bool) -> None:
    """Overwrite the run's served state with one built from all interactions (and, with
    ``deploy.retrain_ranker``, the ranker with one trained on the latest windows too; with
    ``deploy.retrain_towers``, the towers, the ranker and the student: :func:`retrain_towers`)."""
    embeddings = ranking.pipeline.retriever.item_embeddings
    if cfg.deploy.get("retrain_towers") and not data.test.nnz:
        log.warning("deploy.retrain_towers: no test-window interactions to train the ranker on; towers kept")
    if cfg.deploy.get("retrain_towers") and data.test.nnz:
        embeddings, stats = retrain_towers(data, cfg, retrieval, ranking, out_dir, logger, progress)
        add_section(out_dir, "Deployed models", (
            f"Towers trained again on train+valid ({stats['tower_epochs']} epochs, the count chosen on valid; "
            f"{stats['tower_seconds']:.0f} s); ranker on {stats['train_lists']} lists of the test window from them "
            f"(held-out list NDCG@10 {stats['best_val_ndcg@10']:.4f}, prior alone {stats['prior_val_ndcg@10']:.4f}, "
            f"residual weight per route {stats['route_scale']}); student: {stats.get('student', 'none in this run')}. "
            "The in-split metrics above (the Distillation section's student too) are those of the train-only "
            "towers and the validation-window ranker."))
    elif cfg.deploy.retrain_ranker and data.test.nnz:
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
    store, features = build_served_state(data, history, embeddings,
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
        "never interacted with are in the index through their content embedding). "
        + ("Towers, ranker and student retrained (section Deployed models)" if cfg.deploy.get("retrain_towers")
           and data.test.nnz else "Towers unchanged (trained on train)")
        + "; the metrics above are the in-split diagnostics."))
