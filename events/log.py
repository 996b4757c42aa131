"""A durable, append-only log of interaction events, served impressions and catalog records, and its reader.

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

Segments ``segment-000001.sqlite``, ``segment-000002.sqlite``, ... each hold every table (events,
impressions, catalog; a version-1 segment lacks the catalog table and is upgraded by a writer). When the
current (highest-numbered) segment reaches ``max_segment_bytes`` the next append starts a new one;
when all segments together exceed ``max_total_bytes`` the oldest are deleted (never the current one),
with a warning on the ``events.log`` logger. Ids are idempotent across every live segment:
re-appending an ``event_id`` / ``request_id`` that is stored returns False and stores nothing. Deleting
a segment ends the idempotency window for the ids in it: a retry of one of them after that is stored
again. Segment numbers are never reused, so ``first live number - 1`` segments have been dropped.
``log.lock`` also holds a generation counter of the segment set; never delete it while writers run.

The columns and row checks live in ``events.schema``, the segment files in ``events.segments``, the
readers in ``events.reader``; this module re-exports everything a caller needs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path

import pandas as pd

from events.reader import log_stats, read_log
from events.schema import (
    CATALOG_COLUMNS,
    CATALOG_DTYPES,
    CATALOG_REQUIRED,
    EVENT_COLUMNS,
    EVENT_DTYPES,
    EVENT_REQUIRED,
    EXPLODED_IMPRESSION_COLUMNS,
    EXPLODED_IMPRESSION_DTYPES,
    IMPRESSION_COLUMNS,
    IMPRESSION_DTYPES,
    IMPRESSION_REQUIRED,
    KINDS,
    TABLES,
    Table,
    arrow_schema,
    check_rows,
)
from events.segments import (
    BUSY_TIMEOUT_S,
    DDL,
    MIN_SEGMENT_BYTES,
    PAGE_SIZE,
    SCHEMA_VERSION,
    SEGMENT_FILE,
    check_version,
    ensure_log_id,
    row_count,
    upgrade,
    segment_bytes,
    segment_path,
    unlink,
)

__all__ = [
    "CATALOG_COLUMNS", "CATALOG_DTYPES", "CATALOG_REQUIRED", "DURABILITY", "EVENT_COLUMNS", "EVENT_DTYPES", "EVENT_REQUIRED", "EXPLODED_IMPRESSION_COLUMNS",
    "EXPLODED_IMPRESSION_DTYPES", "GiB", "IMPRESSION_COLUMNS", "IMPRESSION_DTYPES", "IMPRESSION_REQUIRED",
    "DEFAULT_SEGMENT_BYTES", "DEFAULT_TOTAL_BYTES", "KINDS", "LOCK_NAME", "MIN_SEGMENT_BYTES", "MiB", "EventLog", "arrow_schema", "log_stats", "read_log",
]

log = logging.getLogger(__name__)

DURABILITY = {"full": "FULL", "normal": "NORMAL"}  # EventLog(durability=...) -> PRAGMA synchronous
MiB = 1 << 20
GiB = 1 << 30
DEFAULT_SEGMENT_BYTES = 64 * MiB  # EventLog(max_segment_bytes=...)
DEFAULT_TOTAL_BYTES = 1 * GiB  # EventLog(max_total_bytes=...): per log directory
LOCK_NAME = "log.lock"
_MAX_SQL_VARS = 500  # ids per "IN (...)" probe


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

    def __init__(self, directory: str | os.PathLike, max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 max_total_bytes: int = DEFAULT_TOTAL_BYTES, durability: str = "full") -> None:
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
        self.log_id = ensure_log_id(self.directory)  # what cursors record (events.segments.log_id)
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing the fd
        self._conns: dict[int, sqlite3.Connection] = {}
        # What this process knows of the directory, valid while the lock file's generation is
        # self._generation: live segment numbers (oldest first) and their bytes on disk.
        self._generation: int | None = None
        self._segments: list[int] = []
        self._sizes: dict[int, int] = {}
        self._files: dict[int, str] = {}  # segment number -> path string (see _file)
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
        return self._append(TABLES["events"], rows)

    def append_impressions(self, rows: Sequence[Mapping] | pd.DataFrame, new_ids: bool = False) -> list[bool]:
        """Store served lists, idempotent by ``request_id``; ``served_at`` is set here.

        Args:
            rows: dicts or a DataFrame with the ``IMPRESSION_COLUMNS``: ``items`` a list of item ids
                in served order, ``scores`` / ``reasons`` one per item or empty, ``route`` /
                ``ranker`` / ``model_version`` optional strings.
            new_ids: the caller made each ``request_id`` just now (a random UUID, as ``recommend``
                does): the log is not searched for them (a duplicate within ``rows`` is still kept once).

        Returns:
            Per row, True if newly stored, False if its ``request_id`` was already in the log.

        Raises:
            ValueError: as ``append_events``; also when ``scores`` or ``reasons`` do not match ``items``.
        """
        return self._append(TABLES["impressions"], rows, probe=not new_ids)

    def append_catalog(self, rows: Sequence[Mapping] | pd.DataFrame) -> list[bool]:
        """Store catalog records (``CATALOG_COLUMNS``: record_id, op, entity_id, attributes as a
        mapping, timestamp), idempotent by ``record_id``; ``logged_at`` is set here.

        Raises:
            ValueError: as ``append_events``; also when ``attributes`` is not a mapping of name ->
                str / finite number / None.
        """
        return self._append(TABLES["catalog"], rows)

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

    def _append(self, kind: Table, rows, probe: bool = True) -> list[bool]:
        records = check_rows(kind, rows)
        with self._thread_lock:
            self._check_open()
            if not records:
                return []
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._refresh()
                current = self._current_segment()
                stored = self._stored_keys(kind, {r[0] for r in records}) if probe else set()  # key: 1st column
                new, seen = [], set()
                for r in records:
                    new.append(r[0] not in stored and r[0] not in seen)
                    seen.add(r[0])
                if any(new):
                    now = time.time()
                    self._insert(kind, current, [r + (now,) for r, is_new in zip(records, new) if is_new])
                    self._sizes[current] = self._segment_bytes(current)
                    self._enforce_total()
                return new
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _insert(self, kind: Table, n: int, values: list[tuple]) -> None:
        conn = self._conn(n)  # opened here when nothing read the segment yet (a new one, appends without a probe)
        sql = f"INSERT INTO {kind.table} ({', '.join(kind.columns)}) VALUES ({', '.join('?' * len(kind.columns))})"
        if len(values) == 1:  # one statement is its own transaction: one call instead of three (each answer's impression)
            conn.execute(sql, values[0])
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _stored_keys(self, kind: Table, keys: set[str]) -> set[str]:
        """The keys among ``keys`` already in any live segment (newest first: retries are recent)."""
        pending, found = set(keys), set()
        for n in reversed(list(self._segments)):
            conn = self._conn(n)
            if conn is None:
                continue
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
    #
    # Every change to the set of segments (a new one, dropped ones) is made under the flock and bumps
    # a generation counter kept in the lock file's first 8 bytes, so a process rescans the directory
    # only when another one changed it: one pread per append instead of a scandir and a stat of
    # every segment file.

    def _read_generation(self) -> int:
        data = os.pread(self._lock_fd, 8, 0)
        return int.from_bytes(data, "little") if len(data) == 8 else 0

    def _bump_generation(self) -> None:
        self._generation = self._read_generation() + 1
        os.pwrite(self._lock_fd, self._generation.to_bytes(8, "little"), 0)

    def _refresh(self) -> None:
        """Bring ``_segments`` / ``_sizes`` up to date when another process changed the directory
        (or someone removed the current segment by hand)."""
        generation = self._read_generation()
        if generation == self._generation and self._segments and os.path.exists(self._file(self._segments[-1])):
            return
        mains, sizes, sidecars = set(), {}, []
        for e in os.scandir(self.directory):
            if not (m := SEGMENT_FILE.fullmatch(e.name)):
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
        for n, path in sidecars:
            # a WAL / shm file whose segment is gone (a reader re-created it, or a crash mid-drop);
            # segments appear by rename, so a new segment never has a sidecar before its file
            if n not in mains and (not mains or n < min(mains)):
                unlink(Path(path))
        self._segments = sorted(mains)
        self._sizes = {n: sizes.get(n, 0) for n in mains}
        self._generation = generation

    def _conn(self, n: int) -> sqlite3.Connection | None:
        """This process's connection to segment ``n``; None when its file was removed by hand (it
        is forgotten then). ``mode=rw``: never create a segment file by connecting to it."""
        conn = self._conns.get(n)
        if conn is None:
            path = segment_path(self.directory, n)
            try:
                conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            except sqlite3.OperationalError:
                if path.exists():
                    raise
                log.warning("event log %s: segment %s disappeared (removed by hand?); forgetting it",
                            self.directory, path.name)
                self._segments.remove(n)
                self._sizes.pop(n, None)
                return None
            try:
                check_version(conn, path)
                upgrade(conn)  # a version-1 segment gets the catalog table (we hold the flock)
                conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
                conn.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
                conn.execute(f"PRAGMA journal_size_limit={self._wal_pages * PAGE_SIZE}")
            except BaseException:
                conn.close()
                raise
            self._conns[n] = conn
        return conn

    def _current_segment(self) -> int:
        """The segment to append to: the newest, or a new one when the newest is full (or none is)."""
        if not self._segments:
            return self._create_segment(1)
        n = self._segments[-1]
        conn = self._conn(n)
        if conn is None:  # removed by hand just now: the one before is the newest
            return self._current_segment()
        # Its pages are at most its file and WAL bytes, as of this process's last append (another
        # process's appends since are not in them: each process may add one batch past the limit).
        if self._sizes.get(n, self.max_segment_bytes) < self.max_segment_bytes:
            return n
        if conn.execute("PRAGMA page_count").fetchone()[0] * PAGE_SIZE < self.max_segment_bytes:
            return n
        # Seal it: move its WAL into the database file and empty the WAL, so its size on disk is
        # its data. Best effort: a reader in the middle of a read can hold the WAL back.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._sizes[n] = segment_bytes(self.directory, n)
        return self._create_segment(n + 1)

    def _create_segment(self, n: int) -> int:
        """Initialise a segment under a temporary name and rename it into place, so that nobody
        (a reader without the lock included) ever sees a segment without its tables.

        The generation is bumped before the rename: a process killed in between leaves no segment
        the others do not know of. Should ``n`` exist all the same (made by hand), this process's
        view is stale: it rescans and announces it, and never overwrites the file."""
        final = segment_path(self.directory, n)
        if final.exists():
            self._generation = None
            self._refresh()
            self._bump_generation()
            return self._current_segment()
        tmp = final.with_name(final.name + ".tmp")
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-wal", "-shm", "-journal"))):
            unlink(leftover)  # from a process killed mid-creation (we hold the lock)
        with closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.executescript(DDL + f"PRAGMA user_version={SCHEMA_VERSION};")
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file header
        if self.durability == "full":
            _fsync(tmp)
        self._bump_generation()
        os.rename(tmp, final)
        if self.durability == "full":  # the new name itself must survive a power cut
            _fsync(self.directory)
        log.info("event log %s: started segment %s", self.directory, final.name)
        self._segments.append(n)
        self._sizes[n] = segment_bytes(self.directory, n)
        return n

    def _file(self, n: int) -> str:
        """Segment ``n``'s path as a string (kept: a Path built per append costs more than its stat)."""
        path = self._files.get(n)
        if path is None:
            path = self._files[n] = str(segment_path(self.directory, n))
        return path

    def _segment_bytes(self, n: int) -> int:
        """:func:`segment_bytes` from the kept path strings."""
        total = 0
        for path in (self._file(n), self._file(n) + "-wal"):
            try:
                total += os.stat(path).st_size
            except FileNotFoundError:
                pass
        return total

    def _enforce_total(self) -> None:
        """Delete the oldest segments while the directory holds more than ``max_total_bytes``."""
        total = sum(self._sizes[n] for n in self._segments)
        dropped = False
        while total > self.max_total_bytes and len(self._segments) > 1:
            n = self._segments[0]
            conn = self._conn(n)
            if conn is None:  # gone already (and forgotten)
                total = sum(self._sizes[m] for m in self._segments)
                continue
            self._segments.pop(0)
            size = self._sizes.pop(n)
            events, impressions, records = (row_count(conn, t) for t in KINDS)
            conn.close()
            del self._conns[n]
            path = segment_path(self.directory, n)
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                unlink(p)
            total -= size
            dropped = True
            log.warning("event log %s: %d bytes > max_total_bytes %d; deleted the oldest segment %s "
                        "(%d bytes, %d events, %d impressions, %d catalog records); their ids leave the "
                        "idempotency window", self.directory, total + size, self.max_total_bytes, path.name, size,
                        events, impressions, records)
        if dropped:
            self._bump_generation()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
