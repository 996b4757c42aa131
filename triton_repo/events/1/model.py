"""``events``: interaction events in, one status per event out; accepted ones made durable first.

Each event is checked on its own (:func:`events.schema.check_events`: ids, timestamp, type,
weight, the item in the catalog, duplicates within the batch); the accepted ones are appended to
the durable event log (:class:`events.log.EventLog`, shared with every ``recommend`` instance) in
one transaction, and only then does the call return, so an acknowledged event survives a crash.
A resent ``event_id`` is acknowledged as ``duplicate`` and not applied again. ``recommend``
applies the logged events before its next answer (``triton_repo/recommend``, ``pipeline.online``).

Counters: ``recsys_events_total{outcome}`` (ok, duplicate, or the rejection reason) and
``recsys_event_log_bytes``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from events.log import EventLog
from events.catalog import CatalogItems
from events.checks import COLUMNS, REASONS, check_events
from features.vocab import IdVocab
from inference.integrity import verify_files
from serving.event_log import catalog_log_dir, event_log_dirs

OUTCOMES = ("ok", "duplicate", *REASONS)


class TritonPythonModel:
    """The catalog (to reject unknown items) and the writer of the shared event log."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        repo = Path(args["model_repository"]).parent
        verify_files(repo, ["recommend/"])
        # the exported catalog, followed by the items added online (the log's catalog folder)
        self.items = CatalogItems(IdVocab.load(repo / "recommend" / "1" / "artifacts" / "store" / "items.json"),
                                  catalog_log_dir(repo, params.get("EVENT_LOG", "event_log")))
        self.max_events = int(params.get("MAX_EVENTS", "100000"))
        self.log = EventLog(event_log_dirs(repo, params.get("EVENT_LOG", "event_log"))[0])
        kind = pb_utils.MetricFamily
        self.families = [kind("recsys_events_total", "Events received, by outcome", kind.COUNTER),
                         kind("recsys_event_log_bytes", "Size of the durable event log", kind.GAUGE)]
        self.outcomes = {o: self.families[0].Metric(labels={"outcome": o}) for o in OUTCOMES}
        self.log_bytes = self.families[1].Metric(labels={})
        self.sized_at = 0.0

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
        for outcome in set(status):
            self.outcomes[outcome].increment(status.count(outcome))
        if time.monotonic() - self.sized_at >= 1.0:  # the log size at most once a second (0.5 ms a look)
            self.log_bytes.set(self.log.stats()["bytes"])
            self.sized_at = time.monotonic()
        return np.array([s.encode() for s in status], dtype=np.object_)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("status", self._answer(request))]))
            except ValueError as err:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"events: {err}", pb_utils.TritonError.INVALID_ARG)))
            except Exception as err:  # noqa: BLE001 - a failed write is an error for this call, the model keeps serving
                pb_utils.Logger.log_error(f"events failed: {type(err).__name__}: {err}")
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(err).__name__}: {err}")))
        return responses

    def finalize(self) -> None:
        self.items.close()
        self.log.close()
