"""The two tables of the event log: their columns and dtypes, and the checks every row passes
before it is stored (the last guard: the serving path validates earlier, but a broken row is never
stored silently)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

KINDS = ("events", "impressions", "catalog")

# Column -> pandas dtype as ``read_log`` returns it. The last column of each is set by the log.
EVENT_DTYPES: dict[str, str] = {
    "event_id": "str",  # unique: the idempotency key
    "user_id": "str",
    "item_id": "str",
    "timestamp": "float64",  # event time, Unix seconds
    "type": "str",  # view / click / purchase / impression / rating / ...
    "weight": "float64",  # NaN when not given
    "received_at": "float64",  # Unix seconds, when the log stored it
}
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_DTYPES)
EVENT_REQUIRED: tuple[str, ...] = ("event_id", "user_id", "item_id", "timestamp", "type")

IMPRESSION_DTYPES: dict[str, str] = {
    "request_id": "str",  # unique: the idempotency key
    "user_id": "str",
    "items": "object",  # list[str] in served order; position = index
    "scores": "object",  # list[float], one per item (or empty)
    "reasons": "object",  # list[str], one per item (or empty)
    "route": "str",
    "ranker": "str",
    "model_version": "str",
    "timestamp": "float64",  # request time, Unix seconds
    "served_at": "float64",  # Unix seconds, when the log stored it
}
IMPRESSION_COLUMNS: tuple[str, ...] = tuple(IMPRESSION_DTYPES)
IMPRESSION_REQUIRED: tuple[str, ...] = ("request_id", "user_id", "items", "timestamp")

# Catalog changes (``catalog`` model, events/catalog.py): one row per accepted record, in the order
# they were accepted; replayed in that order by every ``recommend`` instance (pipeline/catalog.py).
CATALOG_DTYPES: dict[str, str] = {
    "record_id": "str",  # unique, set by the server: the idempotency key
    "op": "str",  # upsert_item / upsert_user / block / unblock
    "entity_id": "str",  # the item id (upsert_item, block, unblock) or the user id (upsert_user)
    "attributes": "object",  # dict name -> value (str or float) of an upsert; {} for block / unblock
    "timestamp": "float64",  # when the server accepted it, Unix seconds
    "logged_at": "float64",  # Unix seconds, when the log stored it
}
CATALOG_COLUMNS: tuple[str, ...] = tuple(CATALOG_DTYPES)
CATALOG_REQUIRED: tuple[str, ...] = ("record_id", "op", "entity_id", "timestamp")

# read_log(kind="impressions", explode=True): one row per (request, position).
EXPLODED_IMPRESSION_DTYPES: dict[str, str] = {
    "request_id": "str",
    "user_id": "str",
    "position": "int64",  # 0 = first served
    "item_id": "str",
    "score": "float64",  # NaN when the impression carried no scores
    "reason": "str",
    "route": "str",
    "ranker": "str",
    "model_version": "str",
    "timestamp": "float64",
    "served_at": "float64",
}
EXPLODED_IMPRESSION_COLUMNS: tuple[str, ...] = tuple(EXPLODED_IMPRESSION_DTYPES)


@dataclass(frozen=True)
class Table:
    """One table of the log: its columns, key, stamp column and how each field is checked."""

    table: str
    noun: str  # "event" / "impression", for messages
    key: str
    stamp: str
    dtypes: dict[str, str]
    required: tuple[str, ...]
    rules: dict[str, str]  # field -> rule name in _RULES (every column but the stamp)

    def __post_init__(self) -> None:
        if next(iter(self.dtypes)) != self.key or list(self.dtypes)[-1] != self.stamp:
            raise ValueError(f"table {self.table}: the key must be the first column and the stamp the last")

    @cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.dtypes)

    @cached_property
    def given(self) -> tuple[tuple[str, str], ...]:
        """(field, rule) of the columns the caller gives, in column order: all but the stamp."""
        return tuple((c, self.rules[c]) for c in self.columns if c != self.stamp)


TABLES = {
    "events": Table(
        "events", "event", "event_id", "received_at", EVENT_DTYPES, EVENT_REQUIRED,
        {"event_id": "id", "user_id": "id", "item_id": "id", "timestamp": "time", "type": "label",
         "weight": "number"},
    ),
    "impressions": Table(
        "impressions", "impression", "request_id", "served_at", IMPRESSION_DTYPES, IMPRESSION_REQUIRED,
        {"request_id": "id", "user_id": "id", "items": "id_list", "scores": "number_list",
         "reasons": "text_list", "route": "text", "ranker": "text", "model_version": "text",
         "timestamp": "time"},
    ),
    "catalog": Table(
        "catalog", "catalog record", "record_id", "logged_at", CATALOG_DTYPES, CATALOG_REQUIRED,
        {"record_id": "id", "op": "label", "entity_id": "id", "attributes": "attributes", "timestamp": "time"},
    ),
}


def table(kind: str) -> Table:
    """The table of ``kind`` (``events`` / ``impressions`` / ``catalog``)."""
    if kind not in TABLES:
        raise ValueError(f"unknown log kind {kind!r}; known: {', '.join(KINDS)}")
    return TABLES[kind]


# ---------------------------------------------------------------------------------------------
# Validation: every rule returns the stored value or raises _FieldError with the second half of a
# message ("must be ..., got ...").


class _FieldError(Exception):
    pass


def _absent(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT


def _nan(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isnan(v)


def _id(v) -> str:
    if isinstance(v, str) and v:
        return str(v)  # numpy / pandas string scalars -> str
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(int(v))
    raise _FieldError(f"must be a non-empty string, got {v!r} ({type(v).__name__})")


def _label(v) -> str:
    if isinstance(v, str) and v:
        return str(v)
    raise _FieldError(f"must be a non-empty string, got {v!r} ({type(v).__name__})")


def _text(v) -> str:
    if isinstance(v, str):
        return str(v)
    raise _FieldError(f"must be a string, got {v!r} ({type(v).__name__})")


def _number(v) -> float:
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise _FieldError(f"must be a finite number, got {v!r} ({type(v).__name__})")


def _time(v) -> float:
    try:
        return _number(v)
    except _FieldError:
        raise _FieldError(f"must be a finite number of Unix seconds, got {v!r} ({type(v).__name__})") from None


def _sequence(v) -> Sequence:
    if type(v) is list:  # the common case (``recommend``'s impressions): no ABC checks, no copy
        return v
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (Sequence, np.ndarray, pd.Series)):
        raise _FieldError(f"must be a list, got {v!r} ({type(v).__name__})")
    return list(v)


def _plain_text(v) -> bool:
    return type(v) is str and v != ""


def _plain_number(v) -> bool:
    return type(v) is float and math.isfinite(v)


def _all_of_type(values: list, kind: type) -> bool:
    return set(map(type, values)) <= {kind}  # exact: a numpy float or a str subclass takes the checked path


def _plain_texts(values: list) -> bool:
    return _all_of_type(values, str) and "" not in values


def _plain_numbers(values: list) -> bool:
    return _all_of_type(values, float) and all(map(math.isfinite, values))


def _each(rule, plain):
    """A rule for a list whose elements pass ``rule``; ``plain`` is its fast path for a whole list
    (exact types; map-based: no Python frame per element)."""
    def check(v) -> list:
        values = _sequence(v)
        if plain(values):
            return values
        out = []
        for j, x in enumerate(values):
            try:
                out.append(rule(x))
            except _FieldError as e:
                raise _FieldError(f"element {j} {e}") from None
        return out

    return check


def _attributes(v) -> dict:
    """A mapping of attribute name -> str / finite number / None (JSON-encoded when stored)."""
    if not isinstance(v, Mapping):
        raise _FieldError(f"must be a mapping of name -> value, got {v!r} ({type(v).__name__})")
    out = {}
    for name, x in v.items():
        if not isinstance(name, str) or not name:
            raise _FieldError(f"has a bad attribute name {name!r}: names are non-empty strings")
        if x is None or isinstance(x, str):
            out[name] = None if x is None else str(x)
        elif isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x):
            out[name] = float(x)
        else:
            raise _FieldError(f"attribute {name!r} must be a string, a finite number or None, got {x!r}")
    return out


_TEXT_RULES = ("id", "label", "text")
_NUMBER_RULES = ("number", "time")
_RULES = {"id": _id, "label": _label, "text": _text, "number": _number, "time": _time,
          "id_list": _each(_id, _plain_texts), "number_list": _each(_number, _plain_numbers),
          "text_list": _each(_text, lambda values: _all_of_type(values, str)), "attributes": _attributes}
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per json.dumps call
_COMPACT_SORTED = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _check_row(kind: Table, i: int, row) -> tuple:
    """One input row -> the values to store, in column order (without the stamp)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{kind.noun} row {i}: expected a mapping of column -> value, got {type(row).__name__}")
    unknown = sorted(row.keys() - kind.dtypes.keys(), key=str)
    if unknown:
        raise ValueError(f"{kind.noun} row {i}: unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(kind.columns)}")
    values = {}
    for field, rule in kind.given:
        v = row.get(field)
        if _plain_text(v) and rule in _TEXT_RULES or _plain_number(v) and rule in _NUMBER_RULES:
            values[field] = v  # the common case, checked fast
            continue
        # NaN is pandas' "missing" for every non-numeric field and for an optional number;
        # a NaN timestamp is a broken value, reported as such by its rule.
        missing = _absent(v) or (_nan(v) and not (field in kind.required and rule == "time"))
        if missing:
            if field in kind.required:
                raise ValueError(f"{kind.noun} row {i}: required field {field!r} is missing; "
                                 f"required: {', '.join(kind.required)}")
            values[field] = [] if rule.endswith("_list") else {} if rule == "attributes" else None
            continue
        try:
            values[field] = _RULES[rule](v)
        except _FieldError as e:
            raise ValueError(f"{kind.noun} row {i}: field {field!r} {e}") from None
    if kind.table == "impressions":
        for field in ("scores", "reasons"):
            n, m = len(values[field]), len(values["items"])
            if n not in (0, m):
                raise ValueError(f"impression row {i}: field {field!r} has {n} values for {m} items; "
                                 "give one per item, or none")
        for field in ("items", "scores", "reasons"):
            values[field] = _COMPACT(values[field])
    if kind.table == "catalog":
        values["attributes"] = _COMPACT_SORTED(values["attributes"])
    return tuple(values.values())


def check_rows(kind: Table, rows) -> list[tuple]:
    """Rows (a sequence of dicts, or a DataFrame) -> the values to store, in column order without
    the stamp column (set at commit).

    Raises:
        ValueError: naming the row (its position in the batch) and the field, or the unknown columns.
    """
    if isinstance(rows, pd.DataFrame):
        unknown = [c for c in rows.columns if c not in kind.columns]
        if unknown:
            raise ValueError(f"{kind.noun} rows: unknown column(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(kind.columns)}")
        rows = rows.to_dict("records")
    elif isinstance(rows, Mapping) or not isinstance(rows, Sequence) or isinstance(rows, str):
        raise ValueError(f"{kind.noun} rows must be a list of dicts or a DataFrame, got "
                         f"{type(rows).__name__} (wrap a single row in a list)")
    return [_check_row(kind, i, row) for i, row in enumerate(rows)]


def arrow_schema(kind: str = "events", explode: bool = False) -> pa.Schema:
    """The pyarrow schema of ``read_log(kind, explode=...)``'s frame (for parquet files)."""
    types = {"str": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    lists = {"items": pa.list_(pa.string()), "scores": pa.list_(pa.float64()), "reasons": pa.list_(pa.string()),
             "attributes": pa.string()}  # catalog attributes: JSON text in files (values mix str and float)
    spec = table(kind)
    dtypes = EXPLODED_IMPRESSION_DTYPES if explode and kind == "impressions" else spec.dtypes
    return pa.schema([(c, lists[c] if d == "object" else types[d]) for c, d in dtypes.items()])
