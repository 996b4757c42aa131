"""Segment files of the event log: names, sizes on disk, the table definitions, read-only
connections. ``segment-000001.sqlite``, ``segment-000002.sqlite``, ...: SQLite databases in WAL mode,
each holding every table (events, impressions, catalog); numbers are never reused."""

from __future__ import annotations

import os
import re
import sqlite3
import time
import uuid
from contextlib import suppress
from pathlib import Path

PAGE_SIZE = 4096
MIN_SEGMENT_BYTES = 8 * PAGE_SIZE  # an empty segment is 5 pages
SCHEMA_VERSION = 2  # PRAGMA user_version of every new segment (2: the catalog table)
READABLE_VERSIONS = (1, 2)  # a version-1 segment has no catalog table: read as empty, upgraded by a writer
BUSY_TIMEOUT_S = 30.0
SEGMENT = re.compile(r"segment-(\d{6,})\.sqlite")
SEGMENT_FILE = re.compile(r"segment-(\d{6,})\.sqlite(-wal|-shm)?")  # a segment or one of its sidecars

DDL = """
CREATE TABLE events (
    event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
    timestamp REAL NOT NULL, type TEXT NOT NULL, weight REAL, received_at REAL NOT NULL);
CREATE TABLE impressions (
    request_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, items TEXT NOT NULL, scores TEXT NOT NULL,
    reasons TEXT NOT NULL, route TEXT, ranker TEXT, model_version TEXT,
    timestamp REAL NOT NULL, served_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS catalog (
    record_id TEXT PRIMARY KEY, op TEXT NOT NULL, entity_id TEXT NOT NULL, attributes TEXT NOT NULL,
    timestamp REAL NOT NULL, logged_at REAL NOT NULL);
"""
CATALOG_DDL = DDL[DDL.index("CREATE TABLE IF NOT EXISTS catalog"):]


ID_NAME = "log.id"  # a log directory's identity: a random id its first writer draws, kept for its life


def log_id(directory: Path) -> str | None:
    """The identity of a log directory (None: no writer has opened it since identities exist, or it is gone).
    Cursors record it, so a log replaced at the same path (recreated, restored from another copy) is
    told apart from the one a cursor was taken from even where its positions run past the cursor."""
    try:
        return (Path(directory) / ID_NAME).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def ensure_log_id(directory: Path) -> str | None:
    """The directory's identity, drawn now when it has none. Written whole to a file of this process's
    own, then linked into place (create-if-absent, so two writers opening a new log at once agree on the
    first, and no reader sees a half-written id); an empty one (a writer killed mid-way before this
    was so) is replaced."""
    current = log_id(directory)
    if current is not None:
        return current
    path = Path(directory) / ID_NAME
    tmp = path.with_name(f"{ID_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(uuid.uuid4().hex)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            if log_id(directory) is None:  # there, but empty
                os.replace(tmp, path)
        except OSError:  # a file system without hard links: replace (a race of two new writers: the last wins)
            os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()
    return log_id(directory)


def segment_path(directory: Path, n: int) -> Path:
    return directory / f"segment-{n:06d}.sqlite"


def list_segments(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for e in os.scandir(directory) if (m := SEGMENT.fullmatch(e.name)))


class SegmentListing:
    """:func:`list_segments` of one directory for a reader that looks every request: listed again only
    when the directory changed (its mtime) since a listing taken at least ``QUIET_S`` after that
    mtime. File times are coarse: a segment renamed into place in the same tick as a listing leaves
    the mtime as it was, so a listing taken within ``QUIET_S`` of the mtime is not trusted (the next
    call lists again, however much later it comes). A missing directory lists nothing."""

    QUIET_S = 1.0

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._mtime: int | None = None
        self._segments: list[int] = []

    def __call__(self) -> list[int]:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            self._mtime, self._segments = None, []
            return []
        if mtime != self._mtime:
            now = time.time_ns()
            self._segments = list_segments(self.directory)
            self._mtime = mtime if now - mtime >= self.QUIET_S * 1e9 else None  # None: list again next call
        return self._segments


def file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def segment_bytes(directory: Path, n: int) -> int:
    """On-disk size of a segment: the database file and its WAL."""
    path = segment_path(directory, n)
    return file_bytes(path) + file_bytes(path.with_name(path.name + "-wal"))


def require_directory(directory: Path) -> None:
    if not directory.exists():
        raise FileNotFoundError(f"event log directory {directory} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"event log directory {directory} is not a directory")


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The segment's schema version; ValueError for one this code cannot read, sqlite3.DatabaseError for
    a file with no schema at all (empty or cut short: damaged, as a file that is not SQLite)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and not has_table(conn, "events"):
        raise sqlite3.DatabaseError(f"{path}: no log schema in it (an empty or cut-short file)")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: segment schema version {version}, this code knows {READABLE_VERSIONS}; "
                         "read it with the version of events.log that wrote it")
    return version


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a version-1 segment to the current schema (adds the catalog table); writers only, under the lock."""
    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        conn.executescript(CATALOG_DDL + f"PRAGMA user_version={SCHEMA_VERSION};")


def has_table(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


def open_readonly(path: Path, any_thread: bool = False) -> sqlite3.Connection | None:
    """A read-only connection to one segment, or None when it was deleted meanwhile (``any_thread``:
    usable from another thread than the one that opened it, never at once)."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                               check_same_thread=not any_thread)
    except sqlite3.OperationalError:
        if not path.exists():  # dropped by a writer between listing and opening
            return None
        raise
    try:
        check_version(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def row_count(conn: sqlite3.Connection, table: str) -> int:
    # Rows are never deleted from a segment, so rowids are exactly 1..n and max(rowid) is the count,
    # read from the end of the b-tree instead of a scan.
    if table == "catalog" and not has_table(conn, table):  # a version-1 segment
        return 0
    return conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0


class SegmentConnection:
    """The read-only connection of the segment a reader is on, kept while it reads that segment.

    Args:
        directory: the log directory.
        any_thread: the connection may be used from another thread than the one that opened it
            (never at once: the caller serialises its use).
    """

    def __init__(self, directory: Path, any_thread: bool = False):
        self.directory, self.any_thread = Path(directory), any_thread
        self._conn: sqlite3.Connection | None = None
        self._segment = 0

    def get(self, n: int) -> sqlite3.Connection | None:
        """Segment ``n``'s connection (None: it was dropped meanwhile)."""
        if self._conn is not None and self._segment == n:
            return self._conn
        conn = open_readonly(segment_path(self.directory, n), any_thread=self.any_thread)
        if conn is None:
            return None
        self.close()
        self._conn, self._segment = conn, n
        return conn

    def close(self) -> None:
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
