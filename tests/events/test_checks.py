"""Per-event checks (events/checks.py): each bad event rejected with its reason, the rest kept."""

import numpy as np
import pandas as pd
import pytest

from events.checks import REASONS, check_events, interactions
from features.vocab import IdVocab

NOW = 1_700_000_000.0
ITEMS = IdVocab(["a", "b", "c"])


def test_each_bad_event_gets_its_reason_and_the_rest_is_kept():
    batch = pd.DataFrame([
        ("e1", "u1", "a", NOW - 10, "view", None),       # ok
        (None, "u1", "a", NOW, "view", None),            # missing_event_id
        ("e3", " ", "a", NOW, "view", None),             # missing_user_id (blank)
        ("e4", "u1", None, NOW, "view", None),           # missing_item_id
        ("e5", "u" * 300, "a", NOW, "view", None),       # id_too_long
        ("e6", "u1", "a", "yesterday", "view", None),    # bad_timestamp
        ("e7", "u1", "a", np.nan, "view", None),         # bad_timestamp
        ("e8", "u1", "a", NOW + 10 * 86_400, "view", None),  # bad_timestamp (future)
        ("e9", "u1", "a", NOW, "like", None),            # unknown_type
        ("e10", "u1", "a", NOW, "click", -1.0),          # bad_weight
        ("e11", "u1", "a", NOW, "click", float("inf")),  # bad_weight
        ("e12", "u1", "zzz", NOW, "click", None),        # unknown_item
        ("e1", "u2", "b", NOW, "click", None),           # duplicate_in_batch
        ("e14", "u2", "b", int(NOW), "PURCHASE", 2.5),   # ok (type case-insensitive)
        ("e15", "u3", "c", NOW, "impression", None),     # ok (logged, not an interaction)
        ("e16", b"u\xff", "a", NOW, "view", None),       # bad_encoding (not UTF-8: never replaced)
    ], columns=["event_id", "user_id", "item_id", "timestamp", "type", "weight"])
    accepted, reasons = check_events(batch, ITEMS, NOW)
    assert reasons == ["ok", "missing_event_id", "missing_user_id", "missing_item_id", "id_too_long",
                       "bad_timestamp", "bad_timestamp", "bad_timestamp", "unknown_type", "bad_weight", "bad_weight",
                       "unknown_item", "duplicate_in_batch", "ok", "ok", "bad_encoding"]
    assert set(reasons) - {"ok"} == set(REASONS)
    assert accepted["event_id"].tolist() == ["e1", "e14", "e15"] and accepted["position"].tolist() == [0, 13, 14]
    assert accepted["type"].tolist() == ["view", "purchase", "impression"]
    assert accepted["weight"].tolist() == [1.0, 2.5, 1.0] and accepted["timestamp"].dtype == np.int64
    assert interactions(accepted)["item_id"].tolist() == ["a", "b"]  # the impression changes no state
    rows, again = check_events(batch, ITEMS, NOW, records=True)  # the serving path's form: the same events
    assert again == reasons and [r["event_id"] for r in rows] == ["e1", "e14", "e15"]
    assert rows[1] == {"event_id": "e14", "user_id": "u2", "item_id": "b", "timestamp": float(int(NOW)), "type": "purchase",
                       "weight": 2.5, "position": 13}


def test_ids_that_are_not_utf8_are_rejected_not_merged():
    """errors="replace" once turned b"e\\xff" and b"e\\xfe" into the same id: the second was then
    acknowledged as a duplicate and never stored."""
    table = {"event_id": np.array([b"e\xff", b"e\xfe", b"ok"], object), "user_id": np.array([b"u", b"v", b"w"], object),
             "item_id": np.array([b"a", b"\xc3(", b"a"], object), "timestamp": np.array([NOW] * 3),
             "type": np.array([b"view", b"view", b"vi\xffew"], object)}
    accepted, reasons = check_events(table, ITEMS, NOW)
    assert reasons == ["bad_encoding"] * 3 and accepted.empty


def test_ids_with_control_characters_are_refused_as_requests_and_training_refuse_them():
    """Found by a probe: "196\\x00" was logged as a new user; a retrain would then have refused the whole
    data for that one row."""
    table = {"event_id": np.array(["e1", "e\n2", "e3"], object),  # object arrays, as from the wire (numpy's
             "user_id": np.array(["196\x00", "u", "u"], object),      # fixed-width strings drop a trailing NUL)
             "item_id": np.array(["a", "a", "a\tb"], object),
             "timestamp": [NOW] * 3, "type": ["view"] * 3}
    accepted, reasons = check_events(table, ITEMS, NOW)
    assert reasons == ["bad_encoding"] * 3 and accepted.empty


def test_arrays_from_the_wire_are_accepted():
    table = {"event_id": np.array([b"x1", b"x2"], object), "user_id": np.array([b"u", b"v"], object),
             "item_id": np.array([b"a", b"c"], object), "timestamp": np.array([NOW, NOW]),
             "type": np.array([b"view", b"click"], object)}
    accepted, reasons = check_events(table, ITEMS, NOW)
    assert reasons == ["ok", "ok"] and accepted["user_id"].tolist() == ["u", "v"]


def test_a_missing_column_or_ragged_columns_raise():
    with pytest.raises(ValueError, match=r"lack column\(s\) \['timestamp', 'type'\]"):
        check_events({"event_id": ["e"], "user_id": ["u"], "item_id": ["a"]}, ITEMS, NOW)
    with pytest.raises(ValueError):
        check_events({"event_id": ["e", "f"], "user_id": ["u"], "item_id": ["a"], "timestamp": [1], "type": ["view"]},
                     ITEMS, NOW)


def test_a_copy_rejected_for_another_reason_does_not_make_the_valid_copy_a_duplicate():
    """Found by a probe: [e1 with a NaN timestamp, e1 valid] rejected both (bad_timestamp,
    duplicate_in_batch), so the valid event was never logged; a copy after an accepted one is still a duplicate."""
    batch = pd.DataFrame([("e1", "u1", "a", np.nan, "view"), ("e1", "u1", "a", NOW, "view"), ("e1", "u1", "b", NOW, "view")],
                         columns=["event_id", "user_id", "item_id", "timestamp", "type"])
    accepted, reasons = check_events(batch, ITEMS, NOW)
    assert reasons == ["bad_timestamp", "ok", "duplicate_in_batch"] and accepted["item_id"].tolist() == ["a"]
