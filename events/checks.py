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

MAX_ID_LENGTH = 256  # the same bound as request ids (pipeline.pipeline.MAX_ID_LENGTH)
INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
EVENT_TYPES = (*INTERACTION_TYPES, "impression")
COLUMNS = ("event_id", "user_id", "item_id", "timestamp", "type", "weight")
REASONS = ("missing_event_id", "missing_user_id", "missing_item_id", "id_too_long", "bad_timestamp",
           "unknown_type", "bad_weight", "unknown_item", "duplicate_in_batch")
MAX_FUTURE_S = 86_400  # an event stamped more than a day after the server's clock is a client bug


def _text(values) -> pd.Series:
    """Strings with missing / blank entries as None."""
    s = pd.Series(values, dtype=object).map(lambda v: v.decode() if isinstance(v, bytes) else v)
    return s.map(lambda v: str(v).strip() if v is not None and not (isinstance(v, float) and np.isnan(v)) else None) \
        .map(lambda v: v or None)


def check_events(table, known_items, now: float) -> tuple[pd.DataFrame, list[str]]:
    """Check a batch of events.

    Args:
        table: a DataFrame or a dict of equal-length arrays with :data:`COLUMNS` (``weight`` optional).
        known_items: a ``features.vocab.IdVocab`` of the catalog (events for other items are rejected).
        now: the server's clock (Unix s): timestamps more than :data:`MAX_FUTURE_S` ahead are rejected.

    Returns:
        The accepted events (typed: str ids, int64 timestamp, float weight, str type, with their
        batch position in ``position``), and per input row ``"ok"`` or the rejection reason.

    Raises:
        ValueError: a required column is absent, or the columns differ in length.
    """
    frame = pd.DataFrame(dict(table)) if not isinstance(table, pd.DataFrame) else table
    missing = [c for c in COLUMNS if c != "weight" and c not in frame.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; an event has {', '.join(COLUMNS)} (weight optional)")
    n = len(frame)
    reason = np.full(n, "ok", dtype=object)

    def reject(mask, why: str) -> None:
        reason[np.asarray(mask) & (reason == "ok")] = why

    ev = pd.DataFrame({c: _text(frame[c].to_numpy()) for c in ("event_id", "user_id", "item_id", "type")})
    for col in ("event_id", "user_id", "item_id"):
        reject(ev[col].isna(), f"missing_{col}")
        reject(ev[col].fillna("").str.len() > MAX_ID_LENGTH, "id_too_long")
    ts = pd.to_numeric(pd.Series(frame["timestamp"].to_numpy(), dtype=object), errors="coerce").astype(float)
    reject(~np.isfinite(ts) | (ts < 0) | (ts > now + MAX_FUTURE_S), "bad_timestamp")
    reject(~ev["type"].fillna("").str.lower().isin(EVENT_TYPES), "unknown_type")
    weight = (pd.to_numeric(pd.Series(frame["weight"].to_numpy(), dtype=object), errors="coerce").astype(float)
              if "weight" in frame.columns else pd.Series(np.ones(n)))
    given = frame["weight"].notna().to_numpy() if "weight" in frame.columns else np.zeros(n, bool)
    reject(given & (~np.isfinite(weight) | (weight < 0)), "bad_weight")
    weight = weight.where(given, 1.0)
    reject(known_items.lookup(ev["item_id"].fillna("").to_numpy()) < 0, "unknown_item")
    reject(ev["event_id"].duplicated(keep="first").to_numpy() & ev["event_id"].notna().to_numpy(), "duplicate_in_batch")
    ok = reason == "ok"
    accepted = pd.DataFrame({
        "event_id": ev["event_id"][ok].to_numpy(dtype=object), "user_id": ev["user_id"][ok].to_numpy(dtype=object),
        "item_id": ev["item_id"][ok].to_numpy(dtype=object), "timestamp": ts[ok].to_numpy().astype(np.int64),
        "type": ev["type"][ok].str.lower().to_numpy(dtype=object), "weight": weight[ok].to_numpy(dtype=np.float64),
        "position": np.flatnonzero(ok)})
    return accepted, reason.tolist()


def interactions(events: pd.DataFrame) -> pd.DataFrame:
    """The events that change the served state (not impressions), as user_id, item_id, timestamp."""
    return events[events["type"].isin(INTERACTION_TYPES)][["user_id", "item_id", "timestamp"]]
