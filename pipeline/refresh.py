"""Serve what happened up to now: rebuild a run's served state from all interactions, no retraining.

    recsys-refresh --run-dir outputs/<run> --interactions new.parquet [--out-dir outputs/<run>-fresh]

The served state is what a request reads besides the models: the feature store (each user's
recent items, seen set, last timestamp; item popularity) and the ranker's candidate features
(co-occurrence / EASE tables, recent popularity, item first-seen times). It is built by
:func:`build_served_state` from an interactions table; the deploy stage calls it with every
interaction given to ``train.py``, this command with those plus the new ones. The models (towers,
ranker) stay as trained: a user whose events are newer than the model is answered from the
refreshed history.

What happens to each kind of new row (counted in the returned report, never a crash):

- a user not in the store: becomes a known user (history path), with unknown attributes;
- an item not in the catalog: dropped (``unknown_items``): the catalog changes with a new export;
- a row equal to a known one (user, item, timestamp): dropped (``duplicates``);
- a row with a missing user, item or timestamp, or a non-numeric timestamp: dropped (``malformed``);
- a row older than the models' training data: kept as history (``before_training``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.custom import read_table
from features.schema import DataError
from features.store import FeatureStore
from features.vocab import IdVocab
from pipeline.artifacts import RunArtifacts, data_seen
from ranking.features import CandidateFeatures

log = logging.getLogger(__name__)
COLUMNS = ("user_id", "item_id", "timestamp")


def build_served_state(base, history: pd.DataFrame, item_embeddings: np.ndarray, ranking_cfg: dict,
                       history_len: int, ease_content: float) -> tuple[FeatureStore, CandidateFeatures]:
    """The feature store and ranker features over ``history``.

    Args:
        base: what the store is indexed by: prepared data or an existing :class:`FeatureStore` (its
            user / item vocabularies, fitted features and encoded tables).
        history: interactions (``user_id``, ``item_id``, ``timestamp``) the state is built from.
        item_embeddings: (N, D) catalog vectors of the served item tower.
        ranking_cfg: the run's ``ranking`` config (``cooc`` and ``recent_days``).
        history_len: items of history the user tower reads.
        ease_content: weight of item attributes in the prior's EASE (chosen when the run was trained).
    """
    store = FeatureStore.build(base, history, history_len)
    return store, CandidateFeatures.from_config(store, history, item_embeddings, ranking_cfg, ease_content)


def save_served_state(art: RunArtifacts, store: FeatureStore, features: CandidateFeatures, history: pd.DataFrame,
                      **info) -> None:
    """Write the store, the ranker features and the interactions they saw, each recorded in the manifest."""
    saw = data_seen(history)
    with art.writing("store", saw=saw, **info) as path:
        store.save(path)
    with art.writing("ranker_features", saw=saw, **info) as path:
        features.save(path)
    with art.writing("interactions", saw=saw, **info) as path:
        history[list(COLUMNS)].to_parquet(path, index=False)


def clean_new_interactions(new: pd.DataFrame, known: pd.DataFrame, items: IdVocab,
                           trained_from: int | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """New rows that can join the history, and a count of every row left out and why."""
    missing = [c for c in COLUMNS if c not in new.columns]
    if missing:
        raise DataError(f"new interactions lack column(s) {missing}; found {list(new.columns)}. They need "
                        "user_id, item_id and timestamp (Unix seconds).")
    df = new[list(COLUMNS)].copy()
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = df["user_id"].isna() | df["item_id"].isna() | ts.isna() | ~np.isfinite(ts.fillna(0))
    df = df[~bad].assign(user_id=lambda d: d["user_id"].astype(str), item_id=lambda d: d["item_id"].astype(str),
                         timestamp=ts[~bad].astype(np.int64))
    unknown = items.lookup(df["item_id"].to_numpy()) < 0
    df = df[~unknown]
    keys = pd.MultiIndex.from_frame(known[list(COLUMNS)].astype({"user_id": str, "item_id": str}))
    dup = pd.MultiIndex.from_frame(df).isin(keys) | df.duplicated(keep="first").to_numpy()
    df = df[~dup]
    report = {"received": int(len(new)), "malformed": int(bad.sum()), "unknown_items": int(unknown.sum()),
              "duplicates": int(dup.sum()), "accepted": int(len(df)),
              "before_training": int((df["timestamp"] < trained_from).sum()) if trained_from is not None else 0}
    return df.reset_index(drop=True), report


def refresh(run_dir: str | Path, interactions: pd.DataFrame, out_dir: str | Path | None = None) -> dict:
    """Add new interactions to a run's served state (in place, or into a copy at ``out_dir``).

    Returns:
        The report: counts of received / accepted / dropped rows by reason, new users, seconds.
    """
    start = time.perf_counter()
    art = RunArtifacts(run_dir).check(("store", "ranker_features", "item_embeddings", "interactions"))
    if out_dir is not None:
        out = RunArtifacts(out_dir)
        if out.dir.exists():
            raise DataError(f"--out-dir {out.run_dir} exists; choose a new directory (or omit it to refresh in place)")
        shutil.copytree(art.dir, out.dir)
        art = out
    m = art.manifest()
    known = pd.read_parquet(art.path("interactions"))
    store = art.load_store()
    trained_from = m["artifacts"]["two_tower"]["saw"].get("first_timestamp") if "two_tower" in m["artifacts"] else None
    new, report = clean_new_interactions(interactions, known, store.items, trained_from)
    report["new_users"] = store.add_users(new["user_id"].to_numpy())
    history = pd.concat([known, new], ignore_index=True)
    ranking_cfg = m["config"]["ranking"]
    ease_content = float(m["artifacts"]["ranker_features"].get("ease_content_weight", 0.0))
    store, features = build_served_state(store, history, art.load_item_embeddings(), ranking_cfg, store.history_len,
                                         ease_content)
    save_served_state(art, store, features, history, refreshed_with=report, ease_content_weight=ease_content)
    report["seconds"] = round(time.perf_counter() - start, 2)
    log.info("refreshed %s: %s", art.dir, report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="recsys-refresh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a trained (deployed) run: the output directory of `python train.py`")
    ap.add_argument("--interactions", required=True, help="CSV or parquet with user_id, item_id, timestamp")
    ap.add_argument("--out-dir", default=None, help="write the refreshed run here (default: refresh in place)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = refresh(args.run_dir, read_table(args.interactions, "interactions"), args.out_dir)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
