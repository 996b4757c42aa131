"""gRPC client of the ``recommend`` model.

Example:
    >>> with RecommendClient("127.0.0.1:8001") as client:
    ...     answer = client.recommend("196", k=10, exclude_categories=["Horror"])
    >>> answer.item_ids, answer.scores, answer.reasons, answer.route

A rejected request raises :class:`tritonclient.utils.InferenceServerException`; its
``status()`` is ``"StatusCode.INVALID_ARGUMENT"`` and its message names the bad input.

Retries: a request is read-only for the caller (the same request gives the same list, bar the
exposure-cap window), so calls that fail while the service heals are retried with exponential
backoff and jitter: UNAVAILABLE (server restarting), DEADLINE_EXCEEDED (a frozen model) and
INTERNAL "Stub process ... is not healthy" (a dead model process before the supervisor reloads
it). Rejections (INVALID_ARGUMENT) are never retried. ``retries`` and ``backoff`` bound the wait;
each sleep is capped at ``max_backoff`` (1 s), so a client that waited through a server restart
asks again within a second of the server's return instead of sleeping on for 4-8 s.

Rejections are counted on the client (``RecommendClient.rejections``, by kind): Triton 2.51 counts
the requests its core rejects before any model runs (wrong datatype or shape, unknown input) in
none of its metrics, and the model's own counters never see them (checked in
tests/test_reliability.py), so a client-side mirror is the only place they are counted.
"""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from typing import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.protocol import (ANSWER, CATALOG_MODEL, CATALOG_OUTPUTS, EVENT_OUTPUTS, EVENTS_MODEL, FIELDS, MODEL,
                              Recommendations, decode_answer, decode_response, encode_catalog, encode_events,
                              encode_request, id_list)


RETRY_CODES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


def retryable(err: InferenceServerException) -> bool:
    """Whether a failed call may succeed when repeated (the service is healing, not rejecting it)."""
    message = err.message() or ""
    # "has no available versions": the model is known but unloading or loading (a server stopping, a
    # reload); an unknown model name says "is not found" and is not retried
    return (err.status() in RETRY_CODES or "Deadline Exceeded" in message or "is not healthy" in message
            or "has no available versions" in message)


# Phrases of Triton 2.51's core validation (tritonserver's infer_request.cc), checked before any model runs.
CORE_REJECTIONS = (("datatype", "data-type is"), ("shape", "unexpected shape"),
                   ("unknown_input", "unexpected inference input"), ("missing_input", "inputs but got"),
                   ("batch_size", "batch-size must be"))


def rejection_kind(err: InferenceServerException) -> str:
    """``core:<kind>`` for what Triton's core rejects before the model runs, ``model`` for the model's own."""
    message = err.message() or ""
    return next((f"core:{kind}" for kind, marker in CORE_REJECTIONS if marker in message), "model")


class _RawInput:
    """One request input, serialised as ``tritonclient.grpc.InferInput.set_data_from_numpy`` does (the
    same tensor message and raw bytes: tests/serving/test_client_wire.py compares the two requests
    byte for byte), without its per-element numpy iteration, dtype lookups and checks of an array
    built here: ~0.3 ms less client CPU per ``recommend`` call on the 2-core box (docs/serving.md).
    ``InferenceServerClient.infer`` reads an input through ``_get_tensor`` / ``_get_content``."""

    __slots__ = ("_tensor", "_content")

    def __init__(self, name: str, datatype: str, shape: tuple, content: bytes):
        self._tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        self._content = content

    def _get_tensor(self):
        return self._tensor

    def _get_content(self) -> bytes:
        return self._content


_PACK_LENGTH = struct.Struct("<I").pack  # a BYTES element's 4-byte little-endian length prefix


def _bytes_content(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw content: each element (row-major) as its length and bytes; text as UTF-8."""
    parts = []
    for v in array.ravel().tolist():
        b = v if type(v) is bytes else str(v).encode("utf-8")
        parts += (_PACK_LENGTH(len(b)), b)
    return b"".join(parts)


def _inputs(tensors: dict) -> list:
    """Request inputs from named arrays (object arrays as BYTES, numbers in their own type); numpy
    byte-string and big-endian arrays go through tritonclient's ``InferInput``; a dtype Triton has no
    type for is refused here."""
    inputs = []
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"input '{name}' must be a numpy array, got {type(array).__name__}")
        if array.dtype == np.object_:
            inputs.append(_RawInput(name, "BYTES", array.shape, _bytes_content(array)))
            continue
        datatype = np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise TypeError(f"input '{name}' has dtype {array.dtype}, which Triton has no type for")
        if array.dtype.kind in "iufb" and array.dtype.byteorder in "=|<":
            inputs.append(_RawInput(name, datatype, array.shape, array.tobytes()))
        else:
            inp = grpcclient.InferInput(name, list(array.shape), datatype)
            inputs.append(inp.set_data_from_numpy(array))
    return inputs


def _answer_text(result) -> bytes | None:
    """The ``answer`` output's one string, read from the response's raw bytes (no numpy object array);
    None when the response holds it otherwise."""
    response = result.get_response()
    raw = response.raw_output_contents
    for i, out in enumerate(response.outputs):
        if out.name == ANSWER and i < len(raw) and len(raw[i]) >= 4:
            (n,) = struct.unpack_from("<I", raw[i])
            if len(raw[i]) == 4 + n:
                return raw[i][4:]
    return None


def call_seconds(text: str) -> float:
    """A command's ``--timeout``: finite seconds > 0 (0, a negative number or nan ended every call in
    DEADLINE_EXCEEDED); an ``argparse`` type."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give the seconds a call may take, a number > 0 (e.g. 10)")
    return value


def check_address(url: str) -> str:
    """``host:port`` with a port in 1..65535, else ValueError (gRPC takes a larger port modulo 65536:
    ``127.0.0.1:99999`` reached whatever listens on 34463)."""
    if url.startswith(("unix:", "unix-abstract:")):
        return url
    host, sep, port = url.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"server address {url!r}: expected host:port with a port in 1..65535, e.g. 127.0.0.1:8001")
    return url


def _records(table, id_column: str) -> list[dict]:
    """A DataFrame or a list of dicts -> one dict per row (the id column required; a row whose id cell is
    empty goes with an empty id, which the server answers ``missing_id`` for that record alone)."""
    has_column = id_column in table.columns if hasattr(table, "columns") else None
    rows = table.to_dict("records") if hasattr(table, "to_dict") else [dict(r) for r in table]
    # an empty cell (None / NaN) is "not given": a known entity keeps that attribute
    rows = [{k: v for k, v in r.items() if not (v is None or (isinstance(v, float) and v != v))} for r in rows]
    if not (has_column if has_column is not None else any(id_column in r for r in rows)) and rows:
        raise ValueError(f"the records have no '{id_column}'; every row names its {id_column}")
    for r in rows:
        r.setdefault(id_column, None)
    return rows


class RecommendClient:
    """Calls ``recommend`` on a Triton server over gRPC.

    Args:
        url: ``host:port`` of the server's gRPC endpoint.
        model: model name in the repository.
        timeout: seconds per call (None waits forever).
        retries: further attempts after a retryable failure (0 = none).
        backoff: seconds before the first retry; doubled each time (plus up to 50% jitter).
        max_backoff: the longest sleep between two attempts (before jitter); None: 1 s, or ``backoff``
            when that is longer.
        **client_kwargs: passed to ``tritonclient.grpc.InferenceServerClient`` (``ssl``, certificates).
    """

    def __init__(self, url: str, model: str = MODEL, timeout: float | None = 10.0, retries: int = 4,
                 backoff: float = 0.25, max_backoff: float | None = None, **client_kwargs):
        max_backoff = max(1.0, backoff) if max_backoff is None else max_backoff
        if retries < 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError(f"retries={retries} and backoff={backoff} must be >= 0, max_backoff={max_backoff} "
                             f">= backoff")
        check_address(url)
        self.url, self.model, self.timeout = url, model, timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.retried = 0  # retries made so far (all calls)
        self.rejections: Counter = Counter()  # INVALID_ARGUMENT answers by rejection_kind
        self._client = grpcclient.InferenceServerClient(url, **client_kwargs)
        # `answer` alone: the whole answer in one response tensor (serving/protocol.py); the named
        # outputs when the server predates it (decided on the first answer, see `infer`)
        self._outputs = [grpcclient.InferRequestedOutput(ANSWER)]
        self._catalog_outputs = list(CATALOG_OUTPUTS)  # status and detail; status alone for an older server
        self.last_details: list[str] = []  # per record of the last catalog call: "" or what was wrong
        self.last_statuses: list[str] = []  # per event of the last send_events, as far as it got

    def recommend(self, user_id: str, k: int, timestamp: float | None = None, exclude_items: Sequence[str] = (),
                  include_categories: Sequence[str] = (), exclude_categories: Sequence[str] = (),
                  recent_items: Sequence[str] = (), ranker: str | None = None, promoted: Sequence[str] = (),
                  segment: str | None = None, attributes: dict | None = None) -> Recommendations:
        """The top ``k`` items for ``user_id``, best first.

        Args:
            user_id: external user id; an unknown one takes the cold-start route.
            k: list length, 1..the server's max_k.
            timestamp: request time in Unix seconds (context features); the server's clock if None.
            exclude_items: item ids never to return.
            include_categories: only items in these categories (empty = all).
            exclude_categories: no items in these categories.
            recent_items: items the user just interacted with (e.g. a cold user's session).
            ranker: an exported ranker (``ranker``, ``ranker_student``, ``ranker_int8``, ...); None uses
                the server's default. The answer's ``ranker`` says which one scored it.
            promoted: items the business rules may boost into the list (reason ``boosted``).
            segment: the request's segment (segment-scoped rules).
            attributes: user attributes (e.g. ``{"age": 25, "gender": "F"}``) for a user the server
                does not know: the cold-start attribute path. Unknown names are rejected.

        Raises:
            tritonclient.utils.InferenceServerException: the server rejected or failed the call.
        """
        tensors = encode_request(user_id, k, timestamp, exclude_items, include_categories, exclude_categories,
                                 recent_items, ranker, promoted, segment, attributes)
        return self.infer(tensors, user_id)

    def send_events(self, events, batch_size: int = 10_000) -> list[str]:
        """Send interaction events; returns one status per event, in order.

        Args:
            events: a DataFrame (or dict of equal-length sequences) with event_id, user_id, item_id,
                timestamp (Unix s), type (view, click, add_to_cart, purchase, rating, impression) and
                optionally weight.
            batch_size: events per call (the server takes at most 100,000 per call).

        Returns:
            ``"ok"`` (logged; the next answer knows it), ``"duplicate"`` (its event_id was logged
            before: not applied twice) or the rejection reason of that event (``unknown_item``,
            ``bad_timestamp``, ...; see events/checks.py). Calls are retried like ``recommend``:
            resending a logged event is harmless.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        tensors = encode_events(events)
        n = len(next(iter(tensors.values())))
        outputs = [grpcclient.InferRequestedOutput(name) for name in EVENT_OUTPUTS]
        self.last_statuses = statuses = []  # grows per call: what was answered when a later call fails
        for start in range(0, n, batch_size):
            part = {name: array[start : start + batch_size] for name, array in tensors.items()}
            result = self._call(EVENTS_MODEL, _inputs(part), outputs)
            statuses += [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("status").ravel()]
        return statuses

    def upsert_items(self, items, batch_size: int = 10_000) -> list[str]:
        """Add items to the served catalog, or change the attributes of items it holds.

        Args:
            items: a DataFrame (or a list of dicts) with ``item_id`` and attribute columns of the
                run's item schema (e.g. ``category``, ``genres``, ``price``, ``title``); a missing value
                (None / NaN) leaves that attribute missing for a new item, unchanged for a known one.
            batch_size: records per call (the server takes at most 100,000 per call).

        Returns:
            ``"ok"`` per item (logged; every ``recommend`` instance embeds it with the item tower and
            can serve it from its next answer) or the rejection reason (``unknown_attribute``,
            ``bad_value``, ...; see events/catalog.py); :attr:`last_details` then says, per record,
            what was wrong (the attribute and the names known, the value and what is accepted).
        """
        rows = _records(items, "item_id")
        return self._catalog(["upsert_item"] * len(rows), [r.pop("item_id") for r in rows], rows, batch_size)

    def upsert_users(self, users, batch_size: int = 10_000) -> list[str]:
        """Store user attributes (``user_id`` and columns of the run's user schema, e.g. ``age``):
        used for that user's requests from the next answer on, known user or not."""
        rows = _records(users, "user_id")
        return self._catalog(["upsert_user"] * len(rows), [r.pop("user_id") for r in rows], rows, batch_size)

    def block(self, item_ids: Sequence[str]) -> list[str]:
        """Take items out of every answer from the next one on (``unknown_item`` for an id the catalog lacks)."""
        item_ids = id_list("item_ids", item_ids)
        return self._catalog(["block"] * len(item_ids), list(item_ids), None, 10_000)

    def unblock(self, item_ids: Sequence[str]) -> list[str]:
        """Serve blocked items again."""
        item_ids = id_list("item_ids", item_ids)
        return self._catalog(["unblock"] * len(item_ids), list(item_ids), None, 10_000)

    def _catalog(self, ops: list, ids: list, attributes: list | None, batch_size: int) -> list[str]:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        tensors = encode_catalog(ops, ids, attributes)
        statuses: list[str] = []
        self.last_details = details = []
        for start in range(0, len(ops), batch_size):
            part = {name: array[start : start + batch_size] for name, array in tensors.items()}
            probing = len(self._catalog_outputs) > 1  # a refusal of `detail` is not counted as a rejection
            try:
                result = self._call(CATALOG_MODEL, _inputs(part),
                                    [grpcclient.InferRequestedOutput(n) for n in self._catalog_outputs],
                                    count=not probing)
            except InferenceServerException as err:  # a server without the detail output: the status alone
                if not probing or not (err.message() or "").strip().startswith("unexpected inference output 'detail'"):
                    if probing and err.status() == "StatusCode.INVALID_ARGUMENT":
                        self.rejections[rejection_kind(err)] += 1
                    raise
                self._catalog_outputs = ["status"]
                result = self._call(CATALOG_MODEL, _inputs(part), [grpcclient.InferRequestedOutput("status")])
            got = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("status").ravel()]
            statuses += got
            more = result.as_numpy("detail") if "detail" in self._catalog_outputs else None
            details += ([v.decode() if isinstance(v, bytes) else str(v) for v in more.ravel()] if more is not None
                        else [""] * len(got))
        return statuses

    def infer(self, tensors: dict, user_id: str = "") -> Recommendations:
        """Send raw input tensors by name (any dtype/shape, for testing the server's checks)."""
        outputs = self._outputs  # this call's: another thread may switch the client meanwhile
        try:
            result = self._call(self.model, _inputs(tensors), outputs, count=len(outputs) > 1)
        except InferenceServerException as err:
            # Triton core's own message starts so; a model's error may quote a request's text, never first
            unknown = (err.message() or "").strip().startswith(f"unexpected inference output '{ANSWER}'")
            if len(outputs) > 1 or not unknown:
                if err.status() == "StatusCode.INVALID_ARGUMENT":
                    self.rejections[rejection_kind(err)] += 1
                raise
            outputs = self._outputs = [grpcclient.InferRequestedOutput(name) for name in FIELDS]  # an older server
            result = self._call(self.model, _inputs(tensors), outputs)
        if len(outputs) == 1:
            text = _answer_text(result)
            if text is not None:
                return decode_answer(user_id, text)
        return decode_response(user_id, {o.name(): result.as_numpy(o.name()) for o in outputs})

    def _call(self, model: str, inputs: list, outputs: list, count: bool = True):
        """One inference with the retry policy; returns the result. ``count``: count a rejection in
        ``rejections`` here (``infer`` counts its own)."""
        for attempt in range(self.retries + 1):
            try:
                return self._client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout)
            except InferenceServerException as err:
                if count and err.status() == "StatusCode.INVALID_ARGUMENT":
                    self.rejections[rejection_kind(err)] += 1
                if attempt == self.retries or not retryable(err):
                    raise
                self.retried += 1
                time.sleep(min(self.backoff * 2 ** attempt, self.max_backoff) * (1 + 0.5 * random.random()))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()

    def __enter__(self) -> "RecommendClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

