"""The recommend wire format without a server: committed config vs protocol table, every check."""

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pipeline.pipeline import MAX_ID_LENGTH, Recommendation, RequestError
from serving.cli import format_answer
from serving.protocol import (FIELDS, CATALOG_INPUTS, CATALOG_OUTPUTS, EVENT_INPUTS, EVENT_OUTPUTS, INPUTS, MAX_LIST_LEN,
                              OUTPUTS, decode_response, encode_catalog, encode_events, encode_request)
from serving.request import MAX_TIMESTAMP, encode_recommendation, parse_request

ROOT = Path(__file__).resolve().parents[2]
TRITON_TYPES = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32", "FP64": "TYPE_FP64", "FP32": "TYPE_FP32"}
MAX_K = 50


def committed_config(model: str) -> model_config_pb2.ModelConfig:
    text = (ROOT / "triton_repo" / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def check_declares(model: str, inputs: dict, outputs: dict) -> dict:
    """The committed config of ``model`` declares exactly this wire table; returns its parameters."""
    cfg = committed_config(model)
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    got_in = {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), t.optional) for t in cfg.input}
    assert got_in == {n: (TRITON_TYPES[dt], dims, opt) for n, (_, dt, dims, opt) in inputs.items()}
    got_out = {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in cfg.output}
    assert got_out == {n: (TRITON_TYPES[dt], dims) for n, (_, dt, dims) in outputs.items()}
    return {k: v.string_value for k, v in cfg.parameters.items()}


def test_committed_recommend_config_declares_the_protocol_table():
    params = check_declares("recommend", INPUTS, OUTPUTS)
    assert params == {"USER_TOWER_MODEL": "user_tower", "INFERENCE": "auto", "ORT_THREADS": "1", "EVENT_LOG": "event_log",
                      "IMPRESSION_DURABILITY": "normal", "REDIS_URL": "", "REDIS_STREAM": "recsys:{events}",
                      "REDIS_CATALOG_STREAM": "recsys:{catalog}"}


def test_committed_events_config_declares_the_event_table():
    params = check_declares("events", EVENT_INPUTS, EVENT_OUTPUTS)
    recommend = check_declares("recommend", INPUTS, OUTPUTS)
    assert params["EVENT_LOG"] == recommend["EVENT_LOG"]  # one shared log
    # Redis off by default (the default path needs none); one stream for both when it is on
    assert params["REDIS_URL"] == recommend["REDIS_URL"] == "" and params["REDIS_STREAM"] == recommend["REDIS_STREAM"]


def test_redis_settings_come_from_the_parameters_and_the_environment_wins(monkeypatch):
    from serving.event_log import REDIS_ENV, redis_settings

    monkeypatch.delenv(REDIS_ENV, raising=False)
    params = {k: v.string_value for k, v in committed_config("events").parameters.items()}
    assert redis_settings(params) is None  # off
    on = redis_settings({**params, "REDIS_URL": "redis://127.0.0.1:6390/0"})
    assert on == {"url": "redis://127.0.0.1:6390/0", "stream": "recsys:{events}", "maxlen": 1_000_000,
                  "id_ttl_s": 604_800, "catalog_stream": "recsys:{catalog}", "catalog_maxlen": 0}
    monkeypatch.setenv(REDIS_ENV, "redis://127.0.0.1:7000/1")
    assert redis_settings(params)["url"] == "redis://127.0.0.1:7000/1"
    monkeypatch.setenv(REDIS_ENV, "127.0.0.1:7000")
    with pytest.raises(ValueError, match="expected redis://HOST:PORT/DB"):
        redis_settings(params)
    monkeypatch.delenv(REDIS_ENV)
    with pytest.raises(ValueError, match=r"parameter REDIS_MAXLEN='lots' is not an integer"):
        redis_settings({**params, "REDIS_URL": "redis://h:1/0", "REDIS_MAXLEN": "lots"})
    with pytest.raises(ValueError, match=r"REDIS_CATALOG_MAXLEN='-1' must be at least 0 \(0: the stream keeps every"):
        redis_settings({**params, "REDIS_URL": "redis://h:1/0", "REDIS_CATALOG_MAXLEN": "-1"})
    with pytest.raises(ValueError, match=r"REDIS_MAXLEN='0' must be at least 1"):
        redis_settings({**params, "REDIS_URL": "redis://h:1/0", "REDIS_MAXLEN": "0"})


def test_the_three_models_name_the_same_redis_streams():
    """events, catalog and recommend must agree on the stream keys (a mismatch: hosts that never see
    each other's records)."""
    params = {name: {k: v.string_value for k, v in committed_config(name).parameters.items()}
              for name in ("events", "catalog", "recommend")}
    assert {p["REDIS_CATALOG_STREAM"] for p in params.values()} == {"recsys:{catalog}"}
    assert params["events"]["REDIS_STREAM"] == params["recommend"]["REDIS_STREAM"]
    assert params["catalog"]["REDIS_CATALOG_MAXLEN"] == "0"  # every record kept


def test_committed_catalog_config_declares_the_catalog_table():
    params = check_declares("catalog", CATALOG_INPUTS, CATALOG_OUTPUTS)
    assert params["EVENT_LOG"] == check_declares("recommend", INPUTS, OUTPUTS)["EVENT_LOG"]  # one shared log


def test_catalog_records_encode_attributes_as_json_objects():
    import json

    t = encode_catalog(["upsert_item", "block"], ["i1", 7], [{"price": np.float32(2.5), "year": np.int64(1995),
                                                              "genres": ["a", "b"], "title": None}, None])
    assert t["op"].tolist() == [b"upsert_item", b"block"] and t["id"].tolist() == [b"i1", b"7"]
    assert json.loads(t["attributes"][0]) == {"price": 2.5, "year": 1995, "genres": ["a", "b"], "title": None}
    assert json.loads(t["attributes"][1]) == {}
    with pytest.raises(ValueError, match="one op, one id"):
        encode_catalog(["block"], ["a", "b"])


def test_events_encode_from_a_frame_with_optional_weight():
    import pandas as pd

    t = encode_events(pd.DataFrame({"event_id": ["e1", "e2"], "user_id": ["u", "ü"], "item_id": ["a", "b"],
                                    "timestamp": [1.0, 2], "type": ["view", "click"]}))
    assert set(t) == set(EVENT_INPUTS) - {"weight"} and t["user_id"].tolist() == [b"u", "ü".encode()]
    assert t["timestamp"].dtype == np.float64
    w = encode_events({"event_id": ["e"], "user_id": ["u"], "item_id": ["a"], "timestamp": [1], "type": ["view"],
                       "weight": [None]})["weight"]
    assert w.dtype == np.float32 and np.isnan(w[0])
    with pytest.raises(ValueError, match="events lack 'type'"):
        encode_events({"event_id": ["e"], "user_id": ["u"], "item_id": ["a"], "timestamp": [1]})
    # a list of dicts, one per event (found by a probe: a TypeError), a key one of them lacks is its missing cell
    listed = encode_events([{"event_id": "e1", "user_id": "u", "item_id": "a", "timestamp": 1.0, "type": "view"},
                            {"event_id": "e2", "user_id": "ü", "item_id": "b", "timestamp": 2, "type": "click",
                             "weight": 2.0}])
    assert listed["user_id"].tolist() == t["user_id"].tolist() and np.isnan(listed["weight"][0])
    with pytest.raises(ValueError, match="a list of dicts"):
        encode_events(["e1", "e2"])
    with pytest.raises(ValueError, match="user_id holds booleans"):  # would log users "True" / "False"
        encode_events(pd.DataFrame({"event_id": ["e"], "user_id": [True], "item_id": ["a"], "timestamp": [1],
                                    "type": ["view"]}))


def test_one_bad_event_cell_is_that_events_rejection_and_a_missing_weight_is_not_a_bad_one():
    """Cells as files give them: a date-time is Unix seconds, text that is not a number is rejected for
    its row (timestamp NaN -> bad_timestamp, weight -inf -> bad_weight: NaN would mean "not given"),
    bytes ids stay bytes (UTF-8, never "b'3'"), and the FP32 NaN of a missing weight is not given."""
    import datetime

    import pandas as pd

    from events.checks import check_events

    t = encode_events(pd.DataFrame({
        "event_id": ["a", "b", "c", "d", "e"], "user_id": ["u"] * 5, "item_id": [b"3", "3", "3", "3", "3"],
        "timestamp": [1.7e9, "abc", pd.Timestamp("2024-01-01"), np.datetime64("NaT"),
                      datetime.datetime(2024, 1, 1, 1, tzinfo=datetime.timezone.utc)],
        "type": ["click"] * 5, "weight": [None, 1, "heavy", 2.0, np.nan]}))
    assert t["item_id"].tolist() == [b"3"] * 5
    assert t["timestamp"][[0, 2, 4]].tolist() == [1.7e9, 1704067200.0, 1704070800.0]
    assert np.isnan(t["timestamp"][[1, 3]]).all() and t["weight"][2] == -np.inf

    class Items:
        def lookup(self, ids):
            return np.array([0 if i == "3" else -1 for i in ids])

    _, status = check_events(t, Items(), 1.8e9)
    assert status == ["ok", "bad_timestamp", "bad_weight", "bad_timestamp", "ok"]
    # a float id column (a parquet int column with a null) is integers; a list cell is no id; a date alone is
    # its midnight; a weight past float32 is refused quietly
    more = encode_events({"event_id": ["f", "g"], "user_id": [196.0, ["36"]], "item_id": [3.0, 3.0],
                          "timestamp": [datetime.date(2024, 1, 1), 1.7e9], "type": ["click"] * 2, "weight": [1e39, 1]})
    assert more["user_id"].tolist() == [b"196", b""] and more["item_id"].tolist() == [b"3", b"3"]
    assert more["timestamp"][0] == 1704067200.0 and more["weight"][0] == np.inf
    assert check_events(more, Items(), 1.8e9)[1] == ["bad_weight", "missing_user_id"]
    nullable = pd.DataFrame({"event_id": ["h", "i"], "user_id": pd.array([196, None], dtype="Int64"),
                             "item_id": ["3", "3"], "timestamp": [1.7e9, 1.7e9], "type": ["click"] * 2,
                             "weight": pd.array([None, 2.0], dtype="Float64")})
    t = encode_events(nullable)  # pandas' NA: missing, never the text "<NA>"
    assert t["user_id"].tolist() == [b"196", b""] and np.isnan(t["weight"][0])
    assert check_events(t, Items(), 1.8e9)[1] == ["ok", "missing_user_id"]


def test_k_beyond_the_wire_type_is_refused_by_the_client_not_wrapped():
    for k in (2**32 + 1, 1.5, True):
        with pytest.raises(ValueError, match=f"k={k!r} must be a whole number the request can carry"):
            encode_request("u", k)
    assert encode_request("u", 0)["k"].tolist() == [0]  # in range for the wire: the server says 1..max_k


def test_committed_retrieval_config_parses():
    cfg = committed_config("retrieval")
    assert [t.name for t in cfg.input] == ["query", "k"]
    assert [t.name for t in cfg.output] == ["item_index", "item_id", "score"]


def test_encode_then_parse_gives_the_request():
    tensors = encode_request("196", 10, 1_700_000_000, exclude_items=["i1"], include_categories=["drama"],
                             exclude_categories=["horror"], recent_items=["i2", "i3"])
    r = parse_request(tensors, MAX_K)
    assert (r.user_id, r.k, r.timestamp) == ("196", 10, 1_700_000_000)
    assert (r.exclude_items, r.include_categories, r.exclude_categories, r.recent_items) == (
        ["i1"], ["drama"], ["horror"], ["i2", "i3"])
    bare = parse_request(encode_request("u", 1), MAX_K)
    assert bare.timestamp is None and bare.exclude_items == [] and bare.recent_items == []
    assert bare.promoted == [] and bare.segment is None and bare.attributes == {}
    full = parse_request(encode_request("new", 5, promoted=["i9"], segment="kids",
                                        attributes={"age": 25, "occupation": "a=b"}), MAX_K)
    assert full.promoted == ["i9"] and full.segment == "kids"
    assert full.attributes == {"age": "25", "occupation": "a=b"}  # split at the first "="


def test_missing_attribute_values_are_left_out_not_sent_as_text():
    """{"age": None} once went out as "age=None", which the server refuses as not a number."""
    r = parse_request(encode_request("new", 3, attributes={"age": None, "gender": float("nan"), "occupation": "x"}), MAX_K)
    assert r.attributes == {"occupation": "x"}
    assert "attributes" not in encode_request("new", 3, attributes={"age": None})


def test_an_attribute_as_long_as_the_catalog_stores_is_taken():
    value = "x" * 1000  # MAX_VALUE_LENGTH of a catalog upsert_user
    assert parse_request(encode_request("new", 3, attributes={"occupation": value}), MAX_K).attributes == {
        "occupation": value}


def test_missing_values_of_any_float_type_and_pandas_na_are_left_out():
    import pandas as pd

    r = parse_request(encode_request("new", 3, attributes={"age": np.float32("nan"), "gender": pd.NA,
                                                           "occupation": np.float64("nan"), "zip": "x"}), MAX_K)
    assert r.attributes == {"zip": "x"}


def test_the_client_refuses_what_would_go_out_as_something_else():
    """A bare string where a list belongs went out as its characters ("88" excluded "8" twice); None went
    out as the user "None"; a list attribute as its text."""
    for name in ("exclude_items", "recent_items", "promoted", "include_categories", "exclude_categories"):
        with pytest.raises(TypeError, match=rf"{name} must be a list of ids, not the string '88'; pass \['88'\]"):
            encode_request("196", 3, **{name: "88"})
    with pytest.raises(TypeError, match="user_id=None must be a string"):
        encode_request(None, 3)
    assert parse_request(encode_request(196, 3), MAX_K).user_id == "196"  # an int id is its text, as in training
    with pytest.raises(TypeError, match=r"attributes\['occupation'\] is a list; a request carries one value"):
        encode_request("new", 3, attributes={"occupation": ["a", "b"]})
    assert parse_request(encode_request("196", 3, exclude_items=("88",)), MAX_K).exclude_items == ["88"]


def test_block_and_unblock_refuse_a_bare_string():
    """block("50") blocked items "5" and "0"."""
    from serving.client import RecommendClient

    with RecommendClient("127.0.0.1:1") as client:  # refused before any call: nothing listens there
        for call in (client.block, client.unblock):
            with pytest.raises(TypeError, match=r"item_ids must be a list of ids, not the string '50'"):
                call("50")


def test_events_with_a_column_the_server_does_not_take_are_refused_not_trimmed():
    event = {"event_id": ["e1"], "user_id": ["u"], "item_id": ["i"], "timestamp": [1.7e9], "type": ["click"]}
    with pytest.raises(ValueError, match=r"column\(s\) \['wieght'\] the server does not take"):
        encode_events({**event, "wieght": [2.0]})
    assert set(encode_events({**event, "weight": [2.0]})) == set(event) | {"weight"}
    # what recsys-log read --out writes, and a CSV saved with pandas' index: sent without those columns
    assert set(encode_events({**event, "received_at": [1.7e9], "Unnamed: 0": [0]})) == set(event)


def test_ids_are_stripped_as_training_and_the_events_model_store_them():
    r = parse_request(encode_request(" 9 ", 3, exclude_items=["\ti1 "], recent_items=[" i2"], promoted=["i3 "],
                                     include_categories=[" Comedy"], attributes={"age": " 25 "}), MAX_K)
    assert (r.user_id, r.exclude_items, r.recent_items, r.promoted) == ("9", ["i1"], ["i2"], ["i3"])
    assert r.include_categories == [" Comedy"] and r.attributes == {"age": " 25 "}  # as sent: a token may hold a space


def test_unicode_ids_round_trip():
    assert parse_request(encode_request("ユーザー", 3), MAX_K).user_id == "ユーザー"


def with_(**changes):
    t = encode_request("196", 10, 1_700_000_000)
    t.update(changes)
    return {k: v for k, v in t.items() if v is not None}


@pytest.mark.parametrize("tensors, message", [
    (with_(k=np.array([0], np.int32)), r"k=0 must be an integer in 1\.\.50"),
    (with_(k=np.array([-3], np.int32)), r"k=-3 must be an integer in 1\.\.50"),
    (with_(k=np.array([MAX_K + 1], np.int32)), r"k=51 must be an integer in 1\.\.50"),
    (with_(k=np.array([1.5], np.float32)), r"input 'k' has datatype float32; send INT32"),
    (with_(k=np.array([[3]], np.int32)), r"input 'k' has shape \[1, 1\]; send shape \[1\]"),
    (with_(k=None), r"missing required input\(s\) \['k'\]"),
    (with_(user_id=None), r"missing required input\(s\) \['user_id'\]"),
    (with_(user_id=np.array([b"a", b"b"], object)), r"input 'user_id' has shape \[2\]; send shape \[1\]"),
    (with_(user_id=np.array([1], np.int32)), r"input 'user_id' has datatype int32; send BYTES"),
    (with_(user_id=np.array([b""], object)), "user_id must be a non-empty string"),
    (with_(user_id=np.array([b"  "], object)), "user_id must be a non-empty string"),
    (with_(user_id=np.array([b"u" * (MAX_ID_LENGTH + 1)], object)), r"user_id is 257 characters long; at most 256"),
    (with_(user_id=np.array([b"u" * 5000], object)), r"'user_id' holds a value of 5000 bytes"),
    (with_(user_id=np.array([b"\xff\xfe"], object)), r"'user_id' holds bytes that are not UTF-8"),
    (with_(timestamp=np.array([np.nan])), r"'timestamp' is nan; send finite Unix seconds"),
    (with_(timestamp=np.array([np.inf])), r"'timestamp' is inf; send finite Unix seconds"),
    (with_(timestamp=np.array([-np.inf])), r"'timestamp' is -inf"),
    (with_(timestamp=np.array([-1.0])), r"'timestamp' is -1.0; send finite Unix seconds in 0\.\."),
    (with_(timestamp=np.array([MAX_TIMESTAMP + 1.0])), r"'timestamp' is 253402300800.0; send finite"),
    (with_(timestamp=np.array([1, 2], np.float64)), r"input 'timestamp' has shape \[2\]"),
    (with_(exclude_items=np.array([b""], object)), r"exclude_items holds ''; every entry must be a non-empty"),
    (with_(attributes=np.array([b"age"], object)), r"input 'attributes' holds 'age'; send name=value entries"),
    (with_(attributes=np.array([b"=25"], object)), r"input 'attributes' holds '=25'"),
    (with_(attributes=np.array([b"user_id=7"], object)), r"input 'attributes' names user_id"),
    (with_(attributes=np.array([b"a=1"] * 1001, object)), r"input 'attributes' has 1001 entries; at most 1000"),
    (with_(attributes=np.array([b"age=25", b" age =30"], object)), r"input 'attributes' names 'age' twice"),
    (with_(exclude_items=np.array([b"  "], object)), r"exclude_items holds ''; every entry must be a non-empty"),
    (with_(segment=np.array([b"a", b"b"], object)), r"input 'segment' has shape \[2\]; send shape \[1\]"),
    (with_(recent_items=np.array([b"x" * 300], object)), r"recent_items holds 'xxx.*at most 256 characters"),
    (with_(exclude_items=np.array([b"i"] * (MAX_LIST_LEN + 1), object)), r"'exclude_items' has 1001 entries"),
    (with_(include_categories=np.array([[b"a"]], object)), r"'include_categories' has shape \[1, 1\]"),
    (with_(colour=np.array([b"red"], object)), r"unknown input\(s\) \['colour'\]; known: user_id, k"),
    (with_(segment=np.array([b"s" * 1000], object)), r"'segment' holds a value of 1000 characters; at most 256"),
    (with_(user_id=np.array([b"196\x00"], object)), r"user_id '196\\x00' holds a control character"),
    (with_(exclude_items=np.array([b"a\nb"], object)), r"exclude_items holds 'a\\nb'.*without control characters"),
    (with_(user_id=np.array(["1\u0085" "96".encode()], object)), r"user_id '1\\x8596' holds a control character"),
    (with_(recent_items=np.array(["a\u2028b".encode()], object)), r"recent_items holds 'a\\u2028b'.*without control"),
    (with_(attributes=np.array([b"occupation=" + b"x" * 1300], object)), r"'attributes' holds a value of 1311 char"),
])
def test_bad_requests_name_the_problem(tensors, message):
    with pytest.raises(RequestError, match=message):
        parse_request(tensors, MAX_K)


def test_answer_round_trips_through_tensors():
    rec = Recommendation("196", "known_user", ["i1", "i2"], [0.5, 0.25], ["ranked", "backfill:popularity"],
                         ["collaborative", "popularity"])
    out = encode_recommendation(rec, {"i1": "Toy Story"})
    assert {n: a.dtype for n, a in out.items()} == {n: np.dtype(d) for n, (d, _, _) in OUTPUTS.items()}
    back = decode_response("196", out)
    assert (back.item_ids, back.scores, back.reasons, back.groups, back.route) == (
        rec.item_ids, rec.scores, rec.reasons, rec.groups, rec.route)
    assert back.titles == ["Toy Story", ""]
    table = format_answer(back)
    assert "Toy Story" in table and "backfill:popularity" in table and "known_user" in table


def test_answer_output_carries_what_the_named_outputs_do():
    rec = Recommendation("196", "known_user", ["i1", "i2"], [np.float32(0.1), float("nan")], ["ranked", "boosted"],
                         ["collaborative", "content"])
    named = decode_response("196", encode_recommendation(rec, {"i2": "Ünïcode \"title\""}, "ranker_student", "rid",
                                                         names=FIELDS))
    out = encode_recommendation(rec, {"i2": "Ünïcode \"title\""}, "ranker_student", "rid", names=["answer"])
    assert list(out) == ["answer"] and out["answer"].shape == (1,)  # only what was asked for
    assert json.loads(out["answer"][0])["scores"][1] is None  # strict JSON: no NaN token for other clients
    whole = decode_response("196", out)
    assert whole.scores[0] == named.scores[0] == float(np.float32(0.1))  # float32 exactly, both ways
    assert np.isnan(whole.scores[1]) and np.isnan(named.scores[1])
    whole.scores, named.scores = whole.scores[:1], named.scores[:1]
    assert whole == named and whole.titles == ["", 'Ünïcode "title"'] and whole.request_id == "rid"


def test_empty_answer_encodes():
    out = encode_recommendation(Recommendation("u", "cold_user", [], [], [], []), {})
    assert out["item_ids"].shape == (0,) and out["scores"].dtype == np.float32
    assert decode_response("u", out).item_ids == []


def test_a_catalog_row_without_an_id_is_that_records_rejection_not_the_files():
    """An empty id cell goes as an empty id (the server answers missing_id for it alone); a table with no
    id column at all is refused before sending; bytes ids stay bytes."""
    import pandas as pd

    from events.catalog import check_catalog
    from serving.client import _records

    rows = _records(pd.DataFrame({"item_id": ["a", None, b"c"], "price": [1.0, 2.0, None]}), "item_id")
    t = encode_catalog(["block"] * 3, [r.pop("item_id") for r in rows])
    assert t["id"].tolist() == [b"a", b"", b"c"]

    class Items:
        def lookup(self, ids):
            return np.array([0 if i in ("a", "c") else -1 for i in ids])

    assert check_catalog(t["op"], t["id"], None, {"item": {}, "user": {}}, Items(), 0.0)[1] == ["ok", "missing_id", "ok"]
    with pytest.raises(ValueError, match="the records have no 'item_id'"):
        _records(pd.DataFrame({"price": [1.0]}), "item_id")
