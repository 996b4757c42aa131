"""``catalog``: item / user upserts and item blocks in, one status per record out; accepted ones made
durable first.

Each record is checked on its own (:func:`events.catalog.check_catalog`: the op, the id, the
attribute names against the run's schema, each value's form, blocks of known items, duplicates in
the batch); the accepted ones are appended to the log's ``catalog`` folder
(:class:`events.log.EventLog`, shared with every ``recommend`` instance and the ``events`` model) in
one transaction, and only then does the call return. ``recommend`` applies them before its next
answer (``pipeline.catalog``). The model follows the same log for the items added since the
export (by this server or another sharing the log), so a block of one of them is accepted.

With Redis configured (``REDIS_URL`` / ``RECSYS_REDIS_URL``), the committed records are then published
to the shared catalog stream (``REDIS_CATALOG_STREAM``, :class:`events.redis_bus.RedisPublisher`)
before the call returns, so every ``recommend`` on every host applies them before its next answer,
and the model follows that stream for the items (upserted on any host). Redis down does not fail the
call: the records are durable in the local log, wait there (``recsys_redis_catalog_backlog_records``)
and go out when Redis is back (a background thread, and the ``events`` model before any event).

Counters: ``recsys_catalog_records_total{op, outcome}`` (ok or the rejection reason),
``recsys_catalog_request_errors_total{code}`` (whole requests answered with an error: ``invalid_argument``
or ``internal``); with Redis ``recsys_redis_up{role="catalog"}``, ``recsys_redis_catalog_backlog_records``
and ``recsys_redis_catalog_published_total``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from events.catalog import OPS, REASONS, CatalogItems, check_catalog
from events.log import EventLog
from features.encoders import FeatureSet
from features.vocab import IdVocab
from inference.integrity import verify_files
from pipeline.catalog import catalog_schema
from serving.event_log import (catalog_log_dir, catalog_publisher, catalog_tail, max_log_bytes, publish_before_ack,
                               redis_settings, start_publisher)
from serving.protocol import CATALOG_INPUTS
from serving.status_answers import answer_each

OUTCOMES = ("ok", *REASONS)
REQUEST_FLUSH_LIMIT = 10_000  # records a call publishes at most (a larger upload drains in the background)


class TritonPythonModel:
    """The attribute schema and item vocabulary of the served run, and the writer of the catalog log."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        repo = Path(args["model_repository"]).parent
        verify_files(repo, ["recommend/"])
        store = repo / "recommend" / "1" / "artifacts" / "store"
        self.schema = catalog_schema(FeatureSet.load(store / "encoders.json"))
        directory = catalog_log_dir(repo, params.get("EVENT_LOG", "event_log"))
        redis = redis_settings(params)
        self.items = CatalogItems(IdVocab.load(store / "items.json"), directory,
                                  catalog_tail(directory, redis, name="catalog model tail"))
        self.max_records = int(params.get("MAX_RECORDS", "100000"))
        self.log = EventLog(directory, max_total_bytes=max_log_bytes(params))
        family = pb_utils.MetricFamily("recsys_catalog_records_total", "Catalog records received, by op and outcome",
                                       pb_utils.MetricFamily.COUNTER)
        errors = pb_utils.MetricFamily("recsys_catalog_request_errors_total", "catalog requests answered with an "
                                       "error, by gRPC code", pb_utils.MetricFamily.COUNTER)
        self.families = [family, errors]
        self.counts = {(op, o): family.Metric(labels={"op": op, "outcome": o}) for op in (*OPS, "other") for o in OUTCOMES}
        self.errors = {c: errors.Metric(labels={"code": c}) for c in ("invalid_argument", "internal")}
        self.bus = None
        if redis is not None:
            self._redis(redis, directory)

    def _redis(self, settings: dict, directory: Path) -> None:
        """Publish the host's catalog log to the shared catalog stream; metrics and one log line per change."""
        self.bus, self.bus_metrics, families = start_publisher(
            pb_utils, lambda changed: catalog_publisher(directory, settings, on_change=changed), "catalog",
            ("recsys_redis_catalog_backlog_records", "Catalog records logged here, waiting to be published to Redis"),
            ("recsys_redis_catalog_published_total", "Catalog records this host added to the Redis catalog stream"))
        self.families += families

    def _answer(self, request) -> dict[str, np.ndarray]:
        table = {}
        for name in CATALOG_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                table[name] = tensor.as_numpy().ravel()
        n = len(table["op"])
        if n > self.max_records:
            raise ValueError(f"{n} records in one request; send at most {self.max_records} (the client splits batches)")
        details: list[str] = []
        accepted, status = check_catalog(table["op"], table["id"], table.get("attributes"), self.schema,
                                         self.items.follow(), time.time(), details)
        if accepted:
            for row in accepted:
                row.pop("position")
            self.log.append_catalog(accepted)  # record ids are fresh: every accepted record is stored
            if self.bus is not None:  # durable here already; shared before the ack when Redis answers
                publish_before_ack(pb_utils, self.bus, self.bus_metrics, "catalog", REQUEST_FLUSH_LIMIT)
        ops = [op.decode("utf-8", errors="replace") if isinstance(op, bytes) else str(op) for op in table["op"]]
        # one increment per (op, outcome), not per record: every metric call is a round trip
        for (op, outcome), k in Counter((op if op in OPS else "other", s) for op, s in zip(ops, status)).items():
            self.counts[(op, outcome)].increment(k)
        out = {"status": np.array([s.encode() for s in status], dtype=np.object_)}
        if "detail" in request.requested_output_names():  # older clients ask for the status alone
            out["detail"] = np.array([d.encode() for d in details], dtype=np.object_)
        return out

    def execute(self, requests: list) -> list:
        return answer_each(pb_utils, requests, self._answer, "catalog",
                           failed=lambda code: self.errors[code].increment(1))

    def finalize(self) -> None:
        self.items.close()
        if self.bus is not None:
            self.bus.close()
        self.log.close()
