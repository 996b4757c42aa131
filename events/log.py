"""A durable, append-only log of interaction events and served impressions, and its reader.

The serving path appends one small batch per request (the events a client sent, or the list it was
served) and acknowledges only after ``append_*`` returned, so an acknowledged row must survive a
killed process. Retraining reads the whole log back as a DataFrame (``read_log``).

Why SQLite in WAL mode, one database file per segment:

- **Transactional append of a small batch.** One request is one ``BEGIN IMMEDIATE ... COMMIT``:
  all its rows or none, and the commit returns only when the WAL frames are written (and, with
  ``synchronous=FULL``, fsynced). Appending to the WAL never rewrites a file. Parquet cannot be
  appended to: one file per request, or a buffer that a crash loses. DuckDB allows one writing
  process per database file, and two serving instances write at once.
- **Many writer processes.** An exclusive ``fcntl.flock`` on ``log.lock`` serialises "find the
  current segment, maybe rotate, check ids, insert, commit, maybe drop old segments" across
  processes; SQLite's own locks (with ``busy_timeout``) keep its files consistent underneath, and
  WAL readers (``read_log``, ``stats``) never block the writers.
- **Crash-safe.** A torn write at the tail of the WAL is discarded when the file is next opened;
  every committed transaction is kept. ``durability="full"`` (``synchronous=FULL``) fsyncs the WAL
  at every commit: an acknowledged append survives SIGKILL and a power cut. ``"normal"``
  (``synchronous=NORMAL``) fsyncs only at checkpoints: an acknowledged append survives a killed
  process (the bytes are in the OS page cache), not a power cut. docs/events.md has the cost of each.
- **Standard library.** ``sqlite3`` ships with Python, so the Triton python-backend stub can
  import this module with nothing installed.

Segments ``segment-000001.sqlite``, ``segment-000002.sqlite``, ... each hold both tables. When the
current (highest-numbered) segment reaches ``max_segment_bytes`` the next append starts a new one;
when all segments together exceed ``max_total_bytes`` the oldest are deleted (never the current one),
with a warning on the ``events.log`` logger. Ids are idempotent across every live segment:
re-appending an ``event_id`` / ``request_id`` that is stored returns False and stores nothing. Deleting
a segment ends the idempotency window for the ids in it: a retry of one of them after that is stored
again. Segment numbers are never reused, so ``first live number - 1`` segments have been dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import numbers
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

KINDS = ("events", "impressions")
DURABILITY = {"full": "FULL", "normal": "NORMAL"}

# Column -> pandas dtype as ``read_log`` returns it. The last column of each is set by the log.
EVENT_DTYPES: dict[str, str] = {
    "event_id": "str",  # unique: the idempotency key
    "user_id": "str",
    "item_id": "str",
    "timestamp": "float64",  # event time, Unix seconds
    "type": "str",  # view / click / purchase / impression / rating / ...
    "weight": "float64",  # NaN when not given
    "received_at": "float64",  # Unix seconds, when the log stored it
}
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_DTYPES)
EVENT_REQUIRED: tuple[str, ...] = ("event_id", "user_id", "item_id", "timestamp", "type")

IMPRESSION_DTYPES: dict[str, str] = {
    "request_id": "str",  # unique: the idempotency key
    "user_id": "str",
    "items": "object",  # list[str] in served order; position = index
    "scores": "object",  # list[float], one per item (or empty)
    "reasons": "object",  # list[str], one per item (or empty)
    "route": "str",
    "ranker": "str",
    "model_version": "str",
    "timestamp": "float64",  # request time, Unix seconds
    "served_at": "float64",  # Unix seconds, when the log stored it
}
IMPRESSION_COLUMNS: tuple[str, ...] = tuple(IMPRESSION_DTYPES)
IMPRESSION_REQUIRED: tuple[str, ...] = ("request_id", "user_id", "items", "timestamp")

# read_log(kind="impressions", explode=True): one row per (request, position).
EXPLODED_IMPRESSION_DTYPES: dict[str, str] = {
    "request_id": "str",
    "user_id": "str",
    "position": "int64",  # 0 = first served
    "item_id": "str",
    "score": "float64",  # NaN when the impression carried no scores
    "reason": "str",
    "route": "str",
    "ranker": "str",
    "model_version": "str",
    "timestamp": "float64",
    "served_at": "float64",
}
EXPLODED_IMPRESSION_COLUMNS: tuple[str, ...] = tuple(EXPLODED_IMPRESSION_DTYPES)

MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 4096
MIN_SEGMENT_BYTES = 8 * PAGE_SIZE  # an empty segment is 5 pages
SCHEMA_VERSION = 1  # PRAGMA user_version of every segment
LOCK_NAME = "log.lock"
BUSY_TIMEOUT_S = 30.0
_SEGMENT = re.compile(r"segment-(\d{6,})\.sqlite")
_SEGMENT_FILE = re.compile(r"segment-(\d{6,})\.sqlite(-wal|-shm)?")  # a segment or one of its sidecars
_MAX_SQL_VARS = 500  # ids per "IN (...)" probe

_DDL = """
CREATE TABLE events (
    event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
    timestamp REAL NOT NULL, type TEXT NOT NULL, weight REAL, received_at REAL NOT NULL);
CREATE TABLE impressions (
    request_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, items TEXT NOT NULL, scores TEXT NOT NULL,
    reasons TEXT NOT NULL, route TEXT, ranker TEXT, model_version TEXT,
    timestamp REAL NOT NULL, served_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class _Kind:
    """One table of the log: its columns, key, stamp column and how each field is checked."""

    table: str
    noun: str  # "event" / "impression", for messages
    key: str
    stamp: str
    dtypes: dict[str, str]
    required: tuple[str, ...]
    rules: dict[str, str]  # field -> rule name in _RULES (every column but the stamp)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.dtypes)


_KINDS = {
    "events": _Kind(
        "events", "event", "event_id", "received_at", EVENT_DTYPES, EVENT_REQUIRED,
        {"event_id": "id", "user_id": "id", "item_id": "id", "timestamp": "time", "type": "label",
         "weight": "number"},
    ),
    "impressions": _Kind(
        "impressions", "impression", "request_id", "served_at", IMPRESSION_DTYPES, IMPRESSION_REQUIRED,
        {"request_id": "id", "user_id": "id", "items": "id_list", "scores": "number_list",
         "reasons": "text_list", "route": "text", "ranker": "text", "model_version": "text",
         "timestamp": "time"},
    ),
}


def _kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise ValueError(f"unknown log kind {kind!r}; known: {', '.join(KINDS)}")
    return _KINDS[kind]


# ---------------------------------------------------------------------------------------------
# Validation: the last guard before a row is stored. Every rule returns the stored value or raises
# _FieldError with the second half of a message ("must be ..., got ...").


class _FieldError(Exception):
    pass


def _absent(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT


def _nan(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isnan(v)


def _id(v) -> str:
    if isinstance(v, str) and v:
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(int(v))
    raise _FieldError(f"must be a non-empty string, got {v!r} ({type(v).__name__})")


def _label(v) -> str:
    if isinstance(v, str) and v:
        return v
    raise _FieldError(f"must be a non-empty string, got {v!r} ({type(v).__name__})")


def _text(v) -> str:
    if isinstance(v, str):
        return v
    raise _FieldError(f"must be a string, got {v!r} ({type(v).__name__})")


def _number(v) -> float:
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise _FieldError(f"must be a finite number, got {v!r} ({type(v).__name__})")


def _time(v) -> float:
    try:
        return _number(v)
    except _FieldError:
        raise _FieldError(f"must be a finite number of Unix seconds, got {v!r} ({type(v).__name__})") from None


def _sequence(v) -> Sequence:
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (Sequence, np.ndarray, pd.Series)):
        raise _FieldError(f"must be a list, got {v!r} ({type(v).__name__})")
    return list(v)


def _each(rule):
    def check(v) -> list:
        out = []
        for j, x in enumerate(_sequence(v)):
            try:
                out.append(rule(x))
            except _FieldError as e:
                raise _FieldError(f"element {j} {e}") from None
        return out

    return check


_RULES = {"id": _id, "label": _label, "text": _text, "number": _number, "time": _time,
          "id_list": _each(_id), "number_list": _each(_number), "text_list": _each(_text)}


def _check_row(kind: _Kind, i: int, row) -> tuple:
    """One input row -> the values to store, in column order (without the stamp)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{kind.noun} row {i}: expected a mapping of column -> value, got {type(row).__name__}")
    unknown = sorted(set(row) - set(kind.columns), key=str)
    if unknown:
        raise ValueError(f"{kind.noun} row {i}: unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(kind.columns)}")
    values = {}
    for field, rule in kind.rules.items():
        v = row.get(field)
        # NaN is pandas' "missing" for every non-numeric field and for an optional number;
        # a NaN timestamp is a broken value, reported as such by its rule.
        missing = _absent(v) or (_nan(v) and not (field in kind.required and rule == "time"))
        if missing:
            if field in kind.required:
                raise ValueError(f"{kind.noun} row {i}: required field {field!r} is missing; "
                                 f"required: {', '.join(kind.required)}")
            values[field] = [] if rule.endswith("_list") else None
            continue
        try:
            values[field] = _RULES[rule](v)
        except _FieldError as e:
            raise ValueError(f"{kind.noun} row {i}: field {field!r} {e}") from None
    if kind.table == "impressions":
        for field in ("scores", "reasons"):
            n, m = len(values[field]), len(values["items"])
            if n not in (0, m):
                raise ValueError(f"impression row {i}: field {field!r} has {n} values for {m} items; "
                                 "give one per item, or none")
        for field in ("items", "scores", "reasons"):
            values[field] = json.dumps(values[field], separators=(",", ":"))
    return tuple(values[c] for c in kind.columns if c != kind.stamp)


def _check_rows(kind: _Kind, rows) -> list[tuple]:
    if isinstance(rows, pd.DataFrame):
        unknown = [c for c in rows.columns if c not in kind.columns]
        if unknown:
            raise ValueError(f"{kind.noun} rows: unknown column(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(kind.columns)}")
        rows = rows.to_dict("records")
    elif isinstance(rows, Mapping) or not isinstance(rows, Sequence) or isinstance(rows, str):
        raise ValueError(f"{kind.noun} rows must be a list of dicts or a DataFrame, got "
                         f"{type(rows).__name__} (wrap a single row in a list)")
    return [_check_row(kind, i, row) for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# Segment files


def _segment_path(directory: Path, n: int) -> Path:
    return directory / f"segment-{n:06d}.sqlite"


def _list_segments(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for e in os.scandir(directory) if (m := _SEGMENT.fullmatch(e.name)))


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _segment_bytes(directory: Path, n: int) -> int:
    """On-disk size of a segment: the database file and its WAL."""
    path = _segment_path(directory, n)
    return _file_bytes(path) + _file_bytes(path.with_name(path.name + "-wal"))


def _require_directory(directory: Path) -> None:
    if not directory.exists():
        raise FileNotFoundError(f"event log directory {directory} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"event log directory {directory} is not a directory")


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: segment schema version {version}, this code knows {SCHEMA_VERSION}; "
                         "read it with the version of events.log that wrote it")


def _open_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to one segment, or None when it was deleted meanwhile."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.OperationalError:
        if not path.exists():  # dropped by a writer between listing and opening
            return None
        raise
    try:
        _check_version(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


# ---------------------------------------------------------------------------------------------
# The writer


class EventLog:
    """Append-only event and impression log in ``directory`` (created if missing).

    Open one per process; several processes may append to the same directory at once. A batch is
    checked whole before anything is written, so a broken row stores nothing of its batch.

    Args:
        directory: folder of the segment files and the lock file.
        max_segment_bytes: start a new segment when the current one reaches this size (its data
            pages; may be exceeded by one batch).
        max_total_bytes: delete the oldest segments (never the current one) while all segment files
            together exceed this; their ids leave the idempotency window.
        durability: ``"full"`` (``synchronous=FULL``: an acknowledged append survives SIGKILL and a
            power cut) or ``"normal"`` (``synchronous=NORMAL``: survives a killed process only).
    """

    def __init__(self, directory: str | os.PathLike, max_segment_bytes: int = 64 * MiB,
                 max_total_bytes: int = 1 * GiB, durability: str = "full") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"unknown durability {durability!r}; known: {', '.join(DURABILITY)}")
        if not isinstance(max_segment_bytes, int) or max_segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"max_segment_bytes={max_segment_bytes!r}: must be an int >= {MIN_SEGMENT_BYTES} "
                             "(an empty segment takes 20 KiB)")
        if not isinstance(max_total_bytes, int) or max_total_bytes < max_segment_bytes:
            raise ValueError(f"max_total_bytes={max_total_bytes!r}: must be an int >= max_segment_bytes "
                             f"({max_segment_bytes})")
        self.directory = Path(directory)
        self.max_segment_bytes = max_segment_bytes
        self.max_total_bytes = max_total_bytes
        self.durability = durability
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing the fd
        self._conns: dict[int, sqlite3.Connection] = {}
        # A WAL no larger than a quarter segment, so the current segment's on-disk size tracks its data.
        self._wal_pages = max(16, min(1000, max_segment_bytes // PAGE_SIZE // 4))
        self._closed = False

    # -- public ---------------------------------------------------------------------------------

    def append_events(self, rows: Sequence[Mapping] | pd.DataFrame) -> list[bool]:
        """Store interaction events; ``received_at`` is set here (any given value is replaced).

        Args:
            rows: dicts or a DataFrame with the ``EVENT_COLUMNS`` (``weight`` optional).

        Returns:
            Per row, True if newly stored, False if its ``event_id`` was already in the log (or
            earlier in the same batch). Returns after the commit: True means durable.

        Raises:
            ValueError: a row misses a required field or has a bad value (message names the row
                index and the field); nothing of the batch is stored.
        """
        return self._append(_KINDS["events"], rows)

    def append_impressions(self, rows: Sequence[Mapping] | pd.DataFrame) -> list[bool]:
        """Store served lists, idempotent by ``request_id``; ``served_at`` is set here.

        Args:
            rows: dicts or a DataFrame with the ``IMPRESSION_COLUMNS``: ``items`` a list of item ids
                in served order, ``scores`` / ``reasons`` one per item or empty, ``route`` /
                ``ranker`` / ``model_version`` optional strings.

        Returns:
            Per row, True if newly stored, False if its ``request_id`` was already in the log.

        Raises:
            ValueError: as ``append_events``; also when ``scores`` or ``reasons`` do not match ``items``.
        """
        return self._append(_KINDS["impressions"], rows)

    def stats(self) -> dict:
        """Telemetry of the whole directory (all processes' appends): see ``log_stats``."""
        self._check_open()
        return log_stats(self.directory)

    def close(self) -> None:
        """Close the segment connections and the lock file; later appends raise ValueError."""
        with self._thread_lock:
            if self._closed:
                return
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
            os.close(self._lock_fd)
            self._closed = True

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EventLog({str(self.directory)!r}, max_segment_bytes={self.max_segment_bytes}, "
                f"max_total_bytes={self.max_total_bytes}, durability={self.durability!r})")

    # -- append ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def _append(self, kind: _Kind, rows) -> list[bool]:
        records = _check_rows(kind, rows)
        with self._thread_lock:
            self._check_open()
            if not records:
                return []
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                segments, sizes = self._sync_segments()
                current = self._current_segment(segments)
                key = kind.columns.index(kind.key)
                stored = self._stored_keys(kind, {r[key] for r in records}, segments)
                new, seen = [], set()
                for r in records:
                    new.append(r[key] not in stored and r[key] not in seen)
                    seen.add(r[key])
                if any(new):
                    now = time.time()
                    self._insert(kind, current, [r + (now,) for r, is_new in zip(records, new) if is_new])
                    sizes[current] = _segment_bytes(self.directory, current)
                    self._enforce_total(segments, sizes)
                return new
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _insert(self, kind: _Kind, n: int, values: list[tuple]) -> None:
        conn = self._conns[n]
        sql = f"INSERT INTO {kind.table} ({', '.join(kind.columns)}) VALUES ({', '.join('?' * len(kind.columns))})"
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _stored_keys(self, kind: _Kind, keys: set[str], segments: list[int]) -> set[str]:
        """The keys among ``keys`` already in any live segment (newest first: retries are recent)."""
        pending, found = set(keys), set()
        for n in reversed(segments):
            conn = self._conn(n)
            batch = list(pending)
            for start in range(0, len(batch), _MAX_SQL_VARS):
                chunk = batch[start:start + _MAX_SQL_VARS]
                sql = f"SELECT {kind.key} FROM {kind.table} WHERE {kind.key} IN ({', '.join('?' * len(chunk))})"
                found.update(k for (k,) in conn.execute(sql, chunk))
            pending -= found
            if not pending:
                break
        return found

    # -- segments (all under the flock) ---------------------------------------------------------

    def _sync_segments(self) -> tuple[list[int], dict[int, int]]:
        """Live segment numbers (oldest first) and their bytes on disk (file + WAL); forgets the
        segments another process dropped and removes their orphan sidecars."""
        mains, sizes, sidecars = set(), {}, []
        for e in os.scandir(self.directory):
            if not (m := _SEGMENT_FILE.fullmatch(e.name)):
                continue
            n, suffix = int(m.group(1)), m.group(2)
            if suffix is None:
                mains.add(n)
            else:
                sidecars.append((n, e.path))
            if suffix != "-shm":
                try:
                    sizes[n] = sizes.get(n, 0) + e.stat().st_size
                except FileNotFoundError:
                    pass
        for n in [n for n in self._conns if n not in mains]:  # dropped by another process
            self._conns.pop(n).close()
        if not mains:
            self._create_segment(1)
            mains.add(1)
        first = min(mains)
        for n, path in sidecars:
            # a WAL / shm file whose segment is gone (a reader re-created it, or a crash mid-drop);
            # segments appear by rename, so a new segment never has a sidecar before its file
            if n < first and n not in mains:
                _unlink(Path(path))
        return sorted(mains), {n: sizes.get(n, 0) for n in mains}

    def _conn(self, n: int) -> sqlite3.Connection:
        conn = self._conns.get(n)
        if conn is None:
            path = _segment_path(self.directory, n)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            try:
                _check_version(conn, path)
                conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
                conn.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
                conn.execute(f"PRAGMA journal_size_limit={self._wal_pages * PAGE_SIZE}")
            except BaseException:
                conn.close()
                raise
            self._conns[n] = conn
        return conn

    def _current_segment(self, segments: list[int]) -> int:
        """The segment to append to: the newest, or a new one when the newest is full."""
        n = segments[-1]
        conn = self._conn(n)
        if conn.execute("PRAGMA page_count").fetchone()[0] * PAGE_SIZE < self.max_segment_bytes:
            return n
        # Seal it: move its WAL into the database file and empty the WAL, so its size on disk is
        # its data. Best effort: a reader in the middle of a read can hold the WAL back.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._create_segment(n + 1)
        segments.append(n + 1)
        return n + 1

    def _create_segment(self, n: int) -> None:
        """Initialise a segment under a temporary name and rename it into place, so that nobody
        (a reader without the lock included) ever sees a segment without its tables."""
        final = _segment_path(self.directory, n)
        tmp = final.with_name(final.name + ".tmp")
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-wal", "-shm", "-journal"))):
            _unlink(leftover)  # from a process killed mid-creation (we hold the lock)
        with closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.executescript(_DDL + f"PRAGMA user_version={SCHEMA_VERSION};")
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file header
        if self.durability == "full":
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
        if self.durability == "full":  # the new name itself must survive a power cut
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        log.info("event log %s: started segment %s", self.directory, final.name)

    def _enforce_total(self, segments: list[int], bytes_on_disk: dict[int, int]) -> None:
        """Delete the oldest segments while the directory holds more than ``max_total_bytes``."""
        sizes = [bytes_on_disk[n] if n in bytes_on_disk else _segment_bytes(self.directory, n) for n in segments]
        total = sum(sizes)
        while total > self.max_total_bytes and len(segments) > 1:
            n, size = segments.pop(0), sizes.pop(0)
            conn = self._conn(n)
            events, impressions = (_row_count(conn, t) for t in KINDS)
            conn.close()
            del self._conns[n]
            path = _segment_path(self.directory, n)
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                _unlink(p)
            total -= size
            log.warning("event log %s: %d bytes > max_total_bytes %d; deleted the oldest segment %s "
                        "(%d bytes, %d events, %d impressions); their ids leave the idempotency window",
                        self.directory, total + size, self.max_total_bytes, path.name, size, events,
                        impressions)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _row_count(conn: sqlite3.Connection, table: str) -> int:
    # Rows are never deleted from a segment, so rowids are exactly 1..n and max(rowid) is the count,
    # read from the end of the b-tree instead of a scan.
    return conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0


# ---------------------------------------------------------------------------------------------
# Readers (no lock: WAL readers see the last committed state and never block the writers)


def log_stats(directory: str | os.PathLike) -> dict:
    """Telemetry of a log directory, for the metrics endpoint and ``recsys-log stats``.

    Returns:
        ``segments`` (live segment files), ``bytes`` (segment files and their WALs),
        ``events``, ``impressions`` (rows stored in live segments), ``dropped_segments`` (deleted
        by the total bound so far), ``last_event_at`` / ``last_impression_at`` (``received_at`` /
        ``served_at`` of the newest row, Unix seconds; None when there is none).

    Raises:
        FileNotFoundError: the directory does not exist (NotADirectoryError: it is a file).
    """
    directory = Path(directory)
    _require_directory(directory)
    segments = _list_segments(directory)
    out = {"segments": 0, "bytes": 0, "events": 0, "impressions": 0,
           "dropped_segments": segments[0] - 1 if segments else 0,
           "last_event_at": None, "last_impression_at": None}
    for n in reversed(segments):  # newest first: the first stamp found is the latest
        conn = _open_readonly(_segment_path(directory, n))
        if conn is None:
            continue
        with closing(conn):
            out["segments"] += 1
            out["bytes"] += _segment_bytes(directory, n)
            for kind, last in (("events", "last_event_at"), ("impressions", "last_impression_at")):
                out[kind] += _row_count(conn, kind)
                if out[last] is None:
                    row = conn.execute(f"SELECT {_KINDS[kind].stamp} FROM {kind} ORDER BY rowid DESC LIMIT 1").fetchone()
                    out[last] = row[0] if row else None
    return out


def _bound(name: str, value) -> float | None:
    if value is None:
        return None
    try:
        return _number(value)
    except _FieldError as e:
        raise ValueError(f"{name} {e}") from None


def read_log(directory: str | os.PathLike, kind: str = "events", since: float | None = None,
             until: float | None = None, explode: bool = False) -> pd.DataFrame:
    """Every stored row of one kind, oldest segment first and in append order within a segment.

    Args:
        directory: the log directory.
        kind: ``"events"`` or ``"impressions"``.
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
    spec = _kind(kind)
    if explode and kind != "impressions":
        raise ValueError(f"explode=True applies to impressions only, not {kind!r}")
    lo, hi = _bound("since", since), _bound("until", until)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"since={lo} is after until={hi}")
    directory = Path(directory)
    _require_directory(directory)
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
    for n in _list_segments(directory):
        conn = _open_readonly(_segment_path(directory, n))
        if conn is not None:
            with closing(conn):
                rows.extend(conn.execute(sql, params))
    columns = {c: [r[j] for r in rows] for j, c in enumerate(spec.columns)}
    if kind == "impressions":
        for c in ("items", "scores", "reasons"):
            columns[c] = [json.loads(v) for v in columns[c]]
        if explode:
            return _frame(_explode(columns), EXPLODED_IMPRESSION_DTYPES)
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


def arrow_schema(kind: str = "events", explode: bool = False) -> pa.Schema:
    """The pyarrow schema of ``read_log(kind, explode=...)``'s frame (for parquet files)."""
    types = {"str": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    lists = {"items": pa.list_(pa.string()), "scores": pa.list_(pa.float64()), "reasons": pa.list_(pa.string())}
    spec = _kind(kind)
    dtypes = EXPLODED_IMPRESSION_DTYPES if explode and kind == "impressions" else spec.dtypes
    return pa.schema([(c, lists[c] if d == "object" else types[d]) for c, d in dtypes.items()])
