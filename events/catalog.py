"""What a catalog record is, and the per-record checks made before one is accepted.

A record changes the catalog while serving (the ``catalog`` model, ``recsys-catalog``):

- ``upsert_item``: an item id and attributes over the item columns of the run's schema (e.g.
  ``category``, ``genres``, ``price``, ``title``): a new item enters the catalog (embedded by the item
  tower, added to the index); an existing one gets the given attributes (the others keep theirs)
  and is embedded again;
- ``upsert_user``: a user id and attributes over the user columns (e.g. ``age``, ``country``): kept
  for later requests of that user, known or not;
- ``block`` / ``unblock``: an item id; a blocked item leaves every answer at once (removal from
  the catalog is a block: the id stays, so events on it still resolve), ``unblock`` restores it.

Every record of a batch is checked on its own: a bad one is rejected with its reason
(:data:`REASONS`), the rest are kept, in their order. Standard library and numpy only (the Triton
stubs import it); the attribute schema comes from the caller (:func:`pipeline.catalog.catalog_schema`).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from events.tail import CursorPastEnd, EventTail
from features.schema import CONTROL_CHARACTERS, MAX_ID_LENGTH

OPS = ("upsert_item", "upsert_user", "block", "unblock")
ITEM_OPS = ("upsert_item", "block", "unblock")
MAX_VALUE_LENGTH = 1000  # characters of one attribute value
MAX_ATTRIBUTES = 64  # attributes of one record
REASONS = ("bad_encoding", "missing_id", "id_too_long", "unknown_op", "malformed_attributes", "too_many_attributes",
           "unknown_attribute", "bad_value", "value_too_long", "unexpected_attributes", "unknown_item",
           "duplicate_in_batch")
NUMERIC = "numeric"


class _Undecodable(ValueError):
    """Bytes that are not UTF-8 (rejected as ``bad_encoding``, never replaced: two distinct ids would
    become one string)."""


def _decode(v):
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise _Undecodable from None
    return v


def _text(v) -> str | None:
    v = _decode(v)
    if v is None or (isinstance(v, float) and v != v):
        return None
    v = str(v).strip()
    return v or None


def _attributes(raw) -> dict | None:
    """A record's attributes: a mapping, JSON text of an object, or nothing (-> {}); None if malformed."""
    raw = _decode(raw)
    if raw is None or (isinstance(raw, float) and raw != raw) or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: arrays or objects nested thousands deep
            return None
    if not isinstance(raw, Mapping):
        return None
    if not all(map(_utf8, raw.keys())) or not all(map(_utf8, raw.values())):
        raise _Undecodable  # e.g. JSON's "\udc80": a lone surrogate, which no UTF-8 output can carry
    return dict(raw)


def _utf8(v) -> bool:
    """Whether a text value (or each text of a list) can be written as UTF-8 (no lone surrogate)."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
    elif isinstance(v, (list, tuple)):
        return all(map(_utf8, v))
    return True


def number_within(v, bounds: tuple[float, float] | None) -> float | None:
    """``v`` as a finite float within ``bounds`` (low, high; None: any finite number), else None. A
    bool is not a number here. The check of a numeric attribute, for catalog records and requests."""
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer of hundreds of digits
        return None
    return x if math.isfinite(x) and (bounds is None or bounds[0] <= x <= bounds[1]) else None


def _value(v, kind: str, sep: str, bounds: tuple[float, float] | None = None) -> tuple[object, str | None]:
    """(the stored value, None) or (None, the reason) for one attribute value of a column of ``kind``
    (``bounds``: the (low, high) a numeric column accepts, from the schema)."""
    if v is None:
        return None, None  # explicitly missing: encoded as missing (out of vocabulary / 0)
    if kind == NUMERIC:
        x = number_within(v, bounds)
        return (None, "bad_value") if x is None else (x, None)
    if isinstance(v, (list, tuple)):  # a multi-valued column given as a list
        if not all(isinstance(t, str) for t in v):
            return None, "bad_value"
        v = sep.join(v)
    if isinstance(v, bool) or not isinstance(v, (str, int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return None, "bad_value"
    text = str(v)
    return (text, None) if len(text) <= MAX_VALUE_LENGTH else (None, "value_too_long")


def check_catalog(ops: Sequence, ids: Sequence, attributes: Sequence | None, schema: dict[str, dict[str, tuple]],
                  known_items, now: float, details: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Check a batch of catalog records.

    Args:
        ops: one of :data:`OPS` per record.
        ids: the item id (item ops) or user id (``upsert_user``) per record.
        attributes: per record a mapping (or JSON text of an object) of attribute name -> value; None
            when no record carries attributes.
        schema: ``{"user": {name: (kind, sep, range)}, "item": {...}}``: the attribute columns a record
            may name (kinds of :mod:`features.encoders`; ``numeric`` values must be finite numbers within
            ``range`` when it is not None: :func:`pipeline.catalog.catalog_schema`).
        known_items: the catalog's item vocabulary (``lookup(ids) -> indices``, -1 unknown): a block
            or unblock must name an item of the catalog or one upserted earlier in the batch.
        now: the server's clock (Unix s), the records' ``timestamp``.
        details: when given, filled with one text per record saying what was wrong ("" when accepted):
            the attribute and the names known, the value and what is accepted, ...

    Returns:
        The accepted records, ready for ``EventLog.append_catalog`` (with a fresh ``record_id`` and
        their batch position in ``position``), and per input record ``"ok"`` or the rejection reason.

    Raises:
        ValueError: the inputs differ in length.
    """
    n = len(ops)
    if len(ids) != n or (attributes is not None and len(attributes) != n):
        raise ValueError(f"every catalog input must hold one value per record; got op={n}, id={len(ids)}, "
                         f"attributes={None if attributes is None else len(attributes)}")
    ids_text, undecodable = [], set()
    for j, v in enumerate(ids):
        try:
            text = _text(v)
        except _Undecodable:
            text = None
            undecodable.add(j)
        if text is not None and CONTROL_CHARACTERS.search(text):  # a NUL or a line break inside: no one's id
            text = None
            undecodable.add(j)
        ids_text.append(text)
    unknown = [v is not None and known_items.lookup([v])[0] < 0 for v in ids_text] if n else []
    added, seen, accepted, status = set(), set(), [], []
    for j in range(n):
        try:
            op = (_text(ops[j]) or "").lower()
            attrs = _attributes(attributes[j]) if attributes is not None else {}
        except _Undecodable:
            undecodable.add(j)
        entity = ids_text[j]
        reason, values, detail = None, {}, ""
        if j in undecodable:
            reason = "bad_encoding"
        elif op not in OPS:
            reason = "unknown_op"
        elif entity is None:
            reason = "missing_id"
        elif len(entity) > MAX_ID_LENGTH:
            reason = "id_too_long"
        elif attrs is None:
            reason = "malformed_attributes"
        elif len(attrs) > MAX_ATTRIBUTES:
            reason = "too_many_attributes"
        elif op in ("block", "unblock") and attrs:
            reason = "unexpected_attributes"
        elif op in ("block", "unblock") and unknown[j] and entity not in added:
            reason = "unknown_item"
        elif (op, entity) in seen:
            reason = "duplicate_in_batch"
        else:
            columns = schema["item" if op == "upsert_item" else "user"]
            for name, v in attrs.items():
                if isinstance(v, str) and not v.strip() and name in columns:
                    continue  # blank text: not given (a known entity keeps its value), as in a request
                if name not in columns:
                    reason = "unknown_attribute"
                    detail = (f"{_shown(name)} is not an attribute of {'items' if op == 'upsert_item' else 'users'}; "
                              f"known: {', '.join(sorted(columns))}")
                    break
                values[name], reason = _value(v, *columns[name])
                if reason:
                    detail = _value_detail(name, v, reason, *columns[name])
                    break
        status.append(reason or "ok")
        if details is not None:
            details.append(detail or (_DETAILS.get(reason, "").format(op=_shown(op), entity=_shown(entity))
                                      if reason else ""))
        if reason:
            continue
        seen.add((op, entity))
        if op == "upsert_item":
            added.add(entity)
        accepted.append({"record_id": uuid.uuid4().hex, "op": op, "entity_id": entity, "attributes": values,
                         "timestamp": float(now), "position": j})
    return accepted, status


_DETAILS = {  # what each record-level reason means (the attribute ones are said per value)
    "bad_encoding": "an id, op or attribute is not UTF-8 text, or an id holds a control character",
    "missing_id": "no id",
    "id_too_long": f"the id is longer than {MAX_ID_LENGTH} characters",
    "unknown_op": f"op {{op}}; known: {', '.join(OPS)}",
    "malformed_attributes": "attributes must be a JSON object of name -> value",
    "too_many_attributes": f"more than {MAX_ATTRIBUTES} attributes",
    "unexpected_attributes": "{op} takes no attributes",
    "unknown_item": "{entity} is not in the catalog (upsert it first, in this batch or before)",
    "duplicate_in_batch": "the same op on {entity} earlier in this batch (send one record per id)",
}


def _shown(v) -> str:
    """A value as a detail quotes it: its repr, cut to 60 characters (a detail never carries a
    request's bulk back)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _value_detail(name: str, v, reason: str, kind: str, sep: str, bounds: tuple[float, float] | None = None) -> str:
    """What was wrong with one attribute value, and what the column accepts."""
    shown = _shown(v)
    if reason == "value_too_long":
        size = len(sep.join(v) if isinstance(v, (list, tuple)) else str(v))  # what the check measured
        return f"{name}: {size} characters; at most {MAX_VALUE_LENGTH}"
    if kind == NUMERIC:
        if number_within(v, None) is not None and bounds is not None:  # a number, but absurd: say the bounds
            return (f"{name}={shown}: more than 10^6 standard deviations from the training mean; a number in "
                    f"[{bounds[0]:g}, {bounds[1]:g}] (values outside the training range are clipped) or null")
        return f"{name}={shown}: a finite number (or null: missing)"
    return f"{name}={shown}: text{' or a list of texts' if sep else ''}"


@dataclass
class CatalogChanges:
    """What a run of catalog records amounts to, in log order: per item and per user the merged
    attributes of its upserts (a later value wins), in first-upsert order, and per item the last
    block flag."""

    items: dict[str, dict] = field(default_factory=dict)
    users: dict[str, dict] = field(default_factory=dict)
    blocked: dict[str, bool] = field(default_factory=dict)


def fold_records(records) -> CatalogChanges:
    """Fold accepted catalog records (a frame or mapping with ``op``, ``entity_id``, ``attributes``: a
    dict or its JSON text) into :class:`CatalogChanges`: what every ``recommend`` applies
    (:class:`pipeline.catalog.OnlineCatalog`), what a refresh and a retrain from the log take in.

    Raises:
        ValueError: an unknown op (the catalog model accepts none; the log was written past it).
    """
    out = CatalogChanges()
    for op, entity, raw in zip(records["op"], records["entity_id"], records["attributes"]):
        attrs = json.loads(raw) if isinstance(raw, str) and raw else dict(raw or {})  # "": none (a Redis stream's empty)
        if op == "upsert_item":
            out.items[entity] = {**out.items.get(entity, {}), **attrs}
        elif op == "upsert_user":
            out.users[entity] = {**out.users.get(entity, {}), **attrs}
        elif op in ("block", "unblock"):
            out.blocked[entity] = op == "block"
        else:
            raise ValueError(f"unknown catalog op {op!r}; known: {', '.join(OPS)}")
    return out


def known_names(schema: dict[str, dict[str, tuple]]) -> str:
    """The attribute names a record may carry, for messages and --help."""
    return "; ".join(f"{entity}: {', '.join(sorted(cols))}" for entity, cols in schema.items())


class CatalogItems:
    """The served item vocabulary, following the items added online (the log's ``catalog`` table), so
    the ``events`` and ``catalog`` models accept an event on / a block of an item upserted since the
    export, by this server or another sharing the log (or, with Redis, by any host). One tail read per
    call (~20 us when idle).

    Args:
        items: the exported catalog's ``features.vocab.IdVocab`` (extended in place).
        directory: the log's catalog folder (``serving.event_log.catalog_log_dir``).
        tail: what to follow instead of that folder (e.g. the catalog's Redis stream,
            ``serving.event_log.catalog_tail``): anything with ``read_new()`` and ``close()``.
    """

    def __init__(self, items, directory: str | os.PathLike, tail=None):
        self.items = items
        self.tail = EventTail(directory, kind="catalog") if tail is None else tail
        self.follow()  # everything logged so far, before the first call

    def follow(self):
        """The vocabulary with every item upserted so far (a Redis tail's bounded reads: all of them)."""
        while True:
            try:
                new = self.tail.read_new()
            except CursorPastEnd:  # the catalog log replaced under its path: read the new one whole
                self.tail = EventTail(self.tail.directory, kind="catalog")
                new = self.tail.read_new()
            if len(new):
                ids = new.loc[new["op"] == "upsert_item", "entity_id"].drop_duplicates().to_numpy(dtype=object)
                ids = ids[self.items.lookup(ids) < 0] if len(ids) else ids
                if len(ids):
                    self.items.extend(ids)
            if not getattr(self.tail, "more", False):
                return self.items

    def close(self) -> None:
        self.tail.close()
