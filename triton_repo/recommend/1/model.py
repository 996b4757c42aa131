"""``recommend``: one request in, the final list out, through the offline pipeline itself.

It builds the same :class:`pipeline.pipeline.Pipeline` as offline evaluation with
:meth:`pipeline.artifacts.RunArtifacts.load_pipeline`, replacing only the neural models with their
exported ONNX files, so online and offline answers agree. How those run is the ``INFERENCE`` parameter of
config.pbtxt (``auto``, the default, takes the export's choice from ``1/rankers.json``: ``bls`` for
the stock flavour, ``in_process`` for the wheel; see ``export.recommend_inference``):

- ``in_process`` (default): onnxruntime sessions inside this model over the repository's
  ``user_tower/1/model.onnx`` and ``<ranker>/1/model.onnx`` (CUDA provider when present). On CPU
  this is the fast path: a BLS call costs two interprocess hops per model (measured: ~3.5 ms per
  request of 8.7 at concurrency 1 on ML-100K, see docs/serving.md).
- ``bls``: BLS calls to the ``user_tower`` and ranker Triton models, e.g. to use the stock
  container's GPU instances and dynamic batching across recommend instances.

Live state: before each answer the instance applies what was logged since its last look: catalog
records (``pipeline.catalog``: new items embedded by ``item_tower/1/model.onnx`` in process and
added to the index, attribute updates, blocks, stored user attributes; the whole catalog log on
start) and then interaction events (``pipeline.online``), docs/events.md.

Tensors in and out follow :mod:`serving.protocol`; a bad request gets INVALID_ARGUMENT naming the input.

Rankers: ``1/rankers.json`` (written by the export) lists the exported ones (``ranker``,
``ranker_student``, ``ranker_int8``, ...) and the default (``export.ranker``). A request may name
another in its ``ranker`` input; the pipeline's ranker is swapped for that request only (requests
run one after another in ``execute``), so exposure-cap state stays one per instance whatever the
ranker. The ``ranker`` output says which one scored the answer. The ranker choice and the stage
timings are arguments of :meth:`Pipeline.recommend`: nothing in the pipeline is replaced from here.

Product metrics on Triton's Prometheus endpoint (besides Triton's own per-model ones):
``recsys_requests_total{route}`` (known_user, cold_user, probe: the supervisor's liveness probe, which
is answered but recorded nowhere: no impression, no exposure), ``recsys_request_errors_total{code}``,
``recsys_items_total{reason}`` (ranked, boosted, fresh, backfill:*), ``recsys_returned_items``,
``recsys_stage_seconds{stage}`` (user_tower, retrieval, features, ranker, rules, total),
``recsys_empty_answers_total{reason}`` and ``recsys_models_skipped{model}`` (docs/reliability.md).

Live events: before each answer the instance applies the events accepted since its last look
(:class:`pipeline.online.OnlineState`), read from the host's durable log (:class:`events.tail.EventTail`)
or, with Redis configured (``REDIS_URL`` / ``RECSYS_REDIS_URL``), from the shared Redis Stream
(:class:`events.redis_bus.RedisTail`, the same interface), so instances on every host see the same
events. Redis down: the answers come from the state as it is, ``recsys_redis_up{role="recommend"}``
says 0, one log line per outage, and the instance catches up from its last stream id when Redis is back.
Catalog records come the same way: the host's catalog log, or with Redis the shared catalog stream
(read whole at the start: every record ever published), read after the events, so an event never
arrives before its item's record (events on items still unknown wait while records are left to read
or apply). An event on an item this instance still lacks is skipped and counted,
``recsys_events_skipped_total{reason="unknown_item"}``.
"""

from __future__ import annotations

import json
import math
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import triton_python_backend_utils as pb_utils

from events.checks import interaction_columns
from events.log import EventLog
from events.tail import CursorPastEnd, EventTail
from inference.models import INFERENCE, OnnxCallable
from inference.spec import ModelSpec, from_batch, load_specs, to_batch
from pipeline.artifacts import RunArtifacts
from pipeline.catalog import OnlineCatalog
from pipeline.online import OnlineState
from pipeline.pipeline import ROUTES, STAGES, RequestError
from inference.integrity import verify_files
from serving.event_log import (REDIS_UP_HELP, catalog_log_dir, catalog_tail, event_log_dirs, max_log_bytes,
                               events_cut, redis_notices, redis_settings, snapshot_tail, stream_cut)
from serving.metric_buffer import MetricBuffer
from serving.optional_models import load_optional
from serving.protocol import probe_user
from serving.request import EMPTY_REASONS, empty_reason, encode_recommendation, parse_request, requested_ranker

LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
SIZE_BUCKETS = [0, 1, 5, 10, 20, 50, 100, 200]
REASONS = ("ranked", "boosted", "fresh", "backfill:popularity", "backfill:content")
CATALOG_PER_ANSWER = 1000  # catalog records applied before one answer (~0.12 ms each: ~0.1 s at most)
# events applied before one answer: a call of up to 10,000 (the events model's REQUEST_FLUSH_LIMIT) is in
# the very next answer, a larger one (up to 100,000 a call) over the next answers. 14 us an event on known
# users, up to ~60 us on new ones: 0.14-0.6 s at most, inside the supervisor's 2 s probe; one call of
# 100,000 held the next answer 2-6 s, the probe failed and the reload replayed the whole log (found by a probe)
EVENTS_PER_ANSWER = 10_000


class BlsModel:
    """A Triton model called over BLS as a pipeline callable: named numpy arrays in, numpy out."""

    def __init__(self, model_name: str, spec: ModelSpec):
        self.model_name, self.spec = model_name, spec

    def __call__(self, inputs: dict[str, np.ndarray]):
        tensors = [pb_utils.Tensor(t.name, a) for t, a in zip(self.spec.inputs, to_batch(self.spec.inputs, inputs))]
        response = pb_utils.InferenceRequest(
            model_name=self.model_name, inputs=tensors, requested_output_names=self.spec.output_names,
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)).exec()
        if response.has_error():
            raise RuntimeError(f"BLS call to '{self.model_name}' failed: {response.error().message()}")
        out = [from_batch(t, pb_utils.get_output_tensor_by_name(response, t.name).as_numpy())
               for t in self.spec.outputs]
        return out[0] if len(out) == 1 else tuple(out)


class TritonPythonModel:
    """The served pipeline, one per model instance (exposure-cap state included)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version = Path(args["model_repository"]) / args["model_version"]
        root = version.parent.parent  # checksums.json: every file this model reads, before reading any
        verify_files(root, ["recommend/", f"{params['USER_TOWER_MODEL']}/", "item_tower/"])
        specs = load_specs(version / "specs.json")
        self.instance = args.get("model_instance_name", "")  # the `model_instance` label of its live-state metrics (Prometheus owns `instance`)
        self._metrics()
        served = json.loads((version / "rankers.json").read_text())
        self.default_ranker, user_tower = served["default"], params["USER_TOWER_MODEL"]
        missing = [m for m in (user_tower, *served["rankers"]) if m not in specs]
        if missing or self.default_ranker not in served["rankers"]:
            raise ValueError(f"{version / 'specs.json'} has no table for {missing} (exported: {sorted(specs)}) or the "
                             f"default ranker {self.default_ranker!r} is not among {served['rankers']}; re-export")
        inference = params.get("INFERENCE", "auto")
        if inference == "auto":
            inference = served.get("inference", "in_process")
        if inference == "bls":
            def model(name: str):
                return BlsModel(name, specs[name])
        elif inference == "in_process":
            repo, threads = Path(args["model_repository"]).parent, int(params.get("ORT_THREADS", "1"))
            gpu = args.get("model_instance_kind") == "GPU"

            def model(name: str):
                return OnnxCallable(repo / name / "1" / "model.onnx", specs[name], threads, gpu)
        else:
            raise ValueError(f"parameter INFERENCE={inference!r}; known: {', '.join(INFERENCE)}")

        def ranker(name: str):
            verify_files(root, [f"{name}/"])
            return model(name)

        rankers, skipped = load_optional(  # optional rankers that fail to load: logged, counted, skipped
            served["rankers"], [self.default_ranker], ranker)
        for name, why in skipped.items():
            pb_utils.Logger.log_error(f"recommend: optional ranker {name} skipped: {why}")
        for name in served["rankers"]:  # 0 for each loaded one: the series exists before any failure
            # per instance: one that loaded a ranker must not overwrite another's 1 (each loads its own)
            self.families.append(self.skipped.Metric(labels={"model": name, "model_instance": self.instance}))
            self.families[-1].set(1 if name in skipped else 0)
        art = RunArtifacts(version / "artifacts")
        self.pipeline = art.load_pipeline(user_encoder=model(user_tower), rankers=rankers,
                                          default_ranker=self.default_ranker)
        self.rankers = list(rankers)
        self.titles = art.titles()
        self.logger = pb_utils.Logger
        self.probe_user = probe_user()  # the supervisor's liveness probe: answered, recorded nowhere
        self.impression_durability = params.get("IMPRESSION_DURABILITY", "normal")
        # new items online are embedded by the exported item tower, in process (never over BLS: the
        # catalog is caught up in initialize too, where BLS is not available)
        self.catalog = OnlineCatalog(self.pipeline, OnnxCallable(
            Path(args["model_repository"]).parent / "item_tower" / "1" / "model.onnx", specs["item_tower"],
            int(params.get("ORT_THREADS", "1")), args.get("model_instance_kind") == "GPU"), self.titles)
        self.log_max_bytes = max_log_bytes(params)
        self._live_events(art, *event_log_dirs(root, params.get("EVENT_LOG", "event_log")),
                          catalog_log_dir(root, params.get("EVENT_LOG", "event_log")), redis_settings(params))

    def _live_events(self, art: RunArtifacts, events_dir: Path, impressions_dir: Path, catalog_dir: Path,
                     redis: dict | None) -> None:
        """Follow the shared events (from the served snapshot on) and catalog records (all of them):
        the host's log, or the Redis streams when configured; log every answer as an impression in the
        host's log."""
        m = art.manifest()
        artifacts = m.get("artifacts", {})
        self.snapshot_at = _written_at(artifacts.get("store", {}))
        self.events_after = events_cut(artifacts.get("store", {}), self.snapshot_at)  # without a log cursor
        self.model_at = _written_at(artifacts.get("two_tower", {}))
        self.model_version = _model_version(art, m)
        self.online = OnlineState(self.pipeline)
        self._pending = self._pending_catalog = None
        self._waiting = 0  # of the held events, those waiting for their items' catalog records
        # Impressions: `normal` durability (an acknowledged row survives a killed process, not a power
        # cut; 0.2 ms per answer instead of an fsync's 0.6-4 ms, docs/events.md); `events` uses `full`.
        self.event_log = EventLog(impressions_dir, durability=self.impression_durability,
                                  max_total_bytes=self.log_max_bytes)
        self.redis_up, self.shown_up = None, None
        if redis is None:
            self.tail = snapshot_tail(events_dir, artifacts.get("store", {}), self.snapshot_at)  # after its log cursor
            self.catalog_tail = catalog_tail(catalog_dir, None)
        else:
            from events.redis_bus import RedisTail

            changed = redis_notices(pb_utils)

            family = pb_utils.MetricFamily("recsys_redis_up", REDIS_UP_HELP, pb_utils.MetricFamily.GAUGE)
            missed = pb_utils.MetricFamily("recsys_redis_missed_events_total", "Stream entries (events, catalog "
                                           "records) trimmed before this instance read them (away longer than "
                                           "REDIS_MAXLEN / REDIS_CATALOG_MAXLEN)",
                                           pb_utils.MetricFamily.COUNTER)
            self.families += [family, missed]
            self.redis_up = family.Metric(labels={"role": "recommend", "model_instance": self.instance})
            self.redis_missed, self.shown_missed = missed.Metric(labels={}), 0
            self.tail = RedisTail(redis["url"], stream=redis["stream"],
                                  received_after=stream_cut(artifacts.get("store", {}), self.snapshot_at),
                                  on_change=changed)
            self.catalog_tail = catalog_tail(catalog_dir, redis, on_change=changed, name="recommend catalog tail")
        self.events_per_answer = None  # before the first answer: every event at once (nobody waits yet)
        self._catch_up()  # everything shared since the snapshot, before the first answer
        # a Redis tail reads a bounded number per call, the catalog CATALOG_PER_ANSWER records
        while self._catalog_left() or getattr(self.tail, "more", False):
            self._catch_up()
        self.events_per_answer = EVENTS_PER_ANSWER

    def _catalog_left(self) -> bool:
        """Catalog records read but not applied yet, or (the catalog read stopped at its bound) not read yet."""
        return self._pending_catalog is not None or getattr(self.catalog_tail, "more", False)

    def _catch_up(self) -> None:
        try:
            self._apply_new()
        finally:  # also when applying failed: the ages keep growing and show it
            self._report_state()

    def _apply_new(self) -> None:
        """The events and catalog records logged since the last answer. Events read are held in
        ``_pending`` until applied (a failure anywhere below keeps them for the next answer: their
        cursor has moved on); the catalog is read and applied even when the events' tail fails."""
        failure, read = None, None
        bound = getattr(self, "events_per_answer", EVENTS_PER_ANSWER)
        held = 0 if self._pending is None else len(self._pending["event_id"])
        # read no more than one answer applies, besides events waiting for catalog records (others' events
        # go on meanwhile), and hold at most two answers' worth
        room = None if bound is None else min(bound - (held - self._waiting), 2 * bound - held)
        if room is None or room > 0:
            try:
                read = self._read(self.tail, room)  # numpy columns: no pandas on the answer path
            except Exception as err:  # noqa: BLE001 - raised below, once the catalog had its turn
                failure = err
        if read is not None and len(read["event_id"]):
            self._pending = read if self._pending is None else _concat(self._pending, read)
        # Catalog records after the events: an event is accepted only once its item's record was
        # logged, so every item an event read here names is in this catalog read (or an earlier one,
        # or, when the catalog's read stopped at its bound, one still to read: those events wait).
        held = 0 if self._pending_catalog is None else len(self._pending_catalog)
        records = self._read(self.catalog_tail, CATALOG_PER_ANSWER - held) if held < CATALOG_PER_ANSWER else None
        # a Redis catalog tail that could not read (down, or waiting to retry) returns nothing: records
        # the events need may be missing, so events on items not known yet wait as for a bounded read
        unread = getattr(self.catalog_tail, "up", None) is False
        if records is None:
            records, self._pending_catalog = self._pending_catalog, None
        elif self._pending_catalog is not None:
            records = pd.concat([self._pending_catalog, records], ignore_index=True)
            self._pending_catalog = None
        if len(records):
            # at most CATALOG_PER_ANSWER records before one answer: a bulk upload (50k items: ~6 s of
            # embedding) is spread over the next answers instead of holding one past the probe's deadline
            part = records.iloc[:CATALOG_PER_ANSWER].reset_index(drop=True)
            try:
                counts = self.catalog.apply(part)
            except Exception:
                self._pending_catalog = records  # retried next request, before any event
                raise
            if len(records) > CATALOG_PER_ANSWER:
                self._pending_catalog = records.iloc[CATALOG_PER_ANSWER:].reset_index(drop=True)
            for op, n in counts.items():
                if n:
                    self.catalog_applied[op].increment(n)
        if self._pending is not None:
            new, waiting, self._waiting = self._pending, None, 0
            if self._catalog_left() or unread:  # records still to apply (or read): events on items not known yet wait
                wait = self.pipeline.store.items.lookup(np.asarray(new["item_id"]).astype(str)) < 0
                users = np.asarray(new["user_id"]).astype(str)
                wait |= np.isin(users, users[wait])  # a user's events stay in order: all of theirs wait
                new, waiting = ({k: v[~wait] for k, v in new.items()}, {k: v[wait] for k, v in new.items()})
                self._waiting = int(wait.sum())
            if bound is not None and len(new["event_id"]) > bound:  # the rest before the next answers, in order
                later = {k: v[bound:] for k, v in new.items()}  # (their users wait for nothing: none in `waiting`)
                new = {k: v[:bound] for k, v in new.items()}
                waiting = later if waiting is None else _concat(later, waiting)
            if len(new["event_id"]):
                counts = self.online.apply(interaction_columns(new))  # raises: all still held, retried next request
                self.applied.increment(counts["applied"])
                self.last_event_at = max(self.last_event_at or 0.0, float(new["received_at"].max()))
                if counts["unknown_items"]:
                    self._skipped(counts["unknown_items"])
            self._pending = waiting if waiting is not None and len(waiting["event_id"]) else None
        if failure is not None:
            raise failure

    def _read(self, tail, limit: int | None = None):
        """What ``tail`` holds that is new (the events' numpy columns, the catalog's frame), at most
        ``limit`` rows (then the tail's ``more`` says whether rows remain). A log
        recreated under its cursor (``CursorPastEnd``) is read again from its start: the events received
        after the newest one applied (or the snapshot), the catalog whole (applying a record again is
        harmless); said in the log."""
        events = tail is self.tail
        try:
            return tail.read_new_columns(limit) if events else tail.read_new(limit)
        except CursorPastEnd as err:
            if events:  # after everything applied or held (held events are not read twice)
                held = float(self._pending["received_at"].max()) if self._pending is not None else 0.0
                since = max(self.last_event_at or self.events_after or 0.0, held)
                self.tail = EventTail(tail.directory, received_after=since)
            else:
                self.catalog_tail = EventTail(tail.directory, kind="catalog")
            (self.tail if events else self.catalog_tail).skipped_segments = tail.skipped_segments  # never counted down
            # a limited read may have stopped inside one append (its rows share one received_at): rows of it
            # not read yet are at `since`, which the new tail skips; a log replaced while a burst was read
            # in parts is rare (a restore under a new identity), so it is said rather than reconstructed
            cut = ("; the rows of the call being read in parts when it was replaced, received at that time and "
                   "not read yet, are skipped") if events and getattr(tail, "more", False) else ""
            self.logger.log_error(f"recommend: {err}; reading it again from its start"
                                  + (f" (events received after {since}{cut})" if events else ""))
            return self.tail.read_new_columns(limit) if events else self.catalog_tail.read_new(limit)

    def _skipped(self, n: int) -> None:
        """Count logged events whose item this instance's catalog lacks (without Redis: an item upserted
        on another host; with Redis: its record trimmed from the catalog stream, or hosts configured with
        different catalog streams; docs/events.md); a log line at most once a minute."""
        self.events_skipped["unknown_item"].increment(n)
        self._skipped_since_log += n
        now = time.monotonic()
        if now - self._skip_logged_at >= 60.0:
            self.logger.log_warn(f"recommend: {self._skipped_since_log} logged event(s) not applied since the last "
                                 "such line: their item is not in this instance's catalog (upserted on another host without "
                                 "Redis, or trimmed from the catalog stream? docs/events.md)")
            self._skipped_since_log, self._skip_logged_at = 0, now

    def _report_state(self) -> None:
        segments = getattr(self.tail, "skipped_segments", 0) + getattr(self.catalog_tail, "skipped_segments", 0)
        if segments != self.shown_segments:  # local tails only (a Redis tail counts trimmed entries below)
            self.segments_skipped.increment(segments - self.shown_segments)
            self.logger.log_warn(f"recommend: {segments - self.shown_segments} log segment(s) dropped by the log's size "
                                 "bound before this instance read them: their events or catalog records were never "
                                 "applied (give the log more room: --log-max-gib)")
            self.shown_segments = segments
        if self.redis_up is not None:  # up: both streams read at their last try
            up = self.tail.up if self.catalog_tail.up is not False else False
            if up != self.shown_up:
                self.shown_up = up
                self.redis_up.set(1.0 if up else 0.0)
            missed = self.tail.missed + self.catalog_tail.missed
            if missed != self.shown_missed:
                self.redis_missed.increment(missed - self.shown_missed)
                self.shown_missed = missed
        now = time.time()  # buffered gauges: sent once a second (serving/metric_buffer.py)
        # with none applied yet: the age of this instance's state (its start), so a tail stuck from the
        # start shows too (RecsysEventsNotReachingAnswers)
        self.freshness["event"].set(now - (self.last_event_at or self.started_at))
        self.freshness["snapshot"].set(now - self.snapshot_at if self.snapshot_at else -1.0)
        self.freshness["model"].set(now - self.model_at if self.model_at else -1.0)

    def _metrics(self) -> None:
        # Counted in process, sent by a background thread once a second (serving/metric_buffer.py: each
        # metric call is a round trip to the server, ~40 us; there were about ten per answer).
        kind = pb_utils.MetricFamily
        m = self.metrics = MetricBuffer(kind)
        self.requests = m.counters("recsys_requests_total", "Answered recommend requests by route (probe: the "
                                   "supervisor's liveness probe)", "route", (*ROUTES, "probe"))
        self.errors = m.counters("recsys_request_errors_total", "Failed recommend requests by gRPC code", "code",
                                 ("invalid_argument", "internal"))
        self.items = m.counters("recsys_items_total", "Returned items by why they are there (backfill = fallback)",
                                "reason", REASONS)
        self.returned = m.histograms("recsys_returned_items", "Items returned per request", None, (), SIZE_BUCKETS)[""]
        self.stage = m.histograms("recsys_stage_seconds", "Latency of each pipeline stage in seconds", "stage", STAGES,
                                  LATENCY_BUCKETS)
        self.empty = m.counters("recsys_empty_answers_total", "Answers with no item, by why", "reason", EMPTY_REASONS)
        inst = {"model_instance": self.instance}  # state each instance holds on its own: one series each
        self.applied = m.counter("recsys_events_applied_total", "Logged events applied to this instance's state", inst)
        self.apply_failures = m.counter(
            "recsys_live_apply_failures_total", "Answers given without applying the newly logged events or catalog "
            "records (they are retried before the next answer)", inst)
        self.events_skipped = m.counters(
            "recsys_events_skipped_total", "Logged events this instance did not apply, by why (unknown_item: the "
            "item is not in its catalog)", "reason", ("unknown_item",), inst)
        self._skipped_since_log, self._skip_logged_at = 0, -math.inf
        self.segments_skipped = m.counter(
            "recsys_log_segments_skipped_total", "Log segments the log's size bound dropped before this instance "
            "read them: their events or catalog records were never applied", inst)
        self.shown_segments = 0
        self.impressions_lost = m.counter("recsys_impressions_lost_total", "Answers whose impression could not be logged")
        self.freshness = m.gauges("recsys_freshness_seconds",
                                  "Age of the newest applied event (of the instance's start while none is), "
                                  "the served snapshot and the model", "of", ("event", "snapshot", "model"), inst)
        self.catalog_applied = m.counters("recsys_catalog_applied_total",
                                          "Catalog changes applied to this instance, by kind", "change",
                                          ("new_items", "updated_items", "blocked", "unblocked", "users"), inst)
        self.last_event_at, self.started_at = None, time.time()
        # Set once at load: direct, not buffered.
        self.families = [kind("recsys_models_skipped", "Optional rankers that failed to load (1 = skipped)", kind.GAUGE)]
        self.skipped = self.families[0]
        m.start()

    def _observe(self, stage: str, seconds: float) -> None:
        self.stage[stage].observe(seconds)

    def _answer(self, request) -> dict[str, np.ndarray]:
        arrays = {t.name(): t.as_numpy() for t in request.inputs()}  # the ones sent, in one call
        parsed = parse_request(arrays, self.pipeline.max_k)
        ranker = requested_ranker(arrays, self.rankers, self.default_ranker)
        if parsed.user_id == self.probe_user:  # a health probe: the whole pipeline, shown to nobody, recorded nowhere
            rec = self.pipeline.recommend([parsed], ranker=ranker, on_stage=self._observe, record=False)[0]
            self.requests["probe"].increment(1)
            return encode_recommendation(rec, self.titles, ranker, "", request.requested_output_names())
        rec = self.pipeline.recommend([parsed], ranker=ranker, on_stage=self._observe)[0]
        request_id = uuid.uuid4().hex
        self._shown.append({"request_id": request_id, "user_id": parsed.user_id, "items": rec.item_ids,
                            "scores": [v if math.isfinite(v) else 0.0 for v in rec.scores], "reasons": rec.reasons, "route": rec.route, "ranker": ranker,
                            "model_version": self.model_version,
                            "timestamp": float(parsed.timestamp if parsed.timestamp is not None else time.time())})
        self.requests[rec.route].increment(1)
        self.returned.observe(len(rec.item_ids))
        if not rec.item_ids:  # a valid, counted outcome (e.g. every category excluded)
            self.empty[empty_reason(parsed)].increment(1)
        for reason, n in Counter(r if r in self.items else "ranked" for r in rec.reasons).items():
            self.items[reason].increment(n)
        # only the outputs asked for (RecommendClient asks for `answer` alone: one tensor, not eight)
        return encode_recommendation(rec, self.titles, ranker, request_id, request.requested_output_names())

    def execute(self, requests: list) -> list:
        """Answer each request; a bad one gets an error response, the others are unaffected."""
        responses, self._shown = [], []
        try:
            self._catch_up()
        except Exception as err:  # noqa: BLE001 - answer from the state as it is; say so
            self.apply_failures.increment(1)
            self.logger.log_error(f"recommend: live events not applied: {type(err).__name__}: {err}")
        for request in requests:
            try:
                out = self._answer(request)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in out.items()]))
            except RequestError as err:
                self.errors["invalid_argument"].increment(1)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)))
            except Exception as err:  # noqa: BLE001 - answer with INTERNAL, keep serving
                self.errors["internal"].increment(1)
                self.logger.log_error(f"recommend failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(err).__name__}: {err}")))
        if self._shown:  # durable before the answers leave
            try:
                self.event_log.append_impressions(self._shown, new_ids=True)  # fresh UUIDs: no search
            except Exception as err:  # noqa: BLE001 - the answers still go out; the loss is logged and counted
                self.impressions_lost.increment(len(self._shown))
                self.logger.log_error(f"recommend: {len(self._shown)} impressions not logged: {type(err).__name__}: {err}")
        return responses

    def finalize(self) -> None:
        self.metrics.close()
        self.tail.close()
        self.catalog_tail.close()
        self.event_log.close()


def _concat(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two batches of event columns, one after the other."""
    return {name: np.concatenate([a[name], b[name]]) for name in a}


def _model_version(art: RunArtifacts, manifest: dict) -> str:
    """What impressions record as the served version: ``<run folder>:<8 hex of its manifest digest>@<code>``
    from the repository's export.json (the run's folder name alone was the version folder, "1", for
    every export: a probe could not tell v1's answers from v2's after a rollout); the artifacts' folder
    name for a repository without one."""
    try:
        exported = json.loads((art.run_dir.parent.parent / "export.json").read_text())
        run = f"{Path(exported['run_dir']).name}:{str(exported['run_manifest_sha256'])[:8]}"
    except (OSError, ValueError, KeyError, TypeError):
        run = art.run_dir.name
    return f"{run}@{manifest.get('code_version', '?')}"


def _written_at(entry: dict) -> float | None:
    """When a manifest artifact was written, Unix seconds (``written_at_unix``; older runs: the local
    ``written_at`` string, read back on this machine's clock)."""
    if "written_at_unix" in entry:
        return float(entry["written_at_unix"])
    stamp = entry.get("written_at")
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp else None
