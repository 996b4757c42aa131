"""The feedback loop's data: the event log turned into training data.

Two things come out of a log directory (``events.log``; the served ``--event-log DIR`` holds
``DIR/events`` and ``DIR/impressions``):

- **interactions** (:func:`log_interactions`, :func:`merge_interactions`): the logged events of
  the configured interaction types, mapped to the data contract (``user_id``, ``item_id``,
  ``timestamp`` int seconds, ``weight``) and merged with the dataset's interactions. A row equal
  to one already in the data (same user, item and second) is not counted twice; impression-type
  events and types not configured are never interactions; malformed rows and items outside the
  catalog are counted in the report and left out, never a crash;
- **exposure negatives** (:func:`exposure_negatives`): items served to a user (the impression
  log, one row per position) that got no positive event from that user within a window after the
  impression. The ranker may weight them as negatives (``ranking.impression_negatives``);
- **catalog changes** (:func:`read_log_catalog`, :func:`merge_catalog`): the items and user
  attributes added or changed online (``recsys-catalog``; ``DIR/catalog``), applied to the dataset's
  item and user tables before the events are mapped, so events on items added online are kept and
  a retrain learns those items like any other.

The log position read up to (:func:`read_log_events`: the ``events.tail.EventTail`` cursor,
segment and rowid of the last row read) goes into the run's manifest, so the served ``recommend``
tails the log from exactly there.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from events.checks import MAX_FUTURE_S
from events.reader import read_log
from events.log import LOCK_NAME
from events.segments import list_segments
from events.tail import CursorPastEnd, EventTail
from features.schema import DataError, Dataset, with_control_characters

log = logging.getLogger(__name__)
KEY = ("user_id", "item_id", "timestamp")


def log_dirs(path: str | os.PathLike, setting: str = "events=<dir>") -> tuple[Path, Path | None]:
    """(events, impressions) folders of a log path: a served log root holding ``events/`` (and
    ``impressions/``), or one log directory that holds both tables (``EventLog(DIR)``). ``setting``:
    how the caller's user names the path (train.py's key, or a command's flag), for the error."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        what = "is a file, not a directory" if p.exists() else "does not exist"
        raise DataError(f"event log {p} {what} ({setting}: the served --event-log DIR, or one EventLog directory)")
    if p.name in ("impressions", "catalog") and (p.parent / "events").is_dir():
        # its own tail would move the run's events cursor here: the served tail would then skip the events
        raise DataError(f"{p} is the {p.name} folder of the served log {p.parent}; {setting}: give {p.parent} "
                        "(its events, impressions and catalog records are read from their folders)")
    if (p / "events").is_dir():
        return p / "events", (p / "impressions") if (p / "impressions").is_dir() else None
    if not list_segments(p) and not (p / LOCK_NAME).is_file():
        # not a log (an EventLog made one, even with nothing appended): read as an empty log, it would
        # move the run's log cursor here and the served tail would skip what the real log holds
        inside = sorted(c.name for c in p.iterdir())[:5]
        raise DataError(f"{p} holds no event log (no events/ folder, no segment-*.sqlite, no {LOCK_NAME}; it "
                        f"holds {inside or 'nothing'}); {setting}: the served --event-log DIR, or one EventLog "
                        "directory")
    return p, p


@dataclass
class LogCursor:
    """Where a reader of the log stopped: the last row read (``events.tail.EventTail``'s cursor)."""

    directory: str
    segment: int
    rowid: int
    log_id: str | None = None  # the log's identity (events.segments.log_id); None: taken before there was one
    # the newest stamp read (received_at of events, the timestamp of catalog records): where a reader that
    # cannot use the position starts (a Redis tail: the stream has no rowids); None: nothing read yet
    received_at: float | None = None

    def as_dict(self) -> dict:
        out = {"directory": self.directory, "segment": self.segment, "rowid": self.rowid}
        if self.received_at is not None:
            out["received_at"] = self.received_at
        return {**out, "log_id": self.log_id} if self.log_id else out


def read_log_events(events_dir: Path, after: LogCursor | None = None, kind: str = "events",
                    report: dict | None = None) -> tuple[pd.DataFrame, LogCursor]:
    """Every row of table ``kind`` logged in a log directory (after ``after``, when given), and the
    cursor of the last one read. Each segment read is checked first (a damaged one is a DataError, not
    rows skipped); segments the log dropped (its size bound) after the cursor's before this read are
    counted in ``report["skipped_segments"]`` and warned about: their rows are lost to this reader."""
    tail = EventTail(events_dir, after=(after.segment, after.rowid) if after else None, kind=kind,
                     log_id=after.log_id if after else None, verify=True)
    try:
        frame = tail.read_new()
    except sqlite3.DatabaseError as e:  # a segment that is not SQLite (a bad copy, a disk error)
        raise DataError(f"event log {events_dir}: a segment could not be read ({e}); move the damaged "
                        "segment-*.sqlite file away or restore it, then run again") from None
    except CursorPastEnd as e:  # the log was recreated since the run read it: nothing new would ever be read
        raise DataError(f"event log {e}. Read it whole with recsys-refresh --events DIR --from-start (rows "
                        "already in the run's history are dropped as duplicates)") from None
    finally:
        tail.close()
    if tail.skipped_segments:
        log.warning("event log %s: %d segment(s) after the cursor were dropped by the log's size bound before "
                    "this read: their %s are lost to it (read the log more often, or give it more room: "
                    "--log-max-gib)", events_dir, tail.skipped_segments, kind)
    if report is not None:
        report["skipped_segments"] = tail.skipped_segments
    stamp = tail.table.stamp
    newest = pd.to_numeric(frame[stamp], errors="coerce").max() if len(frame) and stamp in frame else None
    received = float(newest) if newest is not None and pd.notna(newest) else (after.received_at if after else None)
    return frame, LogCursor(str(Path(events_dir).resolve()), tail.segment, tail.rowid, tail.log_id, received)


def log_interactions(events: pd.DataFrame, types, items: pd.Series | None = None,
                     default_weight: float = 1.0) -> tuple[pd.DataFrame, dict[str, int]]:
    """The events that count as interactions, in the data contract, and a count of what was left out.

    Args:
        events: rows of the log's ``events`` table (``read_log(..., "events")``).
        types: event types that are interactions (``impression`` never is, even when listed).
        items: the catalog's item ids; events for other items are left out (``unknown_items``).
        default_weight: the weight of an event logged without one.

    Returns:
        (``user_id``, ``item_id``, ``timestamp`` int64, ``weight`` float32; one row per (user,
        item, second), the largest weight kept), and counts: ``read``, ``not_interactions``
        (impressions, unconfigured types), ``malformed`` (missing id, non-finite timestamp or
        weight, a timestamp more than a day after the server logged it), ``unknown_items``, ``repeated`` (same user, item and second within the log), ``kept``.
    """
    types = set(types) - {"impression"}
    report = {"read": int(len(events))}
    kind = events["type"].astype(str).isin(types) if len(events) else pd.Series([], dtype=bool)
    df = events[kind.to_numpy()]
    report["not_interactions"] = int((~kind).sum())
    ts = pd.to_numeric(df["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    w = pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64)
    w = np.where(np.isnan(w), default_weight, w)
    ids_ok = df["user_id"].notna().to_numpy() & df["item_id"].notna().to_numpy()
    ids_ok &= (df["user_id"].astype(str).str.len() > 0).to_numpy() & (df["item_id"].astype(str).str.len() > 0).to_numpy()
    for col in ("user_id", "item_id"):  # a log written before the events model refused them: dropped, counted
        ids_ok &= ~with_control_characters(df[col]).to_numpy(dtype=bool)
    ok = ids_ok & np.isfinite(ts) & (ts >= 0) & np.isfinite(w)
    if "received_at" in df.columns:  # the ingest rule, against the clock of the server that logged it
        with np.errstate(invalid="ignore"):
            ok &= ts <= pd.to_numeric(df["received_at"], errors="coerce").to_numpy(dtype=np.float64) + MAX_FUTURE_S
    report["malformed"] = int((~ok).sum())
    out = pd.DataFrame({"user_id": df["user_id"].astype(str).to_numpy()[ok],
                        "item_id": df["item_id"].astype(str).to_numpy()[ok],
                        "timestamp": np.floor(ts[ok]).astype(np.int64), "weight": w[ok].astype(np.float32)})
    if items is not None:
        known = out["item_id"].isin(set(items.astype(str)))
        report["unknown_items"] = int((~known).sum())
        out = out[known.to_numpy()]
    else:
        report["unknown_items"] = 0
    n = len(out)
    out = (out.sort_values("weight", ascending=False, kind="stable").drop_duplicates(list(KEY))
           .sort_values(list(KEY), kind="stable", ignore_index=True))
    report["repeated"] = n - len(out)
    report["kept"] = int(len(out))
    return out, report


def catalog_dir(path: str | os.PathLike) -> Path:
    """The catalog records' folder of a log path (see :func:`log_dirs`): ``DIR/catalog`` of a served
    log root (one holding ``events/`` or ``catalog/``), the sibling ``catalog/`` of a served root's
    ``events/`` folder given directly, else the one log directory itself (an ``EventLog`` holds every
    table)."""
    p = Path(path).expanduser().resolve()
    if (p / "catalog").is_dir() or (p / "events").is_dir():
        return p / "catalog"
    if p.name == "events" and (p.parent / "catalog").is_dir():
        return p.parent / "catalog"
    return p


def read_log_catalog(path: str | os.PathLike, after: LogCursor | None = None,
                     report: dict | None = None) -> tuple[pd.DataFrame, LogCursor]:
    """The catalog records of a log path (after ``after``, when given), in log order (``op``,
    ``entity_id``, ``attributes`` as JSON text, ...; an empty frame when there are none), and the
    cursor of the last one read (``report``: as :func:`read_log_events`)."""
    return read_log_events(catalog_dir(path), after, kind="catalog", report=report)


def _upsert_rows(table: pd.DataFrame, key: str, rows: dict[str, dict]) -> tuple[pd.DataFrame, int, int]:
    """``table`` with each id's attributes set (a known id: the columns it names; a new id: a new row,
    the other columns missing). Attributes of columns the table lacks are left out (the catalog model
    accepts the run's feature columns and ``title``: a dataset without titles gets none). An integer
    column stays integers (Python ints, None for missing) rather than turning float: a categorical
    encoder would learn "7.0" where requests say "7". -> (table, new, updated)"""
    if not rows:
        return table, 0, 0
    pos = pd.Index(table[key].astype(str)).get_indexer(list(rows))
    ints = [c for c in table.columns if table[c].dtype.kind in "iu"]
    table = table.copy()
    updates: dict[str, dict[int, object]] = {}
    for p, attrs in zip(pos, rows.values()):
        for col, v in attrs.items():
            if p >= 0 and col in table.columns and col != key:
                updates.setdefault(col, {})[int(p)] = v
    for col, values in updates.items():  # one rebuilt column each (its dtype inferred again: no mixed upcasts)
        current = table[col].tolist()
        for p, v in values.items():
            current[p] = v
        table[col] = pd.Series(current, index=table.index).infer_objects()
    new = [{key: i, **{c: v for c, v in attrs.items() if c in table.columns and c != key}}
           for (i, attrs), p in zip(rows.items(), pos) if p < 0]
    if new:
        table = pd.concat([table, pd.DataFrame(new, columns=list(table.columns))], ignore_index=True)
    for col in ints:
        v = table[col]
        if v.dtype.kind == "f" and bool(((v.dropna() % 1) == 0).all()):
            values = [None if pd.isna(x) else int(x) for x in v.tolist()]
            table[col] = pd.Series(values, index=table.index, dtype=object)
    return table, len(new), int((pos >= 0).sum())


def merge_catalog(dataset: Dataset, records: pd.DataFrame) -> tuple[Dataset, dict[str, int]]:
    """``dataset`` with the log's catalog records applied to its item and user tables, in log order
    (``events.catalog.fold_records``: the same folding every served ``recommend`` does): an upsert of
    a known item or user sets the attributes it names, an upsert of a new one adds a row. Blocks are a
    serving rule, not data: not applied. -> (dataset, counts: catalog_new_items,
    catalog_updated_items, catalog_new_users, catalog_updated_users)

    Raises:
        DataError: a record the catalog model would not have accepted (an unknown op).
    """
    from events.catalog import fold_records

    try:
        changes = fold_records(records)
    except ValueError as e:
        raise DataError(f"the event log's catalog records cannot be read: {e}") from e
    items, new_items, updated_items = _upsert_rows(dataset.items, "item_id", changes.items)
    users, new_users, updated_users = _upsert_rows(dataset.users, "user_id", changes.users)
    report = {"catalog_new_items": new_items, "catalog_updated_items": updated_items,
              "catalog_new_users": new_users, "catalog_updated_users": updated_users}
    if not (new_items or updated_items or new_users or updated_users):
        return dataset, report
    return Dataset(dataset.name, dataset.interactions, items, users, dict(dataset.meta)), report


def _keys(frame: pd.DataFrame) -> np.ndarray:
    keyed = pd.DataFrame({"user_id": frame["user_id"].astype(str), "item_id": frame["item_id"].astype(str),
                          "timestamp": frame["timestamp"].astype(np.int64)})
    return pd.util.hash_pandas_object(keyed, index=False).to_numpy()


def merge_interactions(dataset: Dataset, new: pd.DataFrame) -> tuple[Dataset, dict[str, int]]:
    """``dataset`` with the rows of ``new`` that it does not hold yet (same user, item, second).

    The dataset's own columns are kept: ``weight`` comes along only when the dataset has one
    (a binary dataset stays binary). Users new to the data get a users row of unknown attributes
    (:class:`features.schema.Dataset` adds it).
    """
    known = dataset.interactions
    dup = np.isin(_keys(new), _keys(known)) if len(new) else np.zeros(0, dtype=bool)
    added = new[~dup]
    cols = [c for c in (*KEY, "weight") if c in known.columns]
    extra = added[cols]
    merged = pd.concat([known, extra], ignore_index=True) if len(extra) else known
    report = {"in_data": int(dup.sum()), "added": int(len(added)),
              "new_users": int(len(set(added["user_id"]) - set(dataset.users["user_id"].astype(str))))}
    return Dataset(dataset.name, merged, dataset.items, dataset.users, dict(dataset.meta)), report


def exposure_negatives(impressions: pd.DataFrame, positives: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Served items that got no positive from their user within ``window_s`` after being shown.

    Args:
        impressions: one row per served position (``read_log(..., "impressions", explode=True)``:
            ``user_id``, ``item_id``, ``timestamp`` the request time).
        positives: the interactions (``user_id``, ``item_id``, ``timestamp``): data and log merged.
        window_s: a positive at ``shown <= t < shown + window_s`` makes the impression a click.

    Returns:
        (``user_id``, ``item_id``, ``timestamp`` of the impression), one row per (user, item,
        impression time) without such a positive.
    """
    if window_s <= 0:
        raise DataError(f"ranking.impression_negatives.window_s={window_s} must be > 0 (seconds)")
    cols = list(KEY)
    if len(impressions) == 0:
        return pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str),
                             "timestamp": pd.Series([], dtype=np.int64)})
    shown = pd.DataFrame({"user_id": impressions["user_id"].astype(str), "item_id": impressions["item_id"].astype(str),
                          "timestamp": pd.to_numeric(impressions["timestamp"], errors="coerce")})
    shown = shown.dropna().drop_duplicates(cols, ignore_index=True)
    pos = pd.DataFrame({"user_id": positives["user_id"].astype(str), "item_id": positives["item_id"].astype(str),
                        "t": positives["timestamp"].astype(np.float64)}).sort_values("t", kind="stable")
    shown["row"] = np.arange(len(shown))
    # The first positive of the same (user, item) at or after the impression.
    m = pd.merge_asof(shown.sort_values("timestamp", kind="stable"), pos, left_on="timestamp", right_on="t",
                      by=["user_id", "item_id"], direction="forward")
    clicked = m["t"].notna() & (m["t"] < m["timestamp"] + window_s)
    neg = m[~clicked.to_numpy()].sort_values("row")
    return pd.DataFrame({"user_id": neg["user_id"].to_numpy(), "item_id": neg["item_id"].to_numpy(),
                         "timestamp": np.floor(neg["timestamp"].to_numpy()).astype(np.int64)})


@dataclass
class Feedback:
    """What a run took from the event log."""

    dataset: Dataset  # the configured data with the logged interactions merged in
    cursor: LogCursor | None  # the last event read
    negatives: pd.DataFrame | None  # exposure negatives (None: no impression log / not asked)
    report: dict = field(default_factory=dict)


def load_feedback(dataset: Dataset, log_path: str | os.PathLike, types, default_weight: float,
                  negatives_window_s: float | None) -> Feedback:
    """Merge a log's events into ``dataset``; with ``negatives_window_s``, extract exposure negatives.

    Raises:
        DataError: the log path does not exist or is not an event log.
    """
    events_dir, impressions_dir = log_dirs(log_path)
    try:
        events, cursor = read_log_events(events_dir)
    except Exception as e:  # a corrupt segment or another schema version: say which log
        raise DataError(f"cannot read the event log {events_dir}: {e}") from e
    try:
        records, _ = read_log_catalog(log_path)  # every record: the data's own tables know none of them
    except Exception as e:  # noqa: BLE001 - as for the events: say which log
        raise DataError(f"cannot read the catalog records of the event log {log_path}: {e}") from e
    dataset, catalog_report = merge_catalog(dataset, records)  # first: events may name items added online
    new, report = log_interactions(events, types, dataset.items["item_id"], default_weight)
    merged, merge_report = merge_interactions(dataset, new)
    report.update(merge_report)
    report.update(catalog_report)
    negatives = None
    if negatives_window_s is not None and impressions_dir is None:
        log.warning("impression negatives asked for, but %s has no impressions/ folder: none used", log_path)
    if negatives_window_s is not None and impressions_dir is not None:
        shown = read_log(impressions_dir, "impressions", explode=True)
        negatives = exposure_negatives(shown, merged.interactions, negatives_window_s)
        report.update(impressions=int(shown["request_id"].nunique()) if len(shown) else 0,
                      impression_positions=int(len(shown)), exposure_negatives=int(len(negatives)))
    log.info("event log %s (up to segment %d row %d): %s", events_dir, cursor.segment, cursor.rowid, report)
    return Feedback(merged, cursor, negatives, report)
