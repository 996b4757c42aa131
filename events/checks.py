"""What an interaction event is, and the per-event checks made before one is accepted.

An event: ``event_id`` (the client's id, unique: a resent event is acknowledged, not applied
twice), ``user_id``, ``item_id``, ``timestamp`` (Unix seconds, event time), ``type`` (one of
:data:`EVENT_TYPES`) and an optional ``weight`` (>= 0; 1 when absent).

Every event of a batch is checked on its own: a bad one is rejected with its reason
(:data:`REASONS`), the rest of the batch is kept. Interaction types (:data:`INTERACTION_TYPES`)
change the served state (history, seen set, popularity); an ``impression`` event (shown, not
acted on) is logged only: it is a candidate negative for training, never "seen".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.schema import CONTROL_CHARACTERS, MAX_ID_LENGTH

INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
EVENT_TYPES = (*INTERACTION_TYPES, "impression")
COLUMNS = ("event_id", "user_id", "item_id", "timestamp", "type", "weight")
REASONS = ("bad_encoding", "missing_event_id", "missing_user_id", "missing_item_id", "id_too_long", "bad_timestamp",
           "unknown_type", "bad_weight", "unknown_item", "duplicate_in_batch")
MAX_FUTURE_S = 86_400  # an event stamped more than a day after the server's clock is a client bug


def _text(values, undecodable: np.ndarray | None = None) -> np.ndarray:
    """Strings (bytes decoded, stripped) with missing / blank / NaN entries as None; bytes that are not
    UTF-8 are None too, and marked in ``undecodable`` (never replaced: two distinct ids would become
    one string)."""
    out = np.empty(len(values), dtype=object)
    for j, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                if undecodable is not None:
                    undecodable[j] = True
                v = None
        if v is None or (isinstance(v, float) and v != v):
            out[j] = None
        else:
            v = str(v).strip()
            out[j] = v or None
    return out


def _numbers(values) -> np.ndarray:
    """float64, NaN where a value is missing or not a number."""
    a = np.asarray(values)
    if a.dtype.kind in "fiu":
        return a.astype(np.float64)
    return pd.to_numeric(pd.Series(a, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def check_events(table, known_items, now: float, records: bool = False) -> tuple[pd.DataFrame | list[dict], list[str]]:
    """Check a batch of events.

    Args:
        table: a DataFrame or a dict of equal-length arrays with :data:`COLUMNS` (``weight`` optional).
        known_items: a ``features.vocab.IdVocab`` of the catalog (events for other items are rejected).
        now: the server's clock (Unix s): timestamps more than :data:`MAX_FUTURE_S` ahead are rejected.
        records: return the accepted events as a list of dicts (the serving path: a DataFrame costs
            ~2 ms to build for one event).

    Returns:
        The accepted events (typed: str ids, int64 timestamp, float weight, str type, with their
        batch position in ``position``), and per input row ``"ok"`` or the rejection reason.

    Raises:
        ValueError: a required column is absent, or the columns differ in length.
    """
    columns = {c: np.asarray(table[c]) for c in COLUMNS if c in table}
    missing = [c for c in COLUMNS if c != "weight" and c not in columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; an event has {', '.join(COLUMNS)} (weight optional)")
    lengths = {c: len(v) for c, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every event column must hold one value per event; got lengths {lengths}")
    n = lengths["event_id"]
    reason = np.full(n, "ok", dtype=object)

    def reject(mask, why: str) -> None:
        reason[np.asarray(mask, dtype=bool) & (reason == "ok")] = why

    undecodable = np.zeros(n, dtype=bool)
    ev = {c: _text(columns[c], undecodable) for c in ("event_id", "user_id", "item_id", "type")}
    for col in ("event_id", "user_id", "item_id"):  # a NUL or a line break inside: no one's id (requests refuse it)
        undecodable |= np.array([v is not None and CONTROL_CHARACTERS.search(v) is not None for v in ev[col]], bool)
    reject(undecodable, "bad_encoding")
    for col in ("event_id", "user_id", "item_id"):
        present = np.array([v is not None for v in ev[col]], dtype=bool)
        reject(~present, f"missing_{col}")
        reject(np.array([v is not None and len(v) > MAX_ID_LENGTH for v in ev[col]], dtype=bool), "id_too_long")
    ts = _numbers(columns["timestamp"])
    with np.errstate(invalid="ignore"):
        reject(~np.isfinite(ts) | (ts < 0) | (ts > now + MAX_FUTURE_S), "bad_timestamp")
    kinds = np.array([v.lower() if v is not None else "" for v in ev["type"]], dtype=object)
    reject(~np.isin(kinds, EVENT_TYPES), "unknown_type")
    raw = columns.get("weight", np.full(n, None, dtype=object))
    weight = _numbers(raw)
    # missing: None or NaN of any float type (the wire's FP32 tensor gives numpy floats)
    given = np.array([v is not None and not (isinstance(v, (float, np.floating)) and v != v) for v in raw], dtype=bool)
    with np.errstate(invalid="ignore"):
        reject(given & (~np.isfinite(weight) | (weight < 0)), "bad_weight")
    weight = np.where(given, weight, 1.0)
    ids = np.array([v if v is not None else "" for v in ev["item_id"]], dtype=object)
    reject(known_items.lookup(ids) < 0, "unknown_item")
    first, dup = set(), np.zeros(n, dtype=bool)
    for j, e in enumerate(ev["event_id"]):
        if e is not None and reason[j] == "ok":  # a copy rejected for another reason takes no id: a valid one after it is kept
            dup[j] = e in first
            first.add(e)
    reject(dup, "duplicate_in_batch")
    ok = reason == "ok"
    if records:
        return [{"event_id": ev["event_id"][j], "user_id": ev["user_id"][j], "item_id": ev["item_id"][j],
                 "timestamp": float(int(ts[j])), "type": kinds[j], "weight": float(weight[j]), "position": int(j)}
                for j in np.flatnonzero(ok)], reason.tolist()
    accepted = pd.DataFrame({
        "event_id": ev["event_id"][ok], "user_id": ev["user_id"][ok], "item_id": ev["item_id"][ok],
        "timestamp": ts[ok].astype(np.int64), "type": kinds[ok], "weight": weight[ok].astype(np.float64),
        "position": np.flatnonzero(ok)})
    return accepted, reason.tolist()


def interactions(events: pd.DataFrame) -> pd.DataFrame:
    """The events that change the served state (not impressions), as user_id, item_id, timestamp."""
    return events[events["type"].isin(INTERACTION_TYPES)][["user_id", "item_id", "timestamp"]]


def interaction_columns(events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`interactions` over column arrays (``EventTail.read_new_columns``), with no pandas."""
    kinds = events["type"]
    keep = np.fromiter((k in _INTERACTION_SET for k in kinds), dtype=bool, count=len(kinds))
    return {name: events[name][keep] for name in ("user_id", "item_id", "timestamp")}


_INTERACTION_SET = frozenset(INTERACTION_TYPES)
