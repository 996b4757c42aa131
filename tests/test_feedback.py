"""The feedback loop: the event log merged into training data (features/feedback.py), exposure
negatives, the manifest's log cursor, the served tail starting after it, and train.py events=."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from events.log import EventLog
from events.reader import read_log
from events.tail import EventTail
from features.feedback import exposure_negatives, load_feedback, log_interactions, merge_interactions, read_log_events
from features.prepare import load_dataset
from features.schema import DataError, Dataset
from pipeline.artifacts import RunArtifacts
from ranking.trainer import listwise_loss, negative_weights
from serving.event_log import snapshot_tail
from tests.conftest import TINY_DATA, compose_cfg
from train import train

TYPES = ["view", "click", "add_to_cart", "purchase", "rating"]


def _event(i, user, item, ts, kind="click", weight=None):
    e = {"event_id": f"e{i}", "user_id": user, "item_id": item, "timestamp": float(ts), "type": kind}
    if weight is not None:
        e["weight"] = weight
    return e


def _dataset():
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"],
                          "timestamp": [100, 200, 150], "weight": [4.0, 5.0, 3.0]})
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "genre": ["x", "y", "x"]})
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": [30, 40]})
    return Dataset("toy", inter, items, users)


def test_log_events_merge_without_double_counting(tmp_path):
    with EventLog(tmp_path, durability="normal") as log:
        log.append_events([
            _event(0, "u1", "a", 100.4, "rating", 4.0),  # the data's row (same user, item, second): not added
            _event(1, "u1", "c", 300, "click"),  # new: added, weight defaults to 1
            _event(2, "u1", "c", 300.7, "purchase", 3.0),  # same second as e1: one interaction, largest weight
            _event(3, "u2", "b", 310, "impression"),  # shown, not an interaction
            _event(4, "u2", "b", 320, "like"),  # a type not configured: not an interaction
            _event(5, "u2", "zzz", 330, "click"),  # not in the catalog: counted, left out
            _event(6, "u3", "b", 340, "view"),  # a new user: added, with a users row
        ])
    ds = _dataset()
    fb = load_feedback(ds, tmp_path, TYPES, 1.0, None)
    r = fb.report
    assert r["read"] == 7 and r["not_interactions"] == 2 and r["unknown_items"] == 1 and r["malformed"] == 0
    assert r["repeated"] == 1 and r["kept"] == 3 and r["in_data"] == 1 and r["added"] == 2 and r["new_users"] == 1
    inter = fb.dataset.interactions
    assert len(inter) == 5  # 3 data rows + (u1, c, 300) + (u3, b, 340)
    row = inter[(inter["user_id"] == "u1") & (inter["item_id"] == "c")]
    assert row["timestamp"].tolist() == [300] and row["weight"].tolist() == [3.0]
    assert "u3" in set(fb.dataset.users["user_id"]) and fb.negatives is None
    assert (fb.cursor.segment, fb.cursor.rowid) == (1, 7)


def test_items_and_users_added_online_join_the_data_before_the_events(tmp_path):
    def record(i, op, entity, **attrs):
        return {"record_id": f"r{i}", "op": op, "entity_id": entity, "attributes": attrs, "timestamp": float(i)}

    with EventLog(tmp_path, durability="normal") as log:  # one log directory: every table
        log.append_catalog([record(1, "upsert_item", "d", genre="y", title="Dee"),
                            record(2, "upsert_item", "a", genre="z"), record(3, "block", "b"),
                            record(4, "upsert_user", "u9", age=50.0),
                            record(5, "upsert_user", "u1", age=31.0)])
        log.append_events([_event(0, "u1", "d", 300), _event(1, "u9", "d", 310), _event(2, "u2", "zzz", 320)])
    fb = load_feedback(_dataset(), tmp_path, TYPES, 1.0, None)
    r = fb.report
    counts = [r[f"catalog_{k}"] for k in ("new_items", "updated_items", "new_users", "updated_users")]
    assert counts == [1, 1, 1, 1]
    assert r["unknown_items"] == 1 and r["added"] == 2  # the events on d are kept; zzz is in no catalog
    items = fb.dataset.items.set_index("item_id")
    assert items.loc["d", "genre"] == "y" and items.loc["a", "genre"] == "z"
    assert items.loc["b", "genre"] == "y"  # a block is a serving rule, not data
    users = fb.dataset.users.set_index("user_id")
    assert (users.loc["u9", "age"], users.loc["u1", "age"], users.loc["u2", "age"]) == (50, 31, 40)
    assert all(isinstance(v, int) for v in users["age"])  # an integer column keeps integers (not 31.0)
    with EventLog(tmp_path, durability="normal") as log:  # written past the catalog model's checks
        log.append_catalog([record(6, "rename_item", "d")])
    with pytest.raises(DataError, match="rename_item"):
        load_feedback(_dataset(), tmp_path, TYPES, 1.0, None)


def test_integer_columns_stay_integers_and_unknown_columns_are_left_out():
    from features.feedback import merge_catalog

    ds = _dataset()
    ds.items["shelf"] = [7, 8, 7]  # an integer category column
    records = pd.DataFrame([{"op": "upsert_item", "entity_id": "d", "attributes": {"genre": "y", "title": "Dee"}},
                            {"op": "upsert_item", "entity_id": "a", "attributes": {"shelf": None}},
                            {"op": "upsert_item", "entity_id": "b", "attributes": {"shelf": 9.0}}])
    merged, report = merge_catalog(ds, records)
    items = merged.items.set_index("item_id")
    assert "title" not in items.columns  # the dataset has no titles: none for one item alone
    assert [items.loc[i, "shelf"] for i in "bc"] == [9, 7] and pd.isna(items.loc["a", "shelf"])
    assert pd.isna(items.loc["d", "shelf"]) and all(isinstance(v, int) for v in items["shelf"].dropna())
    assert sorted(str(v) for v in items["shelf"].dropna()) == ["7", "9"]  # what a categorical encoder learns
    assert report["catalog_new_items"] == 1 and report["catalog_updated_items"] == 2


def test_the_catalog_folder_of_each_log_layout(tmp_path):
    from features.feedback import catalog_dir

    root = tmp_path / "served"
    (root / "catalog").mkdir(parents=True)  # a served root whose events folder does not exist yet
    assert catalog_dir(root) == (root / "catalog").resolve()
    (root / "events").mkdir()
    assert catalog_dir(root / "events") == (root / "catalog").resolve()  # its events folder given directly
    assert catalog_dir(tmp_path / "one") == (tmp_path / "one").resolve()  # one EventLog: every table in it


def test_malformed_rows_are_counted_not_fatal():
    events = pd.DataFrame({"event_id": ["a", "b", "c", "d"], "user_id": ["u1", None, "u1", "u1"],
                           "item_id": ["a", "a", "a", "b"], "timestamp": [1.0, 2.0, float("nan"), 3.0],
                           "type": ["click"] * 4, "weight": [1.0, 1.0, 1.0, float("inf")],
                           "received_at": [0.0] * 4})
    rows, report = log_interactions(events, TYPES, pd.Series(["a", "b"]))
    assert report == {"read": 4, "not_interactions": 0, "malformed": 3, "unknown_items": 0, "repeated": 0, "kept": 1}
    assert rows["item_id"].tolist() == ["a"] and rows["timestamp"].dtype == np.int64
    # stamped more than a day after the server logged it (the ingest rule): malformed, not the user's newest
    ahead = events.iloc[:1].assign(timestamp=86_400.0 + 2, received_at=1.0)
    assert log_interactions(ahead, TYPES, pd.Series(["a", "b"]))[1]["malformed"] == 1


def test_a_binary_dataset_stays_binary_and_bad_paths_are_clear(tmp_path):
    ds = _dataset()
    binary = Dataset("bin", ds.interactions.drop(columns="weight"), ds.items, ds.users)
    new, _ = log_interactions(pd.DataFrame([{**_event(0, "u2", "c", 500), "weight": 2.0, "received_at": 0.0}]),
                              TYPES, ds.items["item_id"])
    merged, report = merge_interactions(binary, new)
    assert "weight" not in merged.interactions.columns and report["added"] == 1
    with pytest.raises(DataError, match="event log .* does not exist"):
        load_feedback(ds, tmp_path / "nope", TYPES, 1.0, None)


def test_an_empty_log_adds_nothing_and_tails_from_its_start(tmp_path):
    EventLog(tmp_path, durability="normal").close()
    ds = _dataset()
    fb = load_feedback(ds, tmp_path, TYPES, 1.0, 3600.0)
    assert fb.report["read"] == 0 and fb.report["added"] == 0 and fb.negatives.empty
    assert len(fb.dataset.interactions) == len(ds.interactions) and (fb.cursor.segment, fb.cursor.rowid) == (0, 0)


def test_exposure_negatives_shown_and_not_clicked_within_the_window():
    shown = pd.DataFrame({"user_id": ["u1"] * 4 + ["u2"], "item_id": ["a", "b", "c", "d", "a"],
                          "timestamp": [1000.0] * 4 + [1000.0]})
    positives = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2"], "item_id": ["a", "b", "c", "a"],
                              "timestamp": [1000, 1500, 5000, 900]})
    neg = exposure_negatives(shown, positives, window_s=3600)
    # u1: a clicked at once, b within the hour -> not negatives; c only after the window, d never -> negatives;
    # u2: a was rated *before* the impression, not after -> a negative.
    assert sorted(zip(neg["user_id"], neg["item_id"])) == [("u1", "c"), ("u1", "d"), ("u2", "a")]
    assert neg["timestamp"].tolist() == [1000, 1000, 1000]
    assert exposure_negatives(shown.iloc[:0], positives, 60).empty
    with pytest.raises(DataError, match="window_s=0"):
        exposure_negatives(shown, positives, 0)


def test_negative_weights_and_the_weighted_loss():
    import scipy.sparse as sp
    import torch

    items = np.array([[0, 1, 2, -1], [2, 3, 0, 1]])
    labels = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    exposed = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=np.float32))  # list 0: items 0, 2; list 1: 1, 2
    w = negative_weights(items, labels, exposed, 3.0)
    # a positive is never a negative (list 0 item 0); an empty slot neither.
    np.testing.assert_array_equal(w, [[1, 1, 4, 1], [4, 1, 1, 4]])
    s = torch.zeros(2, 4)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    plain = listwise_loss(s, t(labels).float(), t(items >= 0))
    weighted = listwise_loss(s, t(labels).float(), t(items >= 0), t(w))
    assert float(plain) == pytest.approx((np.log(3) + np.log(4)) / 2, rel=1e-5)
    assert float(weighted) == pytest.approx((np.log(6) + np.log(10)) / 2, rel=1e-5)  # heavier negatives, larger loss


def test_tail_after_a_cursor_and_the_snapshot_rule(tmp_path):
    log_dir = tmp_path / "events"
    with EventLog(log_dir, max_segment_bytes=32 * 1024, durability="normal") as log:
        log.append_events([_event(i, "u1", "a", 1000 + i) for i in range(400)])  # > one segment
        _, cursor = read_log_events(log_dir)  # what a retrain read
        time.sleep(0.05)
        log.append_events([_event(i, "u1", "a", 1000 + i) for i in range(400, 410)])  # during training
        time.sleep(0.05)
        written = time.time()  # the store is written after those
        log.append_events([_event(i, "u1", "a", 1000 + i) for i in range(410, 415)])
    assert cursor.segment > 1 or cursor.rowid == 400
    after = EventTail(log_dir, after=(cursor.segment, cursor.rowid)).read_new()
    assert after["event_id"].tolist() == [f"e{i}" for i in range(400, 415)]  # none lost, none twice
    by_time = EventTail(log_dir, received_after=written).read_new()
    assert by_time["event_id"].tolist() == [f"e{i}" for i in range(410, 415)]  # the gap the cursor closes
    # The served rule: the store's cursor when it is of this log, else the time filter.
    entry = {"event_log": cursor.as_dict()}
    assert snapshot_tail(log_dir, entry, written).read_new()["event_id"].tolist()[0] == "e400"
    other = {"event_log": {**cursor.as_dict(), "directory": str(tmp_path / "elsewhere"), "log_id": "another-log"}}
    assert snapshot_tail(log_dir, other, written).read_new()["event_id"].tolist()[0] == "e410"
    moved = {"event_log": {**cursor.as_dict(), "directory": str(tmp_path / "elsewhere")}}  # this log, elsewhere
    assert snapshot_tail(log_dir, moved, written).read_new()["event_id"].tolist()[0] == "e400"
    assert snapshot_tail(log_dir, {}, written).read_new()["event_id"].tolist()[0] == "e410"
    # A cursor in a segment dropped since: reading resumes at the oldest live segment after it.
    assert EventTail(log_dir, after=(0, 10**9)).read_new()["event_id"].tolist()[0] == "e0"


def test_train_with_events_produces_a_run_that_records_the_log(tmp_path):
    cfg0 = compose_cfg(tmp_path, TINY_DATA)
    ds = load_dataset(cfg0.data)
    inter = ds.interactions
    t_end = int(inter["timestamp"].max())
    users = inter["user_id"].astype(str).unique()[:40]
    items = ds.items["item_id"].astype(str).to_numpy()
    first = inter.iloc[0]
    rng = np.random.default_rng(0)
    log_dir = tmp_path / "log"
    events = [_event("dup", str(first["user_id"]), str(first["item_id"]), int(first["timestamp"]))]
    shown_rows = []
    n = 0
    for j, u in enumerate(users):
        picked = rng.choice(items, 6, replace=False)
        ts = t_end + 100 + j
        shown_rows.append({"request_id": f"r{j}", "user_id": u, "items": picked.tolist(), "timestamp": float(ts)})
        for it in picked[:2]:  # two of the six shown are clicked
            events.append(_event(n, u, it, ts))
            n += 1
        events.append(_event(f"imp{j}", u, picked[5], ts, "impression"))
    events.append(_event("bad", users[0], "no-such-item", t_end + 5))
    # an item added online (recsys-catalog) and clicked: the retrain learns it like any other
    source = ds.items.iloc[3].to_dict()
    attrs = {k: (None if pd.isna(v) else (float(v) if isinstance(v, (int, float, np.number)) else str(v)))
             for k, v in source.items() if k != "item_id"}
    events += [_event(f"online{j}", users[j], "online-item", t_end + 50 + j) for j in range(2)]
    with EventLog(log_dir / "catalog", durability="normal") as log:
        log.append_catalog([{"record_id": "c1", "op": "upsert_item", "entity_id": "online-item", "attributes": attrs,
                             "timestamp": float(t_end + 40)}])
    with EventLog(log_dir / "events", durability="normal") as log:
        log.append_events(events)
    with EventLog(log_dir / "impressions", durability="normal") as log:
        log.append_impressions(shown_rows)
    cfg = compose_cfg(tmp_path, TINY_DATA + [
        "stage=deploy", "ranking.max_epochs=2", "eval.cold_users=20", "retrieval.refit.mode=none",
        f"events={log_dir}", "ranking.impression_negatives.enabled=true", "ranking.impression_negatives.weight=2.0"])
    m = train(cfg)
    assert "pipeline/test/ndcg@10" in m
    manifest = json.loads((tmp_path / "run" / "artifacts" / "manifest.json").read_text())
    read = manifest["event_log"]["read"]
    assert read["in_data"] == 1 and read["added"] == 82 and read["not_interactions"] == 40
    assert read["unknown_items"] == 1 and read["exposure_negatives"] == 40 * 4 and read["catalog_new_items"] == 1
    assert "online-item" in RunArtifacts(tmp_path / "run").item_ids()  # in the trained vocabulary: a learned id
    cursor = manifest["event_log"]["cursor"]
    assert (cursor["segment"], cursor["rowid"]) == (1, len(events))
    assert manifest["artifacts"]["store"]["event_log"] == cursor  # what the served tail starts after
    assert manifest["artifacts"]["store"]["saw"]["interactions"] == len(inter) + 82
    report = (tmp_path / "run" / "report.md").read_text()
    assert "exposure negatives weighted 2.0" in report  # the deployed ranker trained with them
    assert len(read_log(log_dir / "events")) == len(events)  # the log itself is untouched
    with pytest.raises(DataError, match="stage=backtest"):
        train(compose_cfg(tmp_path, TINY_DATA + ["stage=backtest", f"events={log_dir}"]))


def test_a_served_logs_impressions_or_catalog_folder_is_not_taken_for_its_events(tmp_path):
    """--events DIR/impressions read nothing and moved the run's events cursor there: the served tail then
    skipped the events logged before the refresh."""
    from features.feedback import log_dirs

    for name in ("events", "impressions", "catalog"):
        (tmp_path / "served" / name).mkdir(parents=True)
    assert log_dirs(tmp_path / "served")[0] == tmp_path / "served" / "events"
    for name in ("impressions", "catalog"):
        with pytest.raises(DataError, match=rf"is the {name} folder of the served log .*give .*served"):
            log_dirs(tmp_path / "served" / name, "--events DIR")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory"):
        log_dirs(tmp_path / "notes.txt")


def test_a_logged_id_with_a_control_character_is_a_malformed_row_not_a_failed_retrain():
    events = pd.DataFrame({"event_id": ["e1", "e2"], "user_id": ["u\x00", "u"], "item_id": ["i", "i"],
                           "timestamp": [100.0, 100.0], "type": ["click", "click"], "weight": [np.nan, np.nan]})
    rows, report = log_interactions(events, ["click"])
    assert rows["user_id"].tolist() == ["u"] and report["malformed"] == 1
