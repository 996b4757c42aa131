"""Where the served models keep the durable event log (shared by ``events`` and every ``recommend``).

``RECSYS_EVENT_LOG`` in the server's environment wins (``python -m serving.serve --event-log DIR``
sets it; Triton's python stubs inherit the server's environment); else the models' ``EVENT_LOG``
parameter, a relative path being taken from the model repository's parent folder (never inside
the repository: with ``--load-model=*`` Triton would try to load it as a model).

Catalog records (item / user upserts, blocks: the ``catalog`` model) live in ``catalog/``, a third
log of the same kind read by the same tail (``EventTail(..., kind="catalog")``), so whatever bus
carries the events later can carry them too.

Events and impressions live in two sub-folders, ``events/`` and ``impressions/``, each an
:class:`events.log.EventLog` with its own lock: an answer's impression (one 0.2 ms append) never
waits behind an event batch's fsync, and impressions (~4 KB each) never push events, and their
idempotency window, out of the size bound.

Across hosts, the models share the events and the catalog records through Redis
(:mod:`events.redis_bus`: one stream each) when a Redis URL is configured: ``RECSYS_REDIS_URL`` in
the server's environment wins (``python -m serving.serve --redis URL`` sets it), else the models'
``REDIS_URL`` parameter; empty means off (each host's instances follow the local log only).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from events.log import DEFAULT_SEGMENT_BYTES, DEFAULT_TOTAL_BYTES
from events.segments import log_id
from events.tail import EventTail

ENV = "RECSYS_EVENT_LOG"
REDIS_ENV = "RECSYS_REDIS_URL"
MAX_BYTES_ENV = "RECSYS_LOG_MAX_BYTES"
# One family, two models (the help text must match for Triton to share it): recsys_redis_up{role}.
REDIS_UP_HELP = "1 when this model reached Redis at its last try, 0 when not (role: events | catalog | recommend)"


def event_log_dir(repository: str | os.PathLike, parameter: str = "event_log") -> Path:
    """The log directory for a model repository (see the module docstring)."""
    chosen = os.environ.get(ENV) or parameter
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else Path(repository).resolve().parent / path


def served_event_log_dir(repository: str | os.PathLike, model: str = "recommend") -> Path:
    """The log directory the served models of ``repository`` will use: :func:`event_log_dir` with
    ``model``'s ``EVENT_LOG`` parameter read from its config.pbtxt (what ``recsys-serve`` prints)."""
    from google.protobuf import text_format  # the server's side only: no served model pays the import
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse((Path(repository) / model / "config.pbtxt").read_text(errors="replace"),
                                   model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError):  # Triton refuses such a config anyway: the default
        config = model_config_pb2.ModelConfig()
    given = config.parameters["EVENT_LOG"].string_value if "EVENT_LOG" in config.parameters else "event_log"
    return event_log_dir(repository, given)  # "" as the models take it


def event_log_dirs(repository: str | os.PathLike, parameter: str = "event_log") -> tuple[Path, Path]:
    """(events, impressions) folders of the log for a model repository."""
    base = event_log_dir(repository, parameter)
    return base / "events", base / "impressions"


def events_cut(store_entry: dict, written_at: float | None) -> float | None:
    """The time after which logged events are not in a snapshot that records no log cursor: its
    ``events_after`` (a refresh from an interactions table keeps the cut of the store it refreshed: it
    read no log, so the events logged since that store are in neither), else ``written_at``, the time
    the store was written."""
    return float(store_entry["events_after"]) if store_entry.get("events_after") is not None else written_at


def snapshot_tail(events_dir: str | os.PathLike, store_entry: dict, written_at: float | None) -> EventTail:
    """The tail a served snapshot starts from: after the log cursor its manifest's ``store`` entry
    records (``event_log``: the last event a retrain or refresh read, ``features.feedback``) when that
    cursor is of this log directory; else every event stored after :func:`events_cut` (the time the
    store was written, or the cut a refresh kept: runs built without the log, or from another log)."""
    cursor = store_entry.get("event_log")
    if cursor and _same_log(cursor, events_dir):
        return EventTail(events_dir, after=(cursor["segment"], cursor["rowid"]), log_id=cursor.get("log_id"))
    return EventTail(events_dir, received_after=events_cut(store_entry, written_at))


def _same_log(cursor: dict, events_dir: str | os.PathLike) -> bool:
    """Whether a cursor is of the log at ``events_dir``: the same folder, or the same log's identity at
    another path (mounted or copied elsewhere: a probe found such a server on the time cut, every event
    logged while the run trained lost)."""
    if Path(cursor["directory"]).resolve() == Path(events_dir).resolve():
        return True
    return bool(cursor.get("log_id")) and log_id(events_dir) == cursor["log_id"]


def stream_cut(store_entry: dict, written_at: float | None) -> float | None:
    """Where a Redis tail starts for a snapshot: after the newest event its log cursor read (the
    stream has no rowids; without this, the events logged while a retrain ran were in neither the run
    nor the served state: found by a probe), else :func:`events_cut`."""
    cursor = store_entry.get("event_log") or {}
    return float(cursor["received_at"]) if cursor.get("received_at") is not None else events_cut(store_entry, written_at)


def catalog_log_dir(repository: str | os.PathLike, parameter: str = "event_log") -> Path:
    """The catalog records' folder of the log for a model repository."""
    return event_log_dir(repository, parameter) / "catalog"


def max_log_bytes(params: dict[str, str]) -> int:
    """The size bound of each served log folder, bytes: ``RECSYS_LOG_MAX_BYTES`` in the server's
    environment wins (``recsys-serve --log-max-gib`` sets it), else the models' ``LOG_MAX_BYTES``
    parameter, else 1 GiB. Past it a writer deletes that folder's oldest segments
    (``recsys_event_log_dropped_segments``)."""
    raw = os.environ.get(MAX_BYTES_ENV) or params.get("LOG_MAX_BYTES") or str(DEFAULT_TOTAL_BYTES)
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):  # not a number, NaN, inf
        raise ValueError(f"log size bound {raw!r} ({MAX_BYTES_ENV} / LOG_MAX_BYTES): expected bytes, e.g. "
                         f"{DEFAULT_TOTAL_BYTES}") from None
    if value < DEFAULT_SEGMENT_BYTES:  # EventLog refuses less than one segment
        raise ValueError(f"log size bound {value} bytes ({MAX_BYTES_ENV} / LOG_MAX_BYTES): at least "
                         f"{DEFAULT_SEGMENT_BYTES >> 20} MiB (one segment)")
    return value


def redis_settings(params: dict[str, str]) -> dict | None:
    """Redis settings of a served model from its config parameters (``REDIS_URL``, ``REDIS_STREAM``,
    ``REDIS_MAXLEN``, ``REDIS_ID_TTL_S``, ``REDIS_CATALOG_STREAM``, ``REDIS_CATALOG_MAXLEN``) and the
    environment, or None when Redis is off.

    Raises:
        ValueError: a URL that is not ``redis://...`` or a number that is not an integer (or is
            negative), naming the parameter.
    """
    from events.redis_bus import (DEFAULT_CATALOG_MAXLEN, DEFAULT_CATALOG_STREAM, DEFAULT_ID_TTL_S, DEFAULT_MAXLEN,
                                  DEFAULT_STREAM, check_url)

    url = (os.environ.get(REDIS_ENV) or params.get("REDIS_URL", "")).strip()
    if not url:
        return None
    numbers = {}
    for key, default, least in (("REDIS_MAXLEN", DEFAULT_MAXLEN, 1), ("REDIS_ID_TTL_S", DEFAULT_ID_TTL_S, 1),
                                ("REDIS_CATALOG_MAXLEN", DEFAULT_CATALOG_MAXLEN, 0)):
        value = params.get(key, "").strip() or str(default)
        try:
            numbers[key] = int(value)
        except ValueError:
            raise ValueError(f"parameter {key}={value!r} is not an integer") from None
        if numbers[key] < least:
            raise ValueError(f"parameter {key}={value!r} must be at least {least}"
                             + (" (0: the stream keeps every record)" if least == 0 else ""))
    return {"url": check_url(url), "stream": params.get("REDIS_STREAM", "").strip() or DEFAULT_STREAM,
            "maxlen": numbers["REDIS_MAXLEN"], "id_ttl_s": numbers["REDIS_ID_TTL_S"],
            "catalog_stream": params.get("REDIS_CATALOG_STREAM", "").strip() or DEFAULT_CATALOG_STREAM,
            "catalog_maxlen": numbers["REDIS_CATALOG_MAXLEN"]}


def catalog_tail(directory: str | os.PathLike, redis: dict | None, on_change=None, name: str | None = None):
    """What a served model follows for the catalog records: the host's catalog folder, or with Redis
    (``redis``: :func:`redis_settings`) the shared catalog stream, read whole (a starting instance
    replays every record; applying one again changes nothing)."""
    if redis is None:
        return EventTail(directory, kind="catalog")
    from events.redis_bus import RedisTail

    return RedisTail(redis["url"], stream=redis["catalog_stream"], kind="catalog", on_change=on_change, name=name)


def catalog_publisher(directory: str | os.PathLike, redis: dict, on_change=None):
    """The publisher of the host's catalog folder to the shared catalog stream (``redis``: :func:`redis_settings`)."""
    from events.redis_bus import RedisPublisher

    return RedisPublisher(redis["url"], directory, stream=redis["catalog_stream"], maxlen=redis["catalog_maxlen"],
                          id_ttl_s=redis["id_ttl_s"], on_change=on_change, kind="catalog", save_s=0.0)


class PublisherMetrics:
    """A Redis publisher's state on three metrics (``recsys_redis_up{role}``, a backlog gauge, a
    published counter), each set only when it changed (a set is a round trip to the server); called by
    requests and by the publisher's thread (``RedisPublisher.start(on_tick=...)``)."""

    def __init__(self, bus, up, backlog, published):
        self.bus, self.up, self.backlog, self.published = bus, up, backlog, published
        self.shown = (None, None, 0)  # (up, backlog, published) as last set
        self.lock = threading.Lock()

    def show(self) -> None:
        with self.lock:
            now = (self.bus.up, self.bus.backlog, self.bus.published)
            if now == self.shown:
                return
            if now[0] != self.shown[0]:
                self.up.set(1.0 if now[0] else 0.0)
            if now[1] != self.shown[1]:
                self.backlog.set(float(now[1]))
            if now[2] != self.shown[2]:
                self.published.increment(now[2] - self.shown[2])
            self.shown = now


def redis_notices(pb_utils):
    """The ``on_change(up, message)`` of a served model's Redis publisher or tail: one server log line
    per change between up (info) and down (warning)."""
    def changed(up: bool, message: str) -> None:
        (pb_utils.Logger.log_info if up else pb_utils.Logger.log_warn)(message)
    return changed


def start_publisher(pb_utils, make_bus, role: str, backlog: tuple[str, str], published: tuple[str, str]):
    """A served model's Redis publisher, started: ``make_bus(on_change)`` builds it (a
    ``RedisPublisher``; ``on_change`` logs one line per change up / down), what was logged while the
    model was away is published before its first call, and its metrics (``recsys_redis_up{role}``,
    the ``backlog`` gauge and ``published`` counter: (name, help) each) follow it with no traffic too.
    Returns (bus, its PublisherMetrics, the metric families to keep alive)."""
    kind = pb_utils.MetricFamily
    families = [kind("recsys_redis_up", REDIS_UP_HELP, kind.GAUGE), kind(*backlog, kind.GAUGE),
                kind(*published, kind.COUNTER)]
    up, waiting, sent = (f.Metric(labels=labels) for f, labels in zip(families, ({"role": role}, {}, {})))
    bus = make_bus(redis_notices(pb_utils))
    bus.flush(ping=True)  # anything logged while this model was away, before the first call
    metrics = PublisherMetrics(bus, up, waiting, sent)
    metrics.show()
    bus.start(on_tick=metrics.show)  # the metrics follow Redis with no traffic too
    return bus, metrics, families


def publish_before_ack(pb_utils, bus, metrics: PublisherMetrics, who: str, limit: int) -> None:
    """Share what a call just logged before it returns (at most ``limit`` rows; the rest goes with the
    publisher's thread). A failure is logged, never raised: the rows are durable in the local log, so
    the acknowledgement stands and the thread tries again."""
    try:
        bus.flush(limit=limit)
        metrics.show()
    except Exception as err:  # noqa: BLE001 - see above
        pb_utils.Logger.log_error(f"{who}: publishing to Redis failed: {type(err).__name__}: {err}")
