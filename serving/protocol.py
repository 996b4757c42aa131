"""The ``recommend`` model's wire format: tensor names, dtypes and shapes, both directions.

Light on purpose (numpy only): the gRPC client imports it, so calling the service never pulls in
torch. The server side turns these tensors into a :class:`pipeline.pipeline.Request`
(:mod:`serving.request`). ``tests/serving/test_serving_protocol.py`` checks that the committed
``triton_repo/recommend/config.pbtxt`` declares exactly this table.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

MODEL = "recommend"
ANSWER = "answer"  # the output holding the whole answer (see OUTPUTS)
LIST_INPUTS = ("exclude_items", "include_categories", "exclude_categories", "recent_items", "promoted")
MAX_LIST_LEN = 1000  # entries per list input
# The supervisor's liveness probe (serving/supervisor.py): answered through the whole pipeline like any
# request, but not recorded: no impression, not in the exposure-cap window, counted under
# recsys_requests_total{route="probe"} (an idle server probed once a second would otherwise cap its
# most popular items out of every cold answer, and fill the impression log). recsys-serve gives each
# server its own id (PROBE_ENV, inherited by the stubs): a client cannot send unrecorded requests,
# and events or attributes stored under the plain id do not change what the probe tests.
PROBE_USER = "__liveness_probe__"
PROBE_ENV = "RECSYS_PROBE_ID"



def probe_user() -> str:
    """The probe's user id for this server: ``RECSYS_PROBE_ID`` when set (recsys-serve sets a random one),
    else :data:`PROBE_USER`."""
    return (os.environ.get(PROBE_ENV) or "").strip() or PROBE_USER  # stripped, as request ids are

# name -> (numpy dtype, Triton datatype, dims, optional)
INPUTS = {
    "user_id": (np.object_, "BYTES", (1,), False),
    "k": (np.int32, "INT32", (1,), False),
    "timestamp": (np.float64, "FP64", (1,), True),  # Unix seconds; server time when absent
    "ranker": (np.object_, "BYTES", (1,), True),  # an exported ranker's name; the export's default when absent
    **{name: (np.object_, "BYTES", (-1,), True) for name in LIST_INPUTS},
    "segment": (np.object_, "BYTES", (1,), True),  # the request's segment (segment-scoped rules)
    "attributes": (np.object_, "BYTES", (-1,), True),  # "name=value" user attributes (the cold-start attribute path)
}
OUTPUTS = {
    "item_ids": (np.object_, "BYTES", (-1,)),
    "scores": (np.float32, "FP32", (-1,)),
    "reasons": (np.object_, "BYTES", (-1,)),  # ranked | boosted | fresh | backfill:popularity | backfill:content
    "groups": (np.object_, "BYTES", (-1,)),  # signal group that drove each score
    "titles": (np.object_, "BYTES", (-1,)),  # display titles ("" when the catalog has none)
    "route": (np.object_, "BYTES", (1,)),  # known_user | cold_user
    "ranker": (np.object_, "BYTES", (1,)),  # the ranker that scored the candidates
    "request_id": (np.object_, "BYTES", (1,)),  # the impression's id in the event log (attribute clicks to it)
    # All of the above as one UTF-8 JSON object {name: value(s)}: one response tensor instead of eight.
    # RecommendClient asks for this one alone (~0.5 ms less per call on the 2-core box, docs/serving.md);
    # the server builds only the outputs a request asks for.
    ANSWER: (np.object_, "BYTES", (1,)),
}
FIELDS = tuple(name for name in OUTPUTS if name != ANSWER)  # the outputs inside ``answer``

EVENTS_MODEL = "events"
# The ``events`` model: one value per event in every input (``weight`` optional), one status out.
EVENT_INPUTS = {
    "event_id": (np.object_, "BYTES", (-1,), False),
    "user_id": (np.object_, "BYTES", (-1,), False),
    "item_id": (np.object_, "BYTES", (-1,), False),
    "timestamp": (np.float64, "FP64", (-1,), False),  # Unix seconds, when the user acted
    "type": (np.object_, "BYTES", (-1,), False),  # view | click | add_to_cart | purchase | rating | impression
    "weight": (np.float32, "FP32", (-1,), True),
}
EVENT_OUTPUTS = {"status": (np.object_, "BYTES", (-1,))}  # ok | duplicate | the rejection reason

CATALOG_MODEL = "catalog"
# The ``catalog`` model: one value per record in every input, one status out (events/catalog.py).
CATALOG_INPUTS = {
    "op": (np.object_, "BYTES", (-1,), False),  # upsert_item | upsert_user | block | unblock
    "id": (np.object_, "BYTES", (-1,), False),  # the item id (item ops) or the user id (upsert_user)
    "attributes": (np.object_, "BYTES", (-1,), True),  # per record a JSON object name -> value ("" or {}: none)
}
CATALOG_OUTPUTS = {"status": (np.object_, "BYTES", (-1,)),  # ok | the rejection reason
                   "detail": (np.object_, "BYTES", (-1,))}  # "" | what was wrong (sent only when asked for)


@dataclass
class Recommendations:
    """One answer from the service, best item first."""

    user_id: str
    route: str
    item_ids: list[str]
    scores: list[float]
    reasons: list[str]
    groups: list[str]
    titles: list[str] = field(default_factory=list)
    ranker: str = ""  # the ranker that scored it ("" from a server without the output)
    request_id: str = ""  # this answer's impression in the server's event log


def _strings(values) -> np.ndarray:
    # surrogateescape: text from a command line that was not UTF-8 goes as its original bytes (the server
    # answers INVALID_ARGUMENT naming the input), never a client-side UnicodeEncodeError traceback
    return np.array([v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v for v in values],
                    dtype=np.object_)


def encode_request(user_id: str, k: int, timestamp: float | None = None, exclude_items=(), include_categories=(),
                   exclude_categories=(), recent_items=(), ranker: str | None = None, promoted=(),
                   segment: str | None = None, attributes: dict | None = None) -> dict[str, np.ndarray]:
    """Request tensors by input name; absent optional inputs are left out, and so are attributes whose
    value is None or NaN (missing: the server would read "age=None" as a value, and refuse it)."""
    # int32 on the wire: a larger k would wrap around (2**32 + 1 -> 1), a float be cut; the range the server
    # takes (1..max_k) is its own check, with its own message
    info = np.iinfo(np.int32)
    if isinstance(user_id, (int, np.integer)) and not isinstance(user_id, (bool, np.bool_)):
        user_id = str(user_id)  # 196 is user "196", as training reads it
    if not isinstance(user_id, (str, bytes)):
        raise TypeError(f"user_id={user_id!r} must be a string (an unknown one takes the cold-start route)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not info.min <= k <= info.max:
        raise ValueError(f"k={k!r} must be a whole number the request can carry (at most {info.max}; the server "
                         "takes 1..its max_k)")
    tensors = {"user_id": _strings([user_id]), "k": np.array([k], dtype=np.int32)}
    if timestamp is not None:
        tensors["timestamp"] = np.array([timestamp], dtype=np.float64)
    if ranker is not None:
        tensors["ranker"] = _strings([ranker])
    for name, values in zip(LIST_INPUTS, (exclude_items, include_categories, exclude_categories, recent_items,
                                          promoted)):
        if len(id_list(name, values)):
            tensors[name] = _strings(values)
    if segment is not None:
        tensors["segment"] = _strings([segment])
    for name, value in (attributes or {}).items():
        if isinstance(value, (list, tuple, set, dict, np.ndarray)):
            raise TypeError(f"attributes[{name!r}] is a {type(value).__name__}; a request carries one value per "
                            "attribute (e.g. age=25)")
    given = [f"{name}={value}" for name, value in (attributes or {}).items() if _json_value(value) is not None]
    if given:
        tensors["attributes"] = _strings(given)
    return tensors


def id_list(name: str, values):
    """A list input's values; a bare string is refused (it would go out as its characters: "88" as "8", "8")."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a list of ids, not the string {values!r}; pass [{values!r}]")
    return values


def _text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel()]


def encode_answer(values: dict) -> np.ndarray:
    """The ``answer`` tensor: ``values`` (one entry per name of ``FIELDS``) as one strict JSON object
    (a score that is not finite is ``null``)."""
    values = {**values, "scores": [s if math.isfinite(s) else None for s in values["scores"]]}
    return np.array([json.dumps(values, allow_nan=False).encode("utf-8")], dtype=np.object_)


def decode_answer(user_id: str, text: str | bytes) -> Recommendations:
    """The ``answer`` output's JSON text -> :class:`Recommendations`."""
    v = json.loads(text)
    return Recommendations(user_id=user_id, route=v["route"], item_ids=v["item_ids"],
                           scores=[float("nan") if s is None else float(s) for s in v["scores"]],
                           reasons=v["reasons"], groups=v["groups"],
                           titles=v["titles"], ranker=v["ranker"], request_id=v["request_id"])


def decode_response(user_id: str, outputs: dict[str, np.ndarray]) -> Recommendations:
    """Response tensors by output name (``answer`` alone, or the named ones) -> :class:`Recommendations`."""
    if outputs.get(ANSWER) is not None:
        return decode_answer(user_id, outputs[ANSWER].ravel()[0])
    return Recommendations(user_id=user_id, route=_text(outputs["route"])[0], item_ids=_text(outputs["item_ids"]),
                           scores=[float(s) for s in np.asarray(outputs["scores"]).ravel()],
                           reasons=_text(outputs["reasons"]), groups=_text(outputs["groups"]),
                           titles=_text(outputs["titles"]),
                           ranker=_text(outputs["ranker"])[0] if outputs.get("ranker") is not None else "",
                           request_id=_text(outputs["request_id"])[0] if outputs.get("request_id") is not None else "")


def _na(v) -> bool:
    """pandas' ``NA`` (the missing cell of its nullable Int64 / string / Float64 columns), told by its
    type: the protocol imports no pandas."""
    return type(v).__name__ == "NAType"


def _event_text(v):
    """One id / type cell (of an event or a catalog record): missing (or a list) as "" (the server
    answers missing_*), a whole-number float as the integer, bytes as they are (UTF-8 or the server's
    bad_encoding, never ``"b'..'"``), anything else as its text."""
    if v is None or _na(v) or (isinstance(v, (float, np.floating)) and v != v):
        return ""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():  # a parquet id column with a null: float64
        return str(int(v))  # 196.0 is user "196", as training, refresh and batch read it
    if isinstance(v, (list, tuple, np.ndarray)):
        return ""  # a list cell is no id: that record is refused (missing_*), never sent as "['36']"
    return v if isinstance(v, bytes) else str(v)


def _event_number(v, not_a_number: float) -> float:
    """One timestamp / weight cell: missing as NaN, a date-time as Unix seconds (naive = UTC), a number
    or numeric text as its value, anything else as ``not_a_number`` (a value the server rejects for
    that row: one bad cell is that event's rejection, not the whole file's)."""
    if v is None or _na(v) or (isinstance(v, (float, np.floating, datetime.datetime)) and v != v):  # NaN, NaT
        return np.nan
    if isinstance(v, datetime.datetime):  # pandas' Timestamp too
        return (v if v.tzinfo is not None else v.replace(tzinfo=datetime.timezone.utc)).timestamp()
    if isinstance(v, np.datetime64):
        return np.nan if np.isnat(v) else float((v - np.datetime64(0, "s")) / np.timedelta64(1, "s"))
    if isinstance(v, datetime.date):  # a date alone (parquet date32): its midnight, UTC
        return datetime.datetime(v.year, v.month, v.day, tzinfo=datetime.timezone.utc).timestamp()
    if isinstance(v, (bool, np.bool_)):
        return not_a_number
    try:
        return float(v.decode("utf-8") if isinstance(v, bytes) else v)
    except (TypeError, ValueError, UnicodeDecodeError):
        return not_a_number


def encode_events(events) -> dict[str, np.ndarray]:
    """Event tensors by input name from a DataFrame, a dict of equal-length sequences or a list of dicts
    (one per event; a key missing from one is a missing cell there). A cell that is
    not a number (``"abc"``, a list) goes as a value the server rejects for its row: a timestamp as
    NaN (``bad_timestamp``), a weight as -inf (``bad_weight``; NaN would read as "not given")."""
    if isinstance(events, (list, tuple)):  # one dict per event (as upsert_items takes records)
        if not all(isinstance(e, dict) for e in events):
            raise ValueError("events must be a DataFrame, a dict of equal-length columns, or a list of dicts "
                             "(one per event)")
        names = list(dict.fromkeys(k for e in events for k in e))
        events = {name: [e.get(name) for e in events] for name in names}
    names = list(events.columns) if hasattr(events, "columns") else list(events)
    # what `recsys-log read --out` adds (the server sets it again) and a CSV saved with pandas' index pass;
    # another column is refused: a typo ("wieght") would otherwise be dropped and the default weight logged
    unknown = [n for n in names if n not in EVENT_INPUTS and n != "received_at"
               and not re.fullmatch(r"Unnamed: \d+", str(n))]
    if unknown:
        raise ValueError(f"events have column(s) {unknown} the server does not take; the columns are "
                         f"{', '.join(EVENT_INPUTS)} (weight optional): rename or drop the others")
    columns = {name: list(events[name]) for name in EVENT_INPUTS if name in events}
    for name in ("event_id", "user_id", "item_id"):  # a boolean column would log users "True" / "False"
        if any(isinstance(v, (bool, np.bool_)) for v in columns.get(name, ())):
            raise ValueError(f"events' {name} holds booleans (True / False); ids are text or whole numbers")
    tensors = {}
    for name, (dtype, _, _, optional) in EVENT_INPUTS.items():
        if name not in columns:
            if not optional:
                raise ValueError(f"events lack '{name}'; each event has {', '.join(EVENT_INPUTS)} (weight optional)")
            continue
        values = columns[name]
        if dtype == np.object_:
            tensors[name] = _strings([_event_text(v) for v in values])
        else:
            bad = np.nan if name == "timestamp" else -np.inf
            with np.errstate(over="ignore"):  # a weight past float32 is inf: the server's bad_weight, no warning
                tensors[name] = np.array([_event_number(v, bad) for v in values], dtype=np.float64).astype(dtype)
    return tensors


def _json_value(v):
    """A table cell as a JSON attribute value: None for missing (None, NaN of any float type, pandas'
    NA), numbers as numbers, the rest as text."""
    if v is None or _na(v) or (isinstance(v, (float, np.floating)) and v != v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v) if isinstance(v, (float, np.floating)) else int(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    return str(v)


def encode_catalog(ops, ids, attributes=None) -> dict[str, np.ndarray]:
    """Catalog tensors: ``ops`` / ``ids`` sequences and per record a dict of attributes (or None)."""
    import json

    ops, ids = list(ops), list(ids)
    if len(ops) != len(ids) or (attributes is not None and len(attributes) != len(ids)):
        raise ValueError(f"one op, one id and one attribute mapping per record; got {len(ops)}, {len(ids)}, "
                         f"{None if attributes is None else len(attributes)}")
    tensors = {"op": _strings([str(o) for o in ops]),
               "id": _strings([_event_text(v) for v in ids])}
    if attributes is not None:
        tensors["attributes"] = _strings([json.dumps({k: _json_value(v) for k, v in (a or {}).items()})
                                          for a in attributes])
    return tensors
