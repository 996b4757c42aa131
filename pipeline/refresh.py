"""Serve what happened up to now: rebuild a run's served state from all interactions, no retraining.

    recsys-refresh --run-dir outputs/<run> --interactions new.parquet [--out-dir outputs/<run>-fresh]
    recsys-refresh --run-dir outputs/<run> --events <event log dir> [--out-dir ...]

``--events`` reads the durable event log (the served ``--event-log DIR``) after the log position
the run's store already holds (the manifest's ``event_log`` cursor; all of it otherwise), maps the
interaction events to rows (``features.feedback``: impressions are not interactions) and records
the new position, so the served ``recommend`` tails the log from exactly there. A refresh from an
``--interactions`` table keeps the cursors the store recorded (it read nothing of the log; a
dropped cursor would make the served tail start at the store's write time and skip the events
logged since the cursor).

``--events`` also folds in the log's catalog records first (items added or changed online with
``recsys-catalog``; :func:`fold_catalog`), with the code every served ``recommend`` applies them
with (:class:`pipeline.catalog.OnlineCatalog`): an item added online becomes part of the run's
catalog (its vocabulary entry, encoded attributes, item-tower vector in the embeddings and the
index, title), so the interactions with it are kept instead of dropped as unknown, count in its
popularity, and enter the co-occurrence / EASE tables when they are rebuilt.

The served state is what a request reads besides the models: the feature store (each user's
recent items, seen set, last timestamp; item popularity) and the ranker's candidate features
(co-occurrence / EASE tables, recent popularity, item first-seen times). It is built by
:func:`build_served_state` from an interactions table; the deploy stage calls it with every
interaction given to ``train.py``, this command with those plus the new ones. The models (towers,
ranker) stay as trained: a user whose events are newer than the model is answered from the
refreshed history.

How: the per-user state, popularity, recent popularity and first-seen times are updated in place
with the new rows (:class:`pipeline.online.OnlineState`, the code that applies live events; users
whose new rows are older than their latest known one get their recent-items sequence rebuilt from
their whole history), so the cost follows the new rows, not the history. The co-occurrence / EASE
tables are rebuilt over everything (the full :func:`build_served_state`) when they would otherwise
have missed more than ``--rebuild-share`` (5%) of the interactions, or with ``--rebuild``; otherwise
they are kept, and the manifest says how many interactions they saw (``cooc_saw``). The result
equals a full rebuild except for those tables (``tests/pipeline/test_refresh.py``).

What happens to each kind of new row (counted in the returned report, never a crash):

- a user not in the store: becomes a known user (history path), with unknown attributes;
- an item not in the catalog: dropped (``unknown_items``): the catalog changes with a new export, or
  online (``recsys-catalog``), which ``--events`` folds in first;
- a row equal to a known one (user, item, timestamp): dropped (``duplicates``);
- a row with a missing, blank or over-long (> 256 characters) user or item id, a missing or non-numeric
  timestamp, or one more than a day after now: dropped (``malformed``); float ids that are whole
  numbers are read as integers (196.0 is "196"); a table whose every row is malformed is refused
  (exit 2, nothing written: e.g. timestamps in milliseconds);
- a row older than the models' training data: kept as history (``before_training``);
- a row older than its user's latest known one: kept, and that user's recent-items sequence rebuilt
  from their whole history (``late``; 0 with a rebuild of the tables, which orders everyone anew).

With ``--events``, ``catalog_blocked`` / ``catalog_unblocked`` count the items whose last record read
blocks / unblocks them (a block then an unblock of one item is one ``catalog_unblocked``). Blocks are
not written into the run: every ``recommend`` replays them from the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from events.checks import MAX_FUTURE_S, MAX_ID_LENGTH
from features.custom import read_table
from features.feedback import read_log_catalog
from features.schema import MAX_TIMESTAMP, DataError, warn_nonpositive_weights, with_control_characters
from features.history import Histories
from features.store import FeatureStore
from features.vocab import IdVocab
from inference.models import TorchModel
from pipeline.artifacts import FILES, RunArtifacts, data_seen
from pipeline.online import OnlineState
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


REBUILD_SHARE = 0.05  # rebuild the co-occurrence tables once they would miss more than this share


STAGING = ".refresh"  # suffix of an artifact save_served_state is writing: swapped in once all three are written


def save_served_state(art: RunArtifacts, store: FeatureStore, features: CandidateFeatures, history: pd.DataFrame,
                      **info) -> None:
    """Write the store, the ranker features and the interactions they saw, each recorded in the manifest.

    All or nothing: each is written next to its artifact first, and only when all three are complete
    are they moved over the old ones (renames). A write that fails (a full disk, a folder in the way)
    leaves the run as it was, so the same refresh can simply run again (never half applied, where a
    retry would count the rows already in the store a second time)."""
    saw = data_seen(history)
    art.dir.mkdir(parents=True, exist_ok=True)
    writers = {"store": store.save, "ranker_features": features.save,
               "interactions": lambda p: history[list(COLUMNS)].to_parquet(p, index=False)}
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            staged[name] = art.path(name).with_name(art.path(name).name + STAGING)
            _remove(staged[name])  # left by a save that failed
            write(staged[name])
    except BaseException:
        for tmp in staged.values():
            _remove(tmp)
        raise
    for name, tmp in staged.items():
        _swap_in(tmp, art.path(name))
        art.record(name, saw, **info)


def _row_keys(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per (user_id, item_id, timestamp) row (duplicate detection without a MultiIndex)."""
    keyed = pd.DataFrame({"user_id": frame["user_id"].astype(str), "item_id": frame["item_id"].astype(str),
                          "timestamp": frame["timestamp"].astype(np.int64)})
    return pd.util.hash_pandas_object(keyed, index=False).to_numpy()


def _id_text(col: pd.Series) -> pd.Series:
    """Ids as every reader of ids takes them: stripped text (" 9 " is 9), a float column's whole numbers
    as integers (a parquet 196.0 is user "196", never "196.0"); NaN where missing, blank, longer than
    the 256 characters a request may name, holding a control character, or a float that is not a whole
    number."""
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy(dtype=np.float64)
        whole = np.isfinite(v) & (np.mod(v, 1) == 0) & (np.abs(v) < 2**63)
        return pd.Series(np.where(whole, v, 0).astype(np.int64).astype(str), index=col.index).where(whole)
    text = col.where(col.isna(), col.astype(str).str.strip())
    ok = (text.str.len() > 0) & (text.str.len() <= MAX_ID_LENGTH) & ~with_control_characters(text)
    return text.where(text.isna() | ok)


def clean_new_interactions(new: pd.DataFrame, known: pd.DataFrame, items: IdVocab,
                           trained_from: int | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """New rows that can join the history, and a count of every row left out and why."""
    missing = [c for c in COLUMNS if c not in new.columns]
    if missing:
        raise DataError(f"new interactions lack column(s) {missing}; found {list(new.columns)}. They need "
                        "user_id, item_id and timestamp (Unix seconds).")
    df = new[list(COLUMNS)].copy()
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    # a missing or non-finite timestamp, one outside Unix seconds 0..9999-12-31 (never cast to -2^63),
    # or one more than a day after now (the events' rule: it would pin the user's newest history slot
    # and make every real interaction after it "late") is malformed, and so is an id _id_text refuses
    user_col, item_col = _id_text(df["user_id"]), _id_text(df["item_id"])
    horizon = time.time() + MAX_FUTURE_S
    bad = (user_col.isna() | item_col.isna() | ts.isna() | ~((ts >= 0) & (ts <= min(MAX_TIMESTAMP, horizon))))
    df = df[~bad].assign(user_id=user_col[~bad].astype(str), item_id=item_col[~bad].astype(str),
                         timestamp=ts[~bad].astype(np.int64))
    unknown = items.lookup(df["item_id"].to_numpy()) < 0
    df = df[~unknown]
    dup = np.isin(_row_keys(df), _row_keys(known)) | df.duplicated(keep="first").to_numpy()
    df = df[~dup]
    report = {"received": int(len(new)), "malformed": int(bad.sum()), "unknown_items": int(unknown.sum()),
              "duplicates": int(dup.sum()), "accepted": int(len(df)),
              "before_training": int((df["timestamp"] < trained_from).sum()) if trained_from is not None else 0}
    return df.reset_index(drop=True), report


def refresh(run_dir: str | Path, interactions: pd.DataFrame, out_dir: str | Path | None = None,
            rebuild: bool | None = None, rebuild_share: float = REBUILD_SHARE, cursor: dict | None = None,
            catalog: pd.DataFrame | None = None, catalog_cursor: dict | None = None) -> dict:
    """Add new interactions to a run's served state (in place, or into a copy at ``out_dir``).

    Args:
        catalog: catalog records (the log's ``catalog`` table: ``features.feedback.read_log_catalog``)
            folded into the run's catalog first (:func:`fold_catalog`), so interactions with items
            added online are kept.
        catalog_cursor: the log position ``catalog`` was read up to, recorded with the store (the
            next ``--events`` refresh reads the records after it).
        rebuild: True: rebuild everything (co-occurrence / EASE tables included) from all
            interactions; False: keep those tables; None: rebuild once they would miss more than
            ``rebuild_share`` of the interactions.
        cursor: the event log position ``interactions`` were read up to (``--events``), recorded
            with the store.

    Returns:
        The report: counts of received / accepted / dropped rows by reason, new users, late rows,
        whether the tables were rebuilt, seconds.
    """
    start = time.perf_counter()
    if RunArtifacts(run_dir).dir.is_dir():
        _recover(RunArtifacts(run_dir))
    art = RunArtifacts(run_dir).check(("store", "ranker_features", "item_embeddings", "interactions"))
    if out_dir is None:
        return _refresh(art, interactions, rebuild, rebuild_share, cursor, catalog, catalog_cursor, start)
    out = RunArtifacts(out_dir)
    if out.run_dir.exists() and not out.run_dir.is_dir():
        raise DataError(f"--out-dir {out.run_dir} is a file; choose a new directory (or omit it to refresh in place)")
    if out.dir.exists():
        raise DataError(f"--out-dir {out.run_dir} exists; choose a new directory (or omit it to refresh in place)")
    made = out.dir if out.run_dir.exists() else out.run_dir  # what a failure removes: only what this call made
    try:
        shutil.copytree(art.dir, out.dir)  # (a copy that fails half way, e.g. a full disk, is removed too)
        return _refresh(out, interactions, rebuild, rebuild_share, cursor, catalog, catalog_cursor, start)
    except BaseException:
        shutil.rmtree(made, ignore_errors=True)  # no half-refreshed copy, and a retry with the same --out-dir works
        raise


def _refresh(art: RunArtifacts, interactions: pd.DataFrame, rebuild: bool | None, rebuild_share: float,
             cursor: dict | None, catalog: pd.DataFrame | None, catalog_cursor: dict | None, start: float) -> dict:
    """:func:`refresh` on the run's artifacts ``art`` (the run's own, or the copy at ``out_dir``)."""
    m = art.manifest()
    with art.reading("interactions"):
        known = pd.read_parquet(art.path("interactions"))
    folded = {} if catalog is None else {"read": int(len(catalog))}
    if catalog is not None and len(catalog):  # before the interactions: they may name items added online
        folded.update(fold_catalog(art, catalog))
    store = art.load_store()
    trained_from = m["artifacts"]["two_tower"]["saw"].get("first_timestamp") if "two_tower" in m["artifacts"] else None
    new, report = clean_new_interactions(interactions, known, store.items, trained_from)
    if report["received"] and report["malformed"] == report["received"]:  # a systematic fault, not bad rows
        ts = pd.to_numeric(interactions["timestamp"], errors="coerce")
        hint = ("; the timestamps look like milliseconds: divide by 1000" if ts.notna().any()
                and float(ts.median()) > time.time() + MAX_FUTURE_S else "")
        raise DataError(f"none of the {report['received']} new rows can be used: each has a missing, blank or "
                        f"over-long id, or a timestamp that is not Unix seconds from 1970 to a day from now{hint}. "
                        "None of them was written.")
    # an --interactions refresh moves no log cursor: the ones the store recorded stay (without them a
    # served tail would start at this write and skip the logged events not yet folded in)
    prior = m["artifacts"].get("store", {})
    cursor, catalog_cursor = cursor or prior.get("event_log"), catalog_cursor or prior.get("catalog_log")
    # and without a cursor, the served tail's cut stays the refreshed store's: this refresh read no log, so
    # the events logged since that store was written are in neither (a probe found every one of them lost:
    # the tail started at this write). A table that holds some of them has those applied once more.
    events_after = None if cursor else prior.get("events_after", prior.get("written_at_unix"))
    history = pd.concat([known, new], ignore_index=True)
    ranking_cfg = m["config"]["ranking"]
    features_info = m["artifacts"]["ranker_features"]
    ease_content = float(features_info.get("ease_content_weight", 0.0))
    cooc_saw = int(features_info.get("cooc_saw", features_info["saw"]["interactions"]))
    if rebuild is None:
        rebuild = len(history) - cooc_saw > rebuild_share * len(history)
    if rebuild:
        report["new_users"] = store.add_users(new["user_id"].to_numpy())
        store, features = build_served_state(store, history, art.load_item_embeddings(), ranking_cfg,
                                             store.history_len, ease_content)
        cooc_saw, report["late"] = len(history), 0
    else:
        with art.reading("ranker_features"):
            features = CandidateFeatures.load(art.path("ranker_features"), store)
        online = OnlineState.over(store, features)
        counts = online.apply(new)
        report["new_users"], report["late"] = counts["new_users"], counts["late"]
        if online.late_users:  # their sequences: exactly as a rebuild orders them, by time
            users = np.array(sorted(online.late_users))
            mine = history[history["user_id"].astype(str).isin(set(store.users.ids[users].tolist()))]
            store.recent[users] = Histories.build(store, mine).recent_items(users, store.history_len)
    report["tables_rebuilt"] = bool(rebuild)
    report.update({f"catalog_{k}": v for k, v in folded.items()})
    save_served_state(art, store, features, history, refreshed_with=report, ease_content_weight=ease_content,
                      cooc_saw=cooc_saw, **({"event_log": cursor} if cursor else {}),
                      **({"catalog_log": catalog_cursor} if catalog_cursor else {}),
                      **({"events_after": float(events_after)} if events_after is not None else {}))
    report["seconds"] = round(time.perf_counter() - start, 2)
    log.info("refreshed %s: %s", art.dir, report)
    return report


FOLDING = ".fold"  # suffix of an artifact fold_catalog is writing: moved over the artifact once all are written


def _swap_in(staged: Path, final: Path) -> None:
    """Move a staged file or folder over ``final`` (a folder: the old one set aside, then removed)."""
    if final.is_dir():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)


def _recover(art: RunArtifacts) -> None:
    """Put back an artifact folder a killed refresh set aside (``_swap_in`` renames the old one away,
    then the new one in: a process killed between the two renames leaves only ``<name>.old``)."""
    for name in FILES:
        path = art.path(name)
        old = path.with_name(path.name + ".old")
        if old.exists() and not path.exists():
            log.warning("%s: restoring %s, set aside by a refresh that did not finish", art.dir, old.name)
            old.rename(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save on a path not ending in .npy would add the suffix
        np.save(f, np.ascontiguousarray(array))


def fold_catalog(art: RunArtifacts, records: pd.DataFrame) -> dict[str, int]:
    """Fold catalog records (columns op, entity_id, attributes: the log's ``catalog`` table, in log
    order) into a run's saved catalog with :class:`pipeline.catalog.OnlineCatalog`, the code every
    served ``recommend`` applies them with, on the run's pipeline with its PyTorch item tower (the
    served one is its ONNX export: the same vectors to ~1e-6).

    Written: the store (item vocabulary, encoded item rows, popularity, the seen matrix's width,
    user attributes, also of users known by them alone until their first event), the item
    embeddings, the index, the titles and the ranker features (first-seen times). Each is written
    next to its artifact first and moved over it only once all are written, so a failure while
    writing leaves the run as it was. Blocks are not saved: they live in the served rules, and every
    ``recommend`` replays them from the log. The co-occurrence / EASE tables are not extended here: a
    rebuild (``--rebuild``, or the share rule) builds them over the grown catalog.

    Replaying records a run already holds is harmless: a known item is "updated" with the same
    attributes, to the same vector (``recsys-refresh`` reads only the records after the run's
    ``catalog_log`` cursor).

    Returns:
        :meth:`OnlineCatalog.apply`'s counts: new_items, updated_items, blocked, unblocked, users.

    Raises:
        DataError: a record cannot be applied, or the run cannot be loaded (nothing is written).
    """
    from pipeline.catalog import OnlineCatalog
    from retrieval.index import IndexConfig, save_index

    art.check(("two_tower", "index"))
    try:
        pipe = art.load_pipeline(user_encoder=_unused, rankers={"ranker": _unused})  # no request is answered here
    except ValueError as e:  # e.g. artifacts of different catalog sizes: say which run, not a traceback
        raise DataError(f"{art.run_dir} cannot be loaded to fold the log's catalog records into it: {e}") from e
    titles = art.titles()
    item_tower = TorchModel(art.load_towers(pipe.store).item_tower)
    try:
        counts = OnlineCatalog(pipe, item_tower, titles).apply(records)
    except (ValueError, KeyError, TypeError) as e:  # the log holds checked records; say which part failed
        raise DataError(f"the log's catalog records could not be folded into {art.run_dir}: {type(e).__name__}: {e}. "
                        "Nothing was written; refresh from an --interactions table to skip them.") from e
    if not (counts["new_items"] or counts["updated_items"] or counts["users"]):
        return counts
    index_cfg = IndexConfig(**art.index_settings())
    writers = {"store": pipe.store.save, "ranker_features": pipe.features.save,
               "item_embeddings": lambda p: _save_npy(p, pipe.features.item_embeddings),
               "index": lambda p: save_index(pipe.retriever.index, index_cfg, p)}
    if titles:
        writers["item_titles"] = lambda p: p.write_text(json.dumps(titles))
    staged = {}
    for name, write in writers.items():
        tmp = art.path(name).with_name(art.path(name).name + FOLDING)
        _remove(tmp)  # left by a fold that failed
        write(tmp)
        staged[name] = tmp
    _remove(Path(str(staged["index"]) + ".json"))  # save_index's parameters: the artifact's own are the same
    info = {"catalog_records": int(len(records))}
    entries = art.manifest().get("artifacts", {})
    for name, tmp in staged.items():
        _swap_in(tmp, art.path(name))
        old = entries.get(name, {})
        kept = {k: v for k, v in old.items() if k not in ("file", "written_at", "written_at_unix", "saw")}
        art.record(name, old.get("saw"), **{**kept, **info})
    return counts


def _unused(*args, **kwargs):
    raise RuntimeError("fold_catalog's pipeline answers no request")


def _store_cursor(run_dir: str | Path, key: str, directory: Path):
    """The log position the run's store recorded under ``key`` when it is of ``directory``, else None."""
    from features.feedback import LogCursor

    old = RunArtifacts(run_dir).manifest().get("artifacts", {}).get("store", {}).get(key)
    return LogCursor(**old) if old and Path(old["directory"]).resolve() == Path(directory).resolve() else None


def log_catalog(run_dir: str | Path, log_path: str | Path,
                from_start: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    """Catalog records logged after the run's ``catalog_log`` cursor (all of them without one, or with
    ``from_start``: folding a record again is harmless), the new cursor, and the read's counts
    (``skipped_segments``, see :func:`features.feedback.read_log_events`)."""
    from features.feedback import catalog_dir

    after = None if from_start else _store_cursor(run_dir, "catalog_log", catalog_dir(log_path))
    read: dict = {}
    records, cursor = read_log_catalog(log_path, after, read)
    return records, cursor.as_dict(), read


def log_events(run_dir: str | Path, log_path: str | Path, from_start: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    """Interaction rows logged after the run's store cursor (all, without one or with ``from_start``:
    the rows already in the history are then dropped as duplicates), the new cursor, counts."""
    from events.checks import INTERACTION_TYPES
    from features.feedback import log_dirs, log_interactions, read_log_events

    events_dir, _ = log_dirs(log_path, "--events DIR")
    after = None if from_start else _store_cursor(run_dir, "event_log", events_dir)
    read: dict = {}
    events, cursor = read_log_events(events_dir, after, report=read)
    rows, counts = log_interactions(events, INTERACTION_TYPES)
    return rows, cursor.as_dict(), {**counts, **read}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="recsys-refresh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a trained (deployed) run: the output directory of `python train.py`")
    new = ap.add_mutually_exclusive_group(required=True)
    new.add_argument("--interactions", help="CSV or parquet with user_id, item_id, timestamp")
    new.add_argument("--events", help="an event log directory (the served --event-log DIR): its interaction events "
                                      "after the run's log cursor, and its catalog records (items added online) "
                                      "folded in first")
    ap.add_argument("--from-start", action="store_true",
                    help="with --events: read the whole log, not only after the run's cursor (for a log recreated or "
                         "replaced since: rows already in the history are dropped as duplicates)")
    ap.add_argument("--out-dir", default=None, help="write the refreshed run here (default: refresh in place)")
    ap.add_argument("--rebuild", action=argparse.BooleanOptionalAction, default=None,
                    help="rebuild the co-occurrence / EASE tables too (--no-rebuild: keep them; default: rebuild "
                         "once they would miss more than --rebuild-share of the interactions)")
    ap.add_argument("--rebuild-share", type=float, default=REBUILD_SHARE,
                    help=f"see --rebuild (default: {REBUILD_SHARE})")
    args = ap.parse_args(argv)
    if args.from_start and not args.events:
        ap.error("--from-start reads an event log from its start: give --events DIR")
    if not 0.0 <= args.rebuild_share <= 1.0:
        ap.error(f"--rebuild-share {args.rebuild_share:g}: a share of the interactions, in [0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cursor, log_report, catalog, catalog_cursor = None, {}, None, None
        if args.events:
            rows, cursor, log_report = log_events(args.run_dir, args.events, args.from_start)
            catalog, catalog_cursor, read = log_catalog(args.run_dir, args.events, args.from_start)
            log_report["catalog_skipped_segments"] = read["skipped_segments"]
        else:
            rows = read_table(args.interactions, "interactions", "--interactions",  # "0042" stays "0042"
                              dtype={"user_id": str, "item_id": str})
            if rows.empty:  # a header alone: most likely the wrong file (as recsys-events send says)
                raise DataError(f"--interactions {args.interactions} has a header but no rows: nothing to refresh")
            if "weight" in rows.columns:  # as train.py says it (found by a probe: a -1 "dislike" went in silently)
                warn_nonpositive_weights(rows["weight"], f"--interactions {args.interactions}", "row(s)")
        report = refresh(args.run_dir, rows, args.out_dir, args.rebuild, args.rebuild_share, cursor, catalog,
                         catalog_cursor)
        report.update({f"log_{k}": v for k, v in log_report.items()})
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder where a file goes: the served state was left as it was
        print(f"error: {e}; none of the new interactions was written (the store, ranker features and "
              "history are written aside and swapped in together): fix that and run the same command again",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the state is swapped in whole or not at all
        print("interrupted: none of the new interactions was written; run the same command again", file=sys.stderr)
        return 130
    print(" ".join(f"{k}={v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
