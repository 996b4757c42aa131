"""``events``: interaction events in, one status per event out; accepted ones made durable first.

Each event is checked on its own (:func:`events.schema.check_events`: ids, timestamp, type,
weight, the item in the catalog, duplicates within the batch); the accepted ones are appended to
the durable event log (:class:`events.log.EventLog`, shared with every ``recommend`` instance) in
one transaction, and only then does the call return, so an acknowledged event survives a crash.
A resent ``event_id`` is acknowledged as ``duplicate`` and not applied again. ``recommend``
applies the logged events before its next answer (``triton_repo/recommend``, ``pipeline.online``).

With Redis configured (``REDIS_URL`` / ``RECSYS_REDIS_URL``, :func:`serving.event_log.redis_settings`),
the committed events are then published to the shared Redis Stream before the call returns
(:class:`events.redis_bus.RedisPublisher`: idempotent by ``event_id`` across hosts), so every
``recommend`` on every host sees them. The item vocabulary follows the catalog stream (not the host's
catalog folder): an event on an item upserted on another host is accepted, and an event is accepted
only once its item's record is on the stream, so it never reaches a ``recommend`` before its item. Redis down does not fail the call: the events are durable in
the local log, wait there (``recsys_redis_backlog_events``), and a background thread publishes them
when Redis is back; one log line per outage.

Counters: ``recsys_events_total{outcome}`` (ok, duplicate, or the rejection reason),
``recsys_events_request_errors_total{code}`` (whole requests answered with an error:
``invalid_argument``, or ``internal``: e.g. the log's disk full), ``recsys_event_log_bytes{log}`` and
``recsys_event_log_dropped_segments{log}`` for the ``events``, ``impressions`` and ``catalog`` logs
(looked at every ``LOG_STATS_S`` seconds, 5 by default, by a thread: with no traffic too), and with Redis ``recsys_redis_up{role="events"}`` (1 / 0),
``recsys_redis_backlog_events`` and ``recsys_redis_published_total``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from events.log import EventLog
from events.reader import log_size
from events.catalog import CatalogItems
from events.checks import COLUMNS, REASONS, check_events
from features.vocab import IdVocab
from inference.integrity import verify_files
from serving.event_log import (catalog_log_dir, catalog_tail, event_log_dirs, max_log_bytes, publish_before_ack,
                               redis_settings, start_publisher)
from serving.status_answers import answer_each

OUTCOMES = ("ok", "duplicate", *REASONS)
REQUEST_FLUSH_LIMIT = 10_000  # events a call publishes at most (a large backlog drains in the background)


class TritonPythonModel:
    """The catalog (to reject unknown items) and the writer of the shared event log."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        repo = Path(args["model_repository"]).parent
        verify_files(repo, ["recommend/"])
        redis = redis_settings(params)
        catalog_dir = catalog_log_dir(repo, params.get("EVENT_LOG", "event_log"))
        # the exported catalog, followed by the items added online (the log's catalog folder, or with
        # Redis the catalog stream: items upserted on any host)
        self.items = CatalogItems(IdVocab.load(repo / "recommend" / "1" / "artifacts" / "store" / "items.json"),
                                  catalog_dir, catalog_tail(catalog_dir, redis, name="events catalog tail"))
        self.max_events = int(params.get("MAX_EVENTS", "100000"))
        events_dir, impressions_dir = event_log_dirs(repo, params.get("EVENT_LOG", "event_log"))
        self.log = EventLog(events_dir, max_total_bytes=max_log_bytes(params))
        kind = pb_utils.MetricFamily
        self.families = [kind("recsys_events_total", "Events received, by outcome", kind.COUNTER),
                         kind("recsys_event_log_bytes", "Size of each durable log (segments and WALs)", kind.GAUGE),
                         kind("recsys_event_log_dropped_segments", "Oldest segments of each log deleted by its "
                              "size bound (their rows are gone from retraining)", kind.GAUGE),
                         kind("recsys_events_request_errors_total", "events requests answered with an error, by "
                              "gRPC code", kind.COUNTER)]
        self.outcomes = {o: self.families[0].Metric(labels={"outcome": o}) for o in OUTCOMES}
        self.errors = {c: self.families[3].Metric(labels={"code": c}) for c in ("invalid_argument", "internal")}
        self.logs = {"events": events_dir, "impressions": impressions_dir, "catalog": catalog_dir}
        self.sizes = {name: (self.families[1].Metric(labels={"log": name}),
                             self.families[2].Metric(labels={"log": name})) for name in self.logs}
        self.stats_every = max(float(params.get("LOG_STATS_S", "5")), 0.5)  # 0 would spin the thread
        self.stopping = threading.Event()
        self._show_sizes()
        self.sizer = threading.Thread(target=self._size_loop, name="log-sizes", daemon=True)
        self.sizer.start()
        self.bus = None
        if redis is not None:
            self._redis(redis, events_dir)

    def _redis(self, settings: dict, events_dir: Path) -> None:
        """Publish the local log to the shared stream; metrics and one log line per change up/down."""
        from events.redis_bus import RedisPublisher

        self.bus, self.bus_metrics, families = start_publisher(
            pb_utils, lambda changed: RedisPublisher(settings["url"], events_dir, stream=settings["stream"],
                                                     maxlen=settings["maxlen"], id_ttl_s=settings["id_ttl_s"],
                                                     on_change=changed),
            "events", ("recsys_redis_backlog_events", "Events logged here, waiting to be published to Redis"),
            ("recsys_redis_published_total", "Events this host added to the Redis stream"))
        self.families += families

    def _answer(self, request) -> np.ndarray:
        table = {}
        for name in COLUMNS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                table[name] = tensor.as_numpy().ravel()
        lengths = {name: len(v) for name, v in table.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"every event input must hold one value per event; got lengths {lengths}")
        n = next(iter(lengths.values()), 0)
        if n > self.max_events:
            raise ValueError(f"{n} events in one request; send at most {self.max_events} (the client splits batches)")
        accepted, status = check_events(table, self.items.follow(), time.time(), records=True)
        if accepted:
            positions = [row.pop("position") for row in accepted]
            for position, fresh in zip(positions, self.log.append_events(accepted)):
                if not fresh:
                    status[position] = "duplicate"
            if self.bus is not None:  # durable here already; shared before the ack when Redis answers
                publish_before_ack(pb_utils, self.bus, self.bus_metrics, "events", REQUEST_FLUSH_LIMIT)
        for outcome in set(status):
            self.outcomes[outcome].increment(status.count(outcome))
        return np.array([s.encode() for s in status], dtype=np.object_)

    def _show_sizes(self) -> None:
        for name, directory in self.logs.items():
            size = log_size(directory)
            self.sizes[name][0].set(float(size["bytes"]))
            self.sizes[name][1].set(float(size["dropped_segments"]))

    def _size_loop(self) -> None:
        while not self.stopping.wait(self.stats_every):
            try:
                self._show_sizes()
            except Exception as err:  # noqa: BLE001 - a failed look is logged; the next one tries again
                pb_utils.Logger.log_warn(f"events: log sizes not read: {type(err).__name__}: {err}")

    def execute(self, requests: list) -> list:
        return answer_each(pb_utils, requests, self._answer, "events", failed=lambda code: self.errors[code].increment(1))

    def finalize(self) -> None:
        self.stopping.set()
        self.sizer.join(timeout=5)
        self.items.close()
        if self.bus is not None:
            self.bus.close()
        self.log.close()
