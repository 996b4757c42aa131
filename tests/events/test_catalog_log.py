"""The catalog table of the durable log: append, read, tail, the CLI, and segments written before it existed."""

import json
import sqlite3
from contextlib import closing

import pandas as pd
import pytest

from events.catalog import CatalogItems
from events.cli import main
from events.log import EventLog, log_stats, read_log
from events.segments import segment_path
from events.tail import EventTail
from features.vocab import IdVocab


def record(i, op="upsert_item", entity="item-1", **attributes):
    return {"record_id": f"r{i}", "op": op, "entity_id": entity, "attributes": attributes, "timestamp": 1.7e9 + i}


def test_catalog_records_are_stored_read_and_tailed(tmp_path):
    with EventLog(tmp_path / "log") as log:
        assert log.append_catalog([record(1, price=9.5, title="A"), record(2, "block")]) == [True, True]
        assert log.append_catalog([record(1)]) == [False]  # idempotent by record_id
        log.append_events([{"event_id": "e", "user_id": "u", "item_id": "i", "timestamp": 1.0, "type": "view"}])
    df = read_log(tmp_path / "log", "catalog")
    assert df["record_id"].tolist() == ["r1", "r2"] and df["op"].tolist() == ["upsert_item", "block"]
    assert df["attributes"].tolist() == [{"price": 9.5, "title": "A"}, {}]
    assert df["logged_at"].dtype == "float64"
    stats = log_stats(tmp_path / "log")
    assert stats["catalog"] == 2 and stats["events"] == 1 and stats["last_catalog_at"] is not None
    tail = EventTail(tmp_path / "log", kind="catalog")
    first = tail.read_new()
    assert first["entity_id"].tolist() == ["item-1", "item-1"] and json.loads(first["attributes"][0])["price"] == 9.5
    assert len(tail.read_new()) == 0
    with EventLog(tmp_path / "log") as log:
        log.append_catalog([record(3, "upsert_user", "u-1", age=30)])
    assert tail.read_new()["op"].tolist() == ["upsert_user"]
    assert EventTail(tmp_path / "log").read_new()["event_id"].tolist() == ["e"]  # events: the default table


def test_bad_catalog_rows_raise_naming_the_row_and_field(tmp_path):
    with EventLog(tmp_path / "log") as log:
        with pytest.raises(ValueError, match="catalog record row 1: field 'attributes' must be a mapping"):
            log.append_catalog([record(1), {**record(2), "attributes": "price=3"}])
        with pytest.raises(ValueError, match="attribute 'price' must be a string, a finite number or None"):
            log.append_catalog([record(3, price=float("nan"))])
        with pytest.raises(ValueError, match="required field 'entity_id' is missing"):
            log.append_catalog([{**record(4), "entity_id": None}])
    assert len(read_log(tmp_path / "log", "catalog")) == 0  # nothing of a broken batch is stored


def test_a_segment_written_before_the_catalog_table_is_read_and_upgraded(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    with closing(sqlite3.connect(segment_path(d, 1), isolation_level=None)) as conn:  # what version 1 wrote
        conn.executescript("""
CREATE TABLE events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
    timestamp REAL NOT NULL, type TEXT NOT NULL, weight REAL, received_at REAL NOT NULL);
CREATE TABLE impressions (request_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, items TEXT NOT NULL, scores TEXT NOT NULL,
    reasons TEXT NOT NULL, route TEXT, ranker TEXT, model_version TEXT, timestamp REAL NOT NULL, served_at REAL NOT NULL);
INSERT INTO events VALUES ('old', 'u', 'i', 1.0, 'view', NULL, 2.0);
PRAGMA user_version=1;""")
        conn.execute("PRAGMA journal_mode=WAL")
    assert len(read_log(d, "catalog")) == 0 and log_stats(d)["catalog"] == 0
    assert len(EventTail(d, kind="catalog").read_new()) == 0
    with EventLog(d) as log:
        assert log.append_catalog([record(1)]) == [True]
    with closing(sqlite3.connect(segment_path(d, 1))) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert read_log(d, "catalog")["record_id"].tolist() == ["r1"] and read_log(d, "events")["event_id"].tolist() == ["old"]


def test_recsys_log_reads_the_catalog_table(tmp_path, capsys):
    with EventLog(tmp_path / "log") as log:
        log.append_catalog([record(1, genres="a|b", year=1995.0), record(2, "block")])
    assert main(["read", "--dir", str(tmp_path / "log"), "--kind", "catalog", "--out", str(tmp_path / "c.csv")]) == 0
    csv = pd.read_csv(tmp_path / "c.csv")
    assert json.loads(csv["attributes"][0]) == {"genres": "a|b", "year": 1995.0}
    assert main(["read", "--dir", str(tmp_path / "log"), "--kind", "catalog", "--out", str(tmp_path / "c.parquet")]) == 0
    assert pd.read_parquet(tmp_path / "c.parquet")["op"].tolist() == ["upsert_item", "block"]
    capsys.readouterr()
    assert main(["stats", "--dir", str(tmp_path / "log")]) == 0
    assert json.loads(capsys.readouterr().out)["catalog"] == 2


def test_the_followed_vocabulary_gains_items_upserted_online(tmp_path):
    items = CatalogItems(IdVocab(["a", "b"]), tmp_path / "catalog")  # the folder may not exist yet
    assert len(items.follow()) == 2
    with EventLog(tmp_path / "catalog") as log:
        log.append_catalog([record(1, entity="c"), record(2, entity="a"), record(3, "upsert_user", "u-1"),
                            record(4, entity="c")])
    assert items.follow().lookup(["c", "u-1", "a"]).tolist() == [2, -1, 0]
    items.close()
