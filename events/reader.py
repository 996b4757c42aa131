"""Reading the event log back: every row of one kind as a typed DataFrame (``read_log``) and the
log's telemetry (``log_stats``). No lock: WAL readers see the last committed state and never block
the writers; a segment dropped while it is read is skipped (or read to its end when already open)."""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pandas as pd

from events.schema import EXPLODED_IMPRESSION_DTYPES, TABLES, table
from events.segments import (has_table, list_segments, open_readonly, require_directory, row_count, segment_bytes,
                             segment_path)


def log_size(directory: str | os.PathLike) -> dict:
    """``bytes``, ``segments`` and ``dropped_segments`` of a log directory from the file system alone
    (no segment opened: cheap enough for a metrics thread); zeros when the directory does not exist yet."""
    directory = Path(directory)
    segments = list_segments(directory) if directory.is_dir() else []
    return {"bytes": sum(segment_bytes(directory, n) for n in segments), "segments": len(segments),
            "dropped_segments": segments[0] - 1 if segments else 0}


def log_stats(directory: str | os.PathLike) -> dict:
    """Telemetry of a log directory, for the metrics endpoint and ``recsys-log stats``.

    Returns:
        ``segments`` (live segment files), ``bytes`` (segment files and their WALs),
        ``events``, ``impressions``, ``catalog`` (rows stored in live segments), ``dropped_segments``
        (deleted by the total bound so far), ``last_event_at`` / ``last_impression_at`` /
        ``last_catalog_at`` (the stamp of the newest row, Unix seconds; None when there is none).

    Raises:
        FileNotFoundError: the directory does not exist (NotADirectoryError: it is a file).
    """
    directory = Path(directory)
    require_directory(directory)
    segments = list_segments(directory)
    out = {"segments": 0, "bytes": 0, "events": 0, "impressions": 0, "catalog": 0,
           "dropped_segments": segments[0] - 1 if segments else 0,
           "last_event_at": None, "last_impression_at": None, "last_catalog_at": None}
    for n in reversed(segments):  # newest first: the first stamp found is the latest
        conn = open_readonly(segment_path(directory, n))
        if conn is None:
            continue
        with closing(conn):
            out["segments"] += 1
            out["bytes"] += segment_bytes(directory, n)
            for kind, last in (("events", "last_event_at"), ("impressions", "last_impression_at"),
                               ("catalog", "last_catalog_at")):
                if not has_table(conn, kind):  # the catalog table of a version-1 segment
                    continue
                out[kind] += row_count(conn, kind)
                if out[last] is None:
                    stamp = TABLES[kind].stamp
                    row = conn.execute(f"SELECT {stamp} FROM {kind} ORDER BY rowid DESC LIMIT 1").fetchone()
                    out[last] = row[0] if row else None
    return out


def _bound(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{name} must be a finite number, got {value!r} ({type(value).__name__})")


def read_log(directory: str | os.PathLike, kind: str = "events", since: float | None = None,
             until: float | None = None, explode: bool = False) -> pd.DataFrame:
    """Every stored row of one kind, oldest segment first and in append order within a segment.

    Args:
        directory: the log directory.
        kind: ``"events"``, ``"impressions"`` or ``"catalog"`` (its ``attributes`` decoded to dicts).
        since, until: keep rows with ``since <= timestamp < until`` (event / request time, Unix
            seconds); None leaves that side open.
        explode: impressions only: one row per (request, position) with ``position``, ``item_id``,
            ``score``, ``reason`` instead of the list columns (``EXPLODED_IMPRESSION_COLUMNS``).

    Returns:
        A DataFrame with ``EVENT_COLUMNS`` / ``IMPRESSION_COLUMNS`` and their dtypes (list columns
        decoded to Python lists); an empty typed frame when the directory holds no rows.

    Raises:
        FileNotFoundError: the directory does not exist (NotADirectoryError: it is a file).
        ValueError: unknown kind, ``explode`` for events, or a bad ``since`` / ``until``.
    """
    spec = table(kind)
    if explode and kind != "impressions":
        raise ValueError(f"explode=True applies to impressions only, not {kind!r}")
    lo, hi = _bound("since", since), _bound("until", until)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"since={lo} is after until={hi}")
    directory = Path(directory)
    require_directory(directory)
    where, params = [], []
    if lo is not None:
        where.append("timestamp >= ?")
        params.append(lo)
    if hi is not None:
        where.append("timestamp < ?")
        params.append(hi)
    sql = (f"SELECT {', '.join(spec.columns)} FROM {spec.table}"
           f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY rowid")
    rows: list[tuple] = []
    for n in list_segments(directory):
        path = segment_path(directory, n)
        try:
            conn = open_readonly(path)
            if conn is not None:
                with closing(conn):
                    if has_table(conn, spec.table):
                        rows.extend(conn.execute(sql, params))
        except sqlite3.OperationalError as err:  # locked, unreadable, an I/O error: not the file's content
            raise sqlite3.OperationalError(f"{path}: {err}") from None
        except sqlite3.DatabaseError as err:  # "file is not a database" alone did not say which file
            raise sqlite3.DatabaseError(f"{path}: {err}; this segment is damaged: move it out of the folder (its "
                                        "rows are lost) or restore it from a copy, then read again") from None
    columns = {c: [r[j] for r in rows] for j, c in enumerate(spec.columns)}
    if kind == "impressions":
        for c in ("items", "scores", "reasons"):
            columns[c] = [json.loads(v) for v in columns[c]]
        if explode:
            return _frame(_explode(columns), EXPLODED_IMPRESSION_DTYPES)
    if kind == "catalog":
        columns["attributes"] = [json.loads(v) for v in columns["attributes"]]
    return _frame(columns, spec.dtypes)


def _explode(c: dict[str, list]) -> dict[str, list]:
    lengths = [len(items) for items in c["items"]]
    out = {name: [v for v, n in zip(c[name], lengths) for _ in range(n)]
           for name in ("request_id", "user_id", "route", "ranker", "model_version", "timestamp", "served_at")}
    out["position"] = [p for n in lengths for p in range(n)]
    out["item_id"] = [i for items in c["items"] for i in items]
    out["score"] = [x for s, n in zip(c["scores"], lengths) for x in (s or [math.nan] * n)]
    out["reason"] = [x for r, n in zip(c["reasons"], lengths) for x in (r or [None] * n)]
    return out


def _frame(columns: dict[str, list], dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(columns[c], dtype=d) for c, d in dtypes.items()})
