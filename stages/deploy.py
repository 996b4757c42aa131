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

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from evaluation.report import add_section
from features.prepare import Prepared
from pipeline.artifacts import RunArtifacts, data_seen
from pipeline.refresh import build_served_state, save_served_state
from stages.ranking import RankingResult

log = logging.getLogger(__name__)


def all_interactions(data: Prepared) -> pd.DataFrame:
    """Every interaction of the split (train, valid and test), time-ordered per user."""
    parts = [data.split.train, data.split.valid, data.split.test]
    return pd.concat(parts, ignore_index=True).sort_values(["user_id", "timestamp", "item_id"], kind="stable",
                                                           ignore_index=True)


def run_deploy(data: Prepared, cfg: DictConfig, ranking: RankingResult, out_dir: Path) -> None:
    """Overwrite the run's served state with one built from all interactions."""
    history = all_interactions(data)
    retriever = ranking.pipeline.retriever
    store, features = build_served_state(data, history, retriever.item_embeddings,
                                         OmegaConf.to_container(cfg.ranking, resolve=True), retriever.store.history_len,
                                         ranking.ease_content)
    save_served_state(RunArtifacts(out_dir), store, features, history, deployed=True,
                      ease_content_weight=ranking.ease_content)
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
