"""Accepted events (and catalog records) shared across hosts through Redis Streams: a publisher that
follows a table of the local log, and a tail with :class:`events.tail.EventTail`'s interface.

Two streams, one per table (``kind``): ``events`` (interaction events, ``recsys:{events}``) and
``catalog`` (item / user upserts and blocks, ``recsys:{catalog}``), each with the same publisher and
tail; what follows says "events" for both.

The local durable log (:mod:`events.log`) stays the record of each host: ``events`` commits there
first and acknowledges only after that. :class:`RedisPublisher` then moves what the log holds after
its cursor to the stream, ``batch`` events per call of one Lua script that, per event, sets
``<stream>:id:<event_id>`` (``SET NX EX ttl``) and appends the event (``XADD MAXLEN ~``) only when
the id was new, atomically: so resending after a crash or an outage, or the same id arriving at two
hosts, puts it in the stream once. Its cursor (segment, rowid) is kept in a small file next to the
log, written at most once a second and on close; a lagging or lost cursor only means a resend.

:class:`RedisTail` reads the stream from its last id (``XREAD``, non-blocking, ``COUNT``-bounded) and
returns the same typed frame as ``EventTail.read_new``, so ``recommend`` applies it with the same
:class:`pipeline.online.OnlineState` on every instance of every host: the same events in the same
stream order give the same state everywhere.

Redis down: neither class raises. They mark themselves down (``up`` False), call ``on_change``
once per outage (a log line), try again at most once every ``retry_s`` with short socket timeouts
(no timeout per call while down), and catch up from their cursor (the publisher from the local log,
the tail from its last stream id) when Redis answers again. ``redis`` is imported here only: nothing
imports this module unless Redis is configured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import numpy as np
import pandas as pd

from events.schema import table
from events.segments import SegmentConnection, has_table, list_segments, log_id, open_readonly, row_count, segment_path
from events.tail import check_limit, row_columns, typed_frame

log = logging.getLogger(__name__)

DEFAULT_STREAM = "recsys:{events}"  # the braces: a Redis Cluster hash tag, so the id keys share its slot
DEFAULT_CATALOG_STREAM = "recsys:{catalog}"
DEFAULT_MAXLEN = 1_000_000  # entries kept (approximately: MAXLEN ~ trims whole nodes)
# The catalog stream keeps every record (0: never trimmed): a starting instance replays the whole
# catalog, and a record trimmed unread is an item that host never gets (catalog changes are rare).
DEFAULT_CATALOG_MAXLEN = 0
DEFAULT_ID_TTL_S = 7 * 24 * 3600  # how long an event_id is remembered across hosts
CURSOR_SAVE_S = 1.0  # the publisher's cursor file is rewritten at most this often (and on close)
CLOCK_SKEW_S = 300.0  # a tail starting at a snapshot time reads this much earlier in the stream
URL_SCHEMES = ("redis://", "rediss://", "unix://")



def publish_lua(columns: tuple[str, ...]) -> str:
    """The publish script for rows of ``columns``. KEYS[1] the stream, KEYS[1 + i] the id key of row i;
    ARGV[1] maxlen (0: never trimmed), ARGV[2] ttl, then the len(columns) values of each row.
    Returns one flag per row: 1 appended, 0 seen before."""
    fields = ", ".join(f"'{c}', ARGV[b + {j + 1}]" for j, c in enumerate(columns))
    return """
local n, width = #KEYS - 1, %d
local flags = {}
for i = 1, n do
  if redis.call('SET', KEYS[i + 1], '1', 'NX', 'EX', ARGV[2]) then
    local b = 2 + (i - 1) * width
    if ARGV[1] == '0' then
      redis.call('XADD', KEYS[1], '*', %s)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', %s)
    end
    flags[i] = 1
  else
    flags[i] = 0
  end
end
return flags
""" % (len(columns), fields, fields)



def check_url(url: str) -> str:
    """The URL, or ValueError naming it and the accepted forms."""
    if not isinstance(url, str) or not url.startswith(URL_SCHEMES):
        raise ValueError(f"Redis URL {redact(url) if isinstance(url, str) else url!r}: expected redis://HOST:PORT/DB (or rediss://, unix://PATH), "
                         "e.g. redis://127.0.0.1:6379/0")
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def connect(url: str, timeout_s: float):
    """A client with short socket timeouts and no retries of its own (the callers retry once a second)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(check_url(url), socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0), decode_responses=True)


def _redis_errors() -> tuple[type[Exception], ...]:
    import redis

    return (redis.RedisError, OSError)


class _Health:
    """Up / down with one notice per change and at most one try every ``retry_s`` while down."""

    def __init__(self, name: str, retry_s: float, on_change: Callable[[bool, str], None] | None):
        self.name, self.retry_s = name, retry_s
        self.on_change = on_change or (lambda up, why: (log.info if up else log.warning)("%s", why))
        self.up: bool | None = None  # None: not tried yet
        self.next_try = 0.0
        self.outages = 0

    def due(self) -> bool:
        return self.up is not False or time.monotonic() >= self.next_try

    def ok(self, url: str) -> None:
        url = redact(url)
        if self.up is not True:
            back = self.up is False
            self.up = True
            self.on_change(True, f"{self.name}: Redis {url} {'is back' if back else 'connected'}")

    def failed(self, url: str, err: Exception, detail: str = "") -> None:
        url = redact(url)
        self.next_try = time.monotonic() + self.retry_s
        if self.up is not False:
            self.up = False
            self.outages += 1
            self.on_change(False, f"{self.name}: Redis {url} unreachable ({type(err).__name__}: {err}){detail}; "
                                  f"retrying every {self.retry_s:g} s")


class _LogCursor:
    """Reads one table of a local log after (segment, rowid), a bounded number of rows at a time."""

    def __init__(self, directory: Path, segment: int = 0, rowid: int = 0, identity: str | None = None,
                 kind: str = "events"):
        self.directory, self.segment, self.rowid = directory, segment, rowid
        self.table = table(kind)
        self.identity = identity  # the log's (events.segments.log_id) the position is of; None: not known yet
        # the segment read, kept; shared by the request path and the publisher's thread (never at
        # once: the publisher's lock), hence not bound to the thread that opened it
        self._segments = SegmentConnection(self.directory, any_thread=True)

    def read(self, limit: int) -> tuple[list[tuple], tuple[int, int]]:
        """Up to ``limit`` rows (the table's column order) after the cursor, and the position after them.
        The cursor itself does not move (:meth:`move` once they are published)."""
        rows: list[tuple] = []
        if not self.directory.is_dir():
            return rows, (self.segment, self.rowid)
        self._check_identity()
        position = (self.segment, self.rowid)
        for n in list_segments(self.directory):
            if n < position[0] or len(rows) >= limit:
                continue
            conn = self._open(n)
            if conn is None:
                continue
            after = position[1] if n == position[0] else 0
            name = self.table.table
            got = [] if name == "catalog" and not has_table(conn, name) else conn.execute(  # a version-1 segment
                f"SELECT rowid, {', '.join(self.table.columns)} FROM {name} WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?", (after, limit - len(rows))).fetchall()
            if got:
                rows += [r[1:] for r in got]
                position = (n, got[-1][0])
            elif n > position[0]:
                position = (n, 0)
        return rows, position

    def move(self, position: tuple[int, int]) -> None:
        self.segment, self.rowid = position

    def _check_identity(self) -> None:
        """A log replaced under the cursor (another identity) is published from its start: reading on
        from the old position would skip its first rows (the stream's id keys drop what it has)."""
        current = log_id(self.directory)
        if current is None or current == self.identity:
            return
        if self.identity is not None:
            log.warning("%s: the log was replaced (identity %s, the cursor's %s): publishing it from its start",
                        self.directory, current, self.identity)
            self.segment, self.rowid = 0, 0
            self._segments.close()
        self.identity = current

    def waiting(self) -> int:
        """Events in the log after the cursor (rowids are 1..n per segment: no scan)."""
        if not self.directory.is_dir():
            return 0
        self._check_identity()
        total = 0
        for n in list_segments(self.directory):
            if n < self.segment:
                continue
            conn = open_readonly(segment_path(self.directory, n))
            if conn is None:
                continue
            try:
                total += row_count(conn, self.table.table) - (self.rowid if n == self.segment else 0)
            finally:
                conn.close()
        return max(total, 0)

    def _open(self, n: int) -> sqlite3.Connection | None:
        return self._segments.get(n)

    def close(self) -> None:
        self._segments.close()


class RedisPublisher:
    """Publishes the rows of one table of a local log directory to a Redis Stream, from a cursor kept
    on disk.

    Args:
        url: ``redis://HOST:PORT/DB``.
        log_dir: the local log directory of that table (``events``' own, e.g. ``<event log>/events``;
            the catalog's, ``<event log>/catalog``).
        stream: the stream's key; id keys are ``<stream>:id:<id>`` (the table's key: ``event_id``,
            ``record_id``).
        maxlen: entries the stream keeps (approximate trim; 0: never trimmed).
        id_ttl_s: seconds an event_id is remembered (make it longer than any sender's retry delay).
        batch: events per script call (one Lua call blocks Redis for ~1 ms per 1,000 events).
        retry_s: while Redis is down, seconds between tries.
        timeout_s: socket connect / read timeout.
        on_change: called ``(up, message)`` once per change between up and down (default: logged).
        kind: the table published: ``events`` or ``catalog``.
        save_s: the cursor file is rewritten at most this often (and on close); 0: after every flush
            that sent rows (the catalog's: rare calls, and a restart then resends nothing).
    """

    def __init__(self, url: str, log_dir: str | os.PathLike, stream: str = DEFAULT_STREAM,
                 maxlen: int = DEFAULT_MAXLEN, id_ttl_s: int = DEFAULT_ID_TTL_S, batch: int = 1000,
                 retry_s: float = 1.0, timeout_s: float = 0.5,
                 on_change: Callable[[bool, str], None] | None = None, kind: str = "events",
                 save_s: float = CURSOR_SAVE_S):
        if maxlen < 0 or id_ttl_s < 1 or batch < 1:
            raise ValueError(f"Redis stream maxlen ({maxlen}: 0 keeps every entry) must be >= 0, id TTL ({id_ttl_s} s) "
                             f"and batch ({batch}) positive")
        self.url, self.stream, self.maxlen, self.id_ttl_s, self.batch = check_url(url), stream, maxlen, id_ttl_s, batch
        self.table, self.save_s = table(kind), save_s
        self.noun = f"{self.table.noun}s"  # "events" / "catalog records", for messages
        self.log_dir = Path(log_dir)
        self.cursor_path = self.log_dir / f"redis-published-{_file_safe(stream)}.json"
        self.cursor = _LogCursor(self.log_dir, *self._load_cursor(), kind=kind)  # (segment, rowid, identity)
        self.health = _Health(f"{kind} publisher", retry_s, on_change)
        self.timeout_s = timeout_s
        self.published = 0  # rows this process appended to the stream (not counting ones seen before)
        self.resent = 0  # events the stream already had (their id key was set)
        self.backlog = self.cursor.waiting()
        self._client = None
        self._script = None
        self._saved_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def up(self) -> bool | None:
        return self.health.up

    def flush(self, limit: int | None = None, ping: bool = False) -> int:
        """Publish what the log holds after the cursor (at most ``limit`` events); returns how many
        were sent. Never raises for Redis: on failure the rest stays in the backlog for the next try.
        ``ping``: with nothing to send, check that Redis answers (so ``up`` is true on an idle system)."""
        with self._lock:
            if not self.health.due():
                self.backlog = self.cursor.waiting()  # kept true while down: one max(rowid) per live segment
                return 0
            sent, limit = 0, limit or (1 << 62)
            try:
                while sent < limit:
                    rows, position = self.cursor.read(min(self.batch, limit - sent))
                    if not rows:
                        break
                    flags = self._publish(rows)
                    self.cursor.move(position)
                    if time.monotonic() - self._saved_at >= self.save_s:
                        self._save_cursor(position)
                    sent += len(rows)
                    self.published += sum(flags)
                    self.resent += len(flags) - sum(flags)
                if ping and not sent:
                    self._connected().ping()
                self.health.ok(self.url)
                self.backlog = self.cursor.waiting() if sent >= limit else 0
            except _redis_errors() as err:
                self._client = None  # a fresh connection next time
                self.backlog = self.cursor.waiting()
                self.health.failed(self.url, err, f"; {self.backlog} {self.noun} wait in the local log")
            return sent

    def _publish(self, rows: list[tuple]) -> list[int]:
        self._connected()
        keys = [self.stream] + [f"{self.stream}:id:{r[0]}" for r in rows]
        args: list = [self.maxlen, self.id_ttl_s]
        for r in rows:
            args += [_encode(v) for v in r]
        return [int(f) for f in self._script(keys=keys, args=args)]

    def _connected(self):
        if self._client is None:
            self._client = connect(self.url, self.timeout_s)
            self._script = self._client.register_script(publish_lua(self.table.columns))
        return self._client

    def start(self, interval_s: float | None = None, on_tick: Callable[[], None] | None = None) -> "RedisPublisher":
        """Publish the backlog in a background thread (every ``interval_s``, default ``retry_s``): what
        waits while Redis is down goes out when it is back, whether or not new events arrive, and
        ``up`` follows Redis on an idle system (a PING when there is nothing to send). ``on_tick`` runs
        after each round (e.g. to update metrics); its exceptions are logged, never stop the thread."""
        interval = interval_s or self.health.retry_s

        def loop():
            while not self._stop.wait(interval):
                try:  # Redis errors never raise; a local read error (a disk) must not end the thread either
                    self.flush(ping=True)
                    if on_tick is not None:
                        on_tick()
                except Exception:  # noqa: BLE001 - logged, tried again next round
                    log.exception("redis publisher: background round failed")

        self._thread = threading.Thread(target=loop, name="redis-publisher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if (self.cursor.segment, self.cursor.rowid) != (0, 0):
                self._save_cursor((self.cursor.segment, self.cursor.rowid))
        self.cursor.close()
        if self._client is not None:
            with suppress(Exception):
                self._client.close()

    def _load_cursor(self) -> tuple[int, int, str | None]:
        try:
            saved = json.loads(self.cursor_path.read_text())
            return int(saved["segment"]), int(saved["rowid"]), saved.get("log_id")
        except FileNotFoundError:
            return 0, 0, None  # never published from this log: from its start (ids already in Redis are skipped)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("%s unreadable (%s): publishing from the start of the log; the stream skips ids it "
                        "already has", self.cursor_path, err)
            return 0, 0, None

    def _save_cursor(self, position: tuple[int, int]) -> None:
        # At most once a second (0.7 ms a write on the loaded box: more than the publish) and without
        # fsync: a cursor that lags or is lost only resends events, and the id keys drop the copies.
        self._saved_at = time.monotonic()
        # a name of this process's own: two publishers of one log (e.g. `events` with count > 1) each
        # replace the file whole, never each other's half
        tmp = self.cursor_path.with_name(f"{self.cursor_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"segment": position[0], "rowid": position[1], "stream": self.stream,
                                   "log_id": self.cursor.identity}))
        os.replace(tmp, self.cursor_path)


class RedisTail:
    """Reads the rows of a Redis Stream after the last id read; :class:`events.tail.EventTail`'s interface.

    Args:
        url: ``redis://HOST:PORT/DB``.
        stream: the stream's key.
        received_after: skip rows stored (the table's stamp, e.g. ``received_at``: the local log's
            commit time on the host that took them) before this time: those already in the served
            snapshot. Reading starts ``CLOCK_SKEW_S`` earlier in the stream than that time. None:
            the whole stream (the catalog: a starting instance replays every record).
        count: entries per ``XREAD``.
        max_reads: ``XREAD`` calls per :meth:`read_new` at most (so one call reads at most
            ``count * max_reads`` events; :attr:`more` says whether it stopped at that bound).
        retry_s, timeout_s, on_change: as for :class:`RedisPublisher`.
        check_s: seconds between checks that nothing it needed was trimmed unread (:attr:`missed`,
            a warning); a check adds ~0.2 ms to its read, so not every read does one.
        kind: the table the stream carries: ``events`` or ``catalog`` (:class:`RedisPublisher`'s).
        name: who reads, in log lines (default ``recommend tail`` for the events, ``catalog tail``).
    """

    def __init__(self, url: str, stream: str = DEFAULT_STREAM, received_after: float | None = None,
                 count: int = 1000, max_reads: int = 10, retry_s: float = 1.0, timeout_s: float = 0.5,
                 on_change: Callable[[bool, str], None] | None = None, check_s: float = 1.0,
                 kind: str = "events", name: str | None = None):
        if count < 1 or max_reads < 1:
            raise ValueError(f"Redis tail count ({count}) and max_reads ({max_reads}) must be positive")
        self.url, self.stream, self.count, self.max_reads = check_url(url), stream, count, max_reads
        self.received_after = received_after
        start_ms = 0 if received_after is None else max(0, int((received_after - CLOCK_SKEW_S) * 1000))
        self.last_id = f"{start_ms}-0"
        self.table = table(kind)
        self.columns = list(self.table.columns)
        self.name = name or ("recommend tail" if kind == "events" else f"{kind} tail")
        self.health = _Health(self.name, retry_s, on_change)
        self.timeout_s = timeout_s
        self.more = False
        self.read = 0  # stream entries read (before the received_after filter)
        self.missed = 0  # entries trimmed before this tail read them (see _check_trimmed)
        self.check_s = check_s
        self._checked_at = 0.0
        # the stream's entries-added at the last check (caught up); a tail from the stream's start knows
        # it read every entry ever added, so entries trimmed before it started count as missed too
        self._added: int | None = 0 if received_after is None else None
        self._read_since = 0  # entries read since that check
        self._client = None
        self._dtypes = {c: t for c, t in self.table.dtypes.items() if t != "object"}  # as EventTail's
        self._empty = pd.DataFrame(columns=self.columns).astype(self._dtypes)

    @property
    def up(self) -> bool | None:
        return self.health.up

    def read_new(self, limit: int | None = None) -> pd.DataFrame:
        """Events appended to the stream since the previous call, in stream order (at most
        ``count * max_reads``, or ``limit`` if fewer: :attr:`more` then says entries may remain); empty
        while Redis is down (what was read before a failure is returned, and reading resumes after it)."""
        data = self.read_new_columns(limit)
        if not len(data[self.table.key]):
            return self._empty
        return typed_frame(data, self.columns, self._dtypes)

    def read_new_columns(self, limit: int | None = None) -> dict[str, np.ndarray]:
        """:meth:`read_new` as one numpy array per column (strings as object arrays), no pandas."""
        check_limit(limit)
        rows: list[tuple] = []
        self.more = False
        if not self.health.due():
            return self._columns([])
        try:
            if self._client is None:
                self._client = connect(self.url, self.timeout_s)
            for _ in range(self.max_reads):
                count = self.count if limit is None else min(self.count, limit - len(rows))
                check = time.monotonic() - self._checked_at >= self.check_s
                if check:  # the read and the stream's counters at one instant (MULTI, one round trip)
                    self._checked_at = time.monotonic()
                    reply, info = self._client.pipeline(transaction=True).xread(
                        {self.stream: self.last_id}, count=count).xinfo_stream(self.stream).execute(
                        raise_on_error=False)
                    if isinstance(reply, Exception):
                        raise reply
                else:
                    reply = self._client.xread({self.stream: self.last_id}, count=count)
                entries = _entries(reply, self.stream)
                self._read_since += len(entries)
                if check:
                    self._check_trimmed(info, len(entries), count)
                for entry_id, fields in entries:
                    rows.append(tuple(fields.get(c, "") for c in self.columns))
                    self.last_id = entry_id
                self.read += len(entries)
                self.more = len(entries) >= count
                if not self.more or len(rows) == limit:
                    break
            self.health.ok(self.url)
        except _redis_errors() as err:
            self._client = None
            self.more = False
            self.health.failed(self.url, err, f"; answering from the state as of stream id {self.last_id}")
        return self._columns(rows)

    def _check_trimmed(self, info, n_read: int, asked: int) -> None:
        """Count and log (once per gap) entries that the stream trimmed before this tail read them: it
        was away longer than the stream keeps (``REDIS_MAXLEN``). ``entries-added`` counts every entry
        ever appended; between two checks at which this tail was caught up (read less than asked),
        it must have read exactly the entries added in between."""
        if isinstance(info, Exception):  # no stream yet (XINFO on a missing key)
            return
        if n_read >= asked:  # not caught up (a read of what a limit left asks fewer than count): no exact count now
            return
        added = int(info.get("entries-added", 0))
        if self._added is not None and added >= self._added:
            missed = added - self._added - self._read_since
            if missed > 0:
                self.missed += missed
                log.warning("%s: %d %ss of the Redis stream %s were trimmed before this instance "
                            "read them (before stream id %s): it was away longer than the stream keeps "
                            "(REDIS_MAXLEN); its state lacks them until a refresh or a restart from a newer "
                            "snapshot", self.name, missed, self.table.noun, self.stream, self.last_id)
        self._added, self._read_since = added, 0  # (a Redis that lost its data restarts the count)

    def _columns(self, rows: list[tuple]) -> dict[str, np.ndarray]:
        """One array per column (floats parsed from the stream's text), the snapshot's rows dropped."""
        if self.received_after is not None:
            at = self.columns.index(self.table.stamp)
            rows = [r for r in rows if _float(r[at]) > self.received_after]
        floats = {c for c, t in self._dtypes.items() if t == "float64"}
        rows = [tuple(_float(v) if c in floats else v for c, v in zip(self.columns, r)) for r in rows]
        return row_columns(rows, self.columns, self._dtypes)

    def close(self) -> None:
        if self._client is not None:
            with suppress(Exception):
                self._client.close()
            self._client = None


def _entries(reply, stream: str) -> list[tuple[str, dict]]:
    """XREAD's entries for one stream, from a RESP2 list or a RESP3 dict reply."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.get(stream, [[]])[0])
    return list(reply[0][1])


def _float(text: str) -> float:
    return float(text) if text else math.nan


def _encode(value) -> str | int | float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return value


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
