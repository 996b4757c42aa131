"""The durable event and impression log: round trips, idempotency, rotation and bound, several
writer processes, SIGKILL, every validation branch, and the recsys-log command."""

from __future__ import annotations

import json
import logging
import math
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from events.cli import main as cli_main
from events.log import (
    EVENT_COLUMNS,
    EVENT_DTYPES,
    EXPLODED_IMPRESSION_DTYPES,
    IMPRESSION_COLUMNS,
    IMPRESSION_DTYPES,
    EventLog,
    log_stats,
    read_log,
)
from events.segments import list_segments, segment_path

ROOT = Path(__file__).resolve().parents[2]
TINY = 32 * 1024  # the smallest segment EventLog accepts: ~250 events


def event(i: int | str, **kw) -> dict:
    row = {"event_id": f"e{i}", "user_id": f"u{int(str(i).split('_')[-1]) % 7}", "item_id": f"i{i}",
           "timestamp": 1_700_000_000.0 + float(str(i).split("_")[-1]), "type": "click"}
    return {**row, **kw}


def impression(i: int, n: int = 3, **kw) -> dict:
    row = {"request_id": f"r{i}", "user_id": f"u{i % 5}", "items": [f"i{i}_{p}" for p in range(n)],
           "scores": [1.0 - 0.1 * p for p in range(n)], "reasons": ["collaborative"] * n,
           "route": "known", "ranker": "ranker", "model_version": "3", "timestamp": 1_700_000_000.0 + i}
    return {**row, **kw}


def dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


# -- round trips --------------------------------------------------------------------------------


def test_events_round_trip_keeps_types_order_and_filters_on_event_time(tmp_path):
    t0 = time.time()
    with EventLog(tmp_path / "log") as log:
        assert log.append_events([event(3, weight=2.5), event(1), event(2, user_id=196)]) == [True] * 3
        frame = pd.DataFrame([event(5), event(4, weight=np.nan)])  # a DataFrame works too
        assert log.append_events(frame) == [True, True]
    t1 = time.time()

    df = read_log(tmp_path / "log")
    assert list(df.columns) == list(EVENT_COLUMNS) and dtypes(df) == EVENT_DTYPES
    assert df["event_id"].tolist() == ["e3", "e1", "e2", "e5", "e4"]  # append order, not time order
    assert df["user_id"].tolist()[2] == "196"  # integer ids are stored as strings
    assert df["weight"].iloc[0] == 2.5 and df["weight"].iloc[1:].isna().all()
    assert df["timestamp"].tolist() == [1_700_000_003.0, 1_700_000_001.0, 1_700_000_002.0,
                                         1_700_000_005.0, 1_700_000_004.0]
    assert ((df["received_at"] >= t0) & (df["received_at"] <= t1)).all()
    # since <= timestamp < until
    window = read_log(tmp_path / "log", since=1_700_000_002, until=1_700_000_004)
    assert window["event_id"].tolist() == ["e3", "e2"]


def test_new_ids_append_to_a_new_log_and_across_new_segments(tmp_path):
    """The served path's appends (new_ids: no probe that would open the segment first): the first one
    of a fresh log and the first one of every new segment are stored, none lost."""
    with EventLog(tmp_path, max_segment_bytes=TINY) as log:
        for i in range(60):
            assert log.append_impressions([impression(i)], new_ids=True) == [True]
        assert len(log._segments) > 1  # it rolled over to new segments on the way
    assert read_log(tmp_path, "impressions")["request_id"].tolist() == [f"r{i}" for i in range(60)]


def test_new_ids_skip_the_log_search_but_not_the_batch_dedupe(tmp_path, monkeypatch):
    with EventLog(tmp_path) as log:
        assert log.append_impressions([impression(1)]) == [True]
        searched = []
        monkeypatch.setattr(log, "_stored_keys", lambda kind, keys: searched.append(keys) or set())
        assert log.append_impressions([impression(2), impression(3), impression(2)], new_ids=True) == [True, True, False]
        assert searched == []  # the caller vouches for its fresh ids: no probe of the segments
        with pytest.raises(sqlite3.IntegrityError):  # a stale id all the same: refused whole, never stored twice
            log.append_impressions([impression(4), impression(1)], new_ids=True)
        assert log.append_impressions([impression(5)]) == [True] and searched == [{"r5"}]  # default: searched
    assert read_log(tmp_path, "impressions")["request_id"].tolist() == ["r1", "r2", "r3", "r5"]


def test_impressions_round_trip_and_explode_one_row_per_position(tmp_path):
    with EventLog(tmp_path) as log:
        rows = [impression(1), impression(2, n=2, scores=None, reasons=None, route=None),
                impression(3, n=0), impression(4, n=1, items=np.array(["x"]))]
        assert log.append_impressions(rows) == [True] * 4

    df = read_log(tmp_path, "impressions")
    assert list(df.columns) == list(IMPRESSION_COLUMNS) and dtypes(df) == IMPRESSION_DTYPES
    assert df["request_id"].tolist() == ["r1", "r2", "r3", "r4"]
    assert df["items"].tolist() == [["i1_0", "i1_1", "i1_2"], ["i2_0", "i2_1"], [], ["x"]]
    assert df["scores"].iloc[0] == pytest.approx([1.0, 0.9, 0.8]) and df["scores"].iloc[1] == []
    assert df["reasons"].iloc[0] == ["collaborative"] * 3 and isinstance(df["items"].iloc[0], list)
    assert df["route"].iloc[0] == "known" and pd.isna(df["route"].iloc[1])
    assert (df["served_at"] > 0).all()

    ex = read_log(tmp_path, "impressions", explode=True)
    assert dtypes(ex) == EXPLODED_IMPRESSION_DTYPES
    assert ex["request_id"].tolist() == ["r1"] * 3 + ["r2"] * 2 + ["r4"]  # r3 served nothing
    assert ex["position"].tolist() == [0, 1, 2, 0, 1, 0]
    assert ex["item_id"].tolist() == ["i1_0", "i1_1", "i1_2", "i2_0", "i2_1", "x"]
    assert ex["score"].iloc[:3].tolist() == pytest.approx([1.0, 0.9, 0.8]) and ex["score"].iloc[3:5].isna().all()
    assert ex["reason"].iloc[0] == "collaborative" and ex["reason"].iloc[3:5].isna().all()
    assert ex["model_version"].iloc[0] == "3"


def test_empty_directory_reads_as_typed_empty_frames_and_missing_one_names_itself(tmp_path):
    (tmp_path / "empty").mkdir()
    for kind, explode, types in [("events", False, EVENT_DTYPES), ("impressions", False, IMPRESSION_DTYPES),
                                 ("impressions", True, EXPLODED_IMPRESSION_DTYPES)]:
        df = read_log(tmp_path / "empty", kind, explode=explode)
        assert df.empty and dtypes(df) == types
    with EventLog(tmp_path / "fresh") as log:  # a log with segments but no rows
        assert log.append_events([]) == []
        log.append_impressions([impression(1)])
    assert read_log(tmp_path / "fresh").empty
    assert log_stats(tmp_path / "empty") == {"segments": 0, "bytes": 0, "events": 0, "impressions": 0, "catalog": 0,
                                             "dropped_segments": 0, "last_event_at": None,
                                             "last_impression_at": None, "last_catalog_at": None}
    with pytest.raises(FileNotFoundError, match=f"event log directory {tmp_path / 'missing'} does not exist"):
        read_log(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        log_stats(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        read_log(tmp_path / "file")


# -- idempotency, rotation, bound -------------------------------------------------------------


def test_duplicates_return_false_and_are_stored_once_also_after_rotation(tmp_path):
    with EventLog(tmp_path, max_segment_bytes=TINY) as log:
        assert log.append_events([event(0), event(0), event(1)]) == [True, False, True]  # within a batch
        assert log.append_impressions([impression(0)]) == [True]
        for b in range(12):
            log.append_events([event(f"{b}_{j}") for j in range(50)])
        assert log.stats()["segments"] >= 3  # e0 and r0 live in the oldest segment now
        assert log.append_events([event(2), event(0, weight=9.0), event(1)]) == [True, False, False]
        assert log.append_impressions([impression(0, n=1), impression(1)]) == [False, True]
        assert log.stats()["dropped_segments"] == 0

    events = read_log(tmp_path)
    assert events["event_id"].is_unique and len(events) == 3 + 12 * 50
    assert events.loc[events["event_id"] == "e0", "weight"].isna().all()  # the first copy is kept
    impressions = read_log(tmp_path, "impressions")
    assert impressions["request_id"].tolist() == ["r0", "r1"] and len(impressions["items"].iloc[0]) == 3


def test_rotation_and_total_bound_drop_the_oldest_segments(tmp_path, caplog):
    bound = 6 * TINY
    ids = []
    with caplog.at_level(logging.WARNING, logger="events.log"), \
            EventLog(tmp_path, max_segment_bytes=TINY, max_total_bytes=bound, durability="normal") as log:
        for b in range(30):
            batch = [event(f"{b}_{j}") for j in range(50)]
            ids += [r["event_id"] for r in batch]
            assert log.append_events(batch) == [True] * 50
            assert log.stats()["bytes"] <= bound
        # the dropped ids left the idempotency window: a retry of the very first one is stored again
        assert log.append_events([event("0_0")]) == [True]
        stats = log.stats()

    assert stats["dropped_segments"] > 0 and stats["segments"] >= 2
    names = sorted(p.name for p in tmp_path.iterdir())
    live = [n for n in names if n.endswith(".sqlite")]
    assert len(live) == stats["segments"] and live[0] == f"segment-{stats['dropped_segments'] + 1:06d}.sqlite"
    assert all(int(n[8:14]) > stats["dropped_segments"] for n in names if n.startswith("segment-"))  # no orphans
    warnings = [r.getMessage() for r in caplog.records if "deleted the oldest segment" in r.getMessage()]
    assert len(warnings) == stats["dropped_segments"] and "idempotency window" in warnings[0]

    df = read_log(tmp_path)
    assert len(df) == stats["events"] and df["event_id"].iloc[-1] == "e0_0"
    kept = df["event_id"].tolist()[:-1]
    assert 0 < len(kept) < len(ids) and kept == ids[-len(kept):]  # the newest survive, in order
    assert stats["last_event_at"] == df["received_at"].iloc[-1]


def test_threads_sharing_one_log_store_each_id_once(tmp_path):
    results: list[list[bool]] = [[] for _ in range(4)]
    with EventLog(tmp_path, durability="normal") as log:
        def work(t: int) -> None:
            for i in range(50):  # every thread sends the same 50 ids
                results[t] += log.append_events([event(i)])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [sum(r[i] for r in results) for i in range(50)] == [1] * 50
    assert len(read_log(tmp_path)) == 50


def test_leftovers_of_a_crash_mid_creation_do_not_block_the_log(tmp_path):
    (tmp_path / "segment-000001.sqlite.tmp").write_bytes(b"half-written")
    (tmp_path / "segment-000001.sqlite.tmp-journal").write_bytes(b"junk")
    with EventLog(tmp_path) as log:
        assert log.append_events([event(1)]) == [True]
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []
    assert read_log(tmp_path)["event_id"].tolist() == ["e1"]


def test_an_old_segment_removed_by_hand_is_forgotten_not_recreated(tmp_path, caplog):
    with EventLog(tmp_path, max_segment_bytes=TINY) as log:
        for b in range(12):
            log.append_events([event(f"{b}_{j}") for j in range(50)])
    with EventLog(tmp_path, max_segment_bytes=TINY) as log:
        assert log.append_events([event("11_49")]) == [False]  # found in the newest: older ones not opened
        (tmp_path / "segment-000001.sqlite").unlink()
        with caplog.at_level(logging.WARNING, logger="events.log"):
            assert log.append_events([event("99_0")]) == [True]
        assert "segment-000001.sqlite disappeared" in caplog.text
    assert not (tmp_path / "segment-000001.sqlite").exists()
    assert read_log(tmp_path)["event_id"].iloc[-1] == "e99_0"


def test_segments_stay_near_their_bound_with_two_writers(tmp_path):
    """Each writer decides to roll over from the sizes it saw at its own last append (no page-count
    query per append): a sealed segment holds at most one batch per writer beyond the bound."""
    def sealed_rows(directory):
        rows = []
        for n in list_segments(directory)[:-1]:
            with closing(sqlite3.connect(segment_path(directory, n))) as conn:
                rows.append(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return rows

    with EventLog(tmp_path / "one", max_segment_bytes=TINY) as log:  # one row per append: the bound in rows
        for k in range(600):
            log.append_events([event(k)])
    bound = sealed_rows(tmp_path / "one")[0]
    batch = 20
    with EventLog(tmp_path / "two", max_segment_bytes=TINY) as a, \
            EventLog(tmp_path / "two", max_segment_bytes=TINY) as b:
        for k in range(40):
            (a if k % 2 else b).append_events([event(f"{k}_{j}") for j in range(batch)])
    rows = sealed_rows(tmp_path / "two")
    assert len(rows) >= 2 and all(bound - batch <= r <= bound + 2 * batch for r in rows), (bound, rows)
    assert read_log(tmp_path / "two")["event_id"].is_unique and len(read_log(tmp_path / "two")) == 40 * batch


def test_a_segment_nobody_announced_is_taken_not_overwritten(tmp_path):
    with EventLog(tmp_path, max_segment_bytes=TINY) as b, EventLog(tmp_path, max_segment_bytes=TINY) as a:
        b.append_events([event(0)])  # b knows segment 1 at this generation
        generation = (tmp_path / "log.lock").read_bytes()
        for k in range(10):
            a.append_events([event(f"{k}_{j}") for j in range(50)])  # a fills segment 1, starts 2, 3
        assert log_stats(tmp_path)["segments"] >= 3
        (tmp_path / "log.lock").write_bytes(generation)  # as if a's segments had never been announced
        assert b.append_events([event("99_0"), event("9_49")]) == [True, False]  # b rescans, a's rows stay
    df = read_log(tmp_path)
    assert len(df) == 502 and df["event_id"].is_unique


# -- several processes ------------------------------------------------------------------------


WRITER = """
import json, sys
from events.log import EventLog
directory, name = sys.argv[1], sys.argv[2]
log = EventLog(directory, max_segment_bytes=32 * 1024, durability="normal")
print("ready", flush=True)
sys.stdin.readline()
results = {}
for i in range(500):
    rows = [{"event_id": f"{name}-{i}", "user_id": "u", "item_id": "i", "timestamp": float(i), "type": "view"}]
    if i % 10 == 0:  # both writers also send the same 50 ids, interleaved
        rows.append({"event_id": f"shared-{i // 10}", "user_id": "u", "item_id": "i", "timestamp": 0.0, "type": "view"})
    for row, new in zip(rows, log.append_events(rows)):
        results[row["event_id"]] = new
log.close()
print(json.dumps(results), flush=True)
"""


def _read_lines(proc: subprocess.Popen, n: int, timeout_s: float = 60.0) -> list[str]:
    """At least n lines of a child's stdout (binary pipe), failing on early exit or timeout."""
    fd, buf, lines = proc.stdout.fileno(), b"", []
    deadline = time.monotonic() + timeout_s
    while len(lines) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"child wrote {len(lines)} of {n} lines in {timeout_s} s"
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"child exited early ({proc.wait()}): {proc.stderr.read().decode()[-2000:]}")
        *done, buf = (buf + chunk).split(b"\n")
        lines += [line.decode() for line in done]
    return lines


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _reap(proc: subprocess.Popen) -> None:
    """Kill a child still running (by its pid) and close its pipes."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()


def test_two_processes_append_concurrently_without_losing_or_duplicating(tmp_path):
    procs = [_child(WRITER, str(tmp_path), name) for name in ("a", "b")]
    try:
        for p in procs:
            assert _read_lines(p, 1) == ["ready"]
        for p in procs:  # start both at once
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for p in procs:
            _reap(p)

    df = read_log(tmp_path)
    assert len(df) == 1000 + 50 and df["event_id"].is_unique
    assert set(df["event_id"]) == {f"{n}-{i}" for n in "ab" for i in range(500)} | {f"shared-{k}" for k in range(50)}
    for name, res in zip("ab", results):
        assert all(res[f"{name}-{i}"] for i in range(500))
    # every shared id was stored by exactly one of the two writers
    assert all(results[0][f"shared-{k}"] + results[1][f"shared-{k}"] == 1 for k in range(50))
    assert log_stats(tmp_path)["segments"] >= 3  # they rotated segments between them


KILLED_WRITER = """
import sys
from events.log import EventLog
log = EventLog(sys.argv[1])
kind, i = sys.argv[2], 0
while True:
    if kind == "events":
        key = f"e{i}"
        log.append_events([{"event_id": key, "user_id": "u", "item_id": "i", "timestamp": float(i), "type": "view"}])
    else:
        key = f"r{i}"
        log.append_impressions([{"request_id": key, "user_id": "u", "items": ["a", "b"], "timestamp": float(i)}])
    print(key, flush=True)  # the acknowledgement: only after append returned
    i += 1
"""


@pytest.mark.parametrize("kind", ["events", "impressions"])
def test_every_acknowledged_append_survives_sigkill(tmp_path, kind):
    proc = _child(KILLED_WRITER, str(tmp_path), kind)
    try:
        acked = _read_lines(proc, 200)
    finally:
        _reap(proc)  # SIGKILL while it appends
    assert proc.returncode == -signal.SIGKILL

    key = {"events": "event_id", "impressions": "request_id"}[kind]
    stored = read_log(tmp_path, kind)[key]
    assert stored.is_unique and set(acked) <= set(stored)
    with EventLog(tmp_path) as log:  # the killed writer's lock and WAL are recovered
        append = log.append_events if kind == "events" else log.append_impressions
        row = event(10**6) if kind == "events" else impression(10**6)
        assert append([row]) == [True]
        if kind == "events":
            assert append([event(0, event_id=acked[0])]) == [False]
        else:
            assert append([impression(0, request_id=acked[0])]) == [False]
    assert len(read_log(tmp_path, kind)) == len(stored) + 1


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("row, message", [
    ({k: v for k, v in event(1).items() if k != "item_id"}, r"event row 1: required field 'item_id' is missing"),
    (event(1, user_id=None), r"event row 1: required field 'user_id' is missing"),
    (event(1, timestamp=math.nan), r"event row 1: field 'timestamp' must be a finite number of Unix seconds, got nan"),
    (event(1, timestamp=math.inf), r"event row 1: field 'timestamp' must be a finite number of Unix seconds, got inf"),
    (event(1, timestamp="2024-01-01"), r"event row 1: field 'timestamp' must be a finite number of Unix seconds"),
    (event(1, timestamp=True), r"event row 1: field 'timestamp' must be a finite number"),
    (event(1, event_id=""), r"event row 1: field 'event_id' must be a non-empty string, got ''"),
    (event(1, item_id=1.5), r"event row 1: field 'item_id' must be a non-empty string, got 1.5"),
    (event(1, type=3), r"event row 1: field 'type' must be a non-empty string, got 3"),
    (event(1, weight=math.inf), r"event row 1: field 'weight' must be a finite number, got inf"),
    (event(1, wieght=1.0), r"event row 1: unknown field\(s\) 'wieght'; known: event_id"),
    ("e1", r"event row 1: expected a mapping of column -> value, got str"),
])
def test_bad_event_row_raises_naming_row_and_field_and_stores_nothing(tmp_path, row, message):
    with EventLog(tmp_path) as log:
        with pytest.raises(ValueError, match=message):
            log.append_events([event(0), row])
        assert log.append_events([event(0)]) == [True]  # the good row of the failed batch was not stored


@pytest.mark.parametrize("row, message", [
    ({k: v for k, v in impression(1).items() if k != "items"}, r"impression row 0: required field 'items' is missing"),
    (impression(1, timestamp=math.nan), r"impression row 0: field 'timestamp' must be a finite number of Unix seconds"),
    (impression(1, items="i1"), r"impression row 0: field 'items' must be a list, got 'i1'"),
    (impression(1, items=["a", None]), r"impression row 0: field 'items' element 1 must be a non-empty string"),
    (impression(1, scores=[1.0, math.nan, 0.0]), r"impression row 0: field 'scores' element 1 must be a finite number"),
    (impression(1, scores=[1.0]), r"impression row 0: field 'scores' has 1 values for 3 items"),
    (impression(1, reasons=["a", "b"]), r"impression row 0: field 'reasons' has 2 values for 3 items"),
    (impression(1, reasons=["a", "b", 3]), r"impression row 0: field 'reasons' element 2 must be a string"),
    (impression(1, route=5), r"impression row 0: field 'route' must be a string, got 5"),
])
def test_bad_impression_row_raises_naming_row_and_field(tmp_path, row, message):
    with EventLog(tmp_path) as log:
        with pytest.raises(ValueError, match=message):
            log.append_impressions([row])
        assert log.stats()["impressions"] == 0


def test_bad_arguments_raise_value_errors_naming_the_fix(tmp_path):
    with EventLog(tmp_path / "log") as log:
        with pytest.raises(ValueError, match=r"event rows must be a list of dicts or a DataFrame, got dict"):
            log.append_events(event(1))
        with pytest.raises(ValueError, match=r"event rows: unknown column\(s\) 'when'; known: event_id"):
            log.append_events(pd.DataFrame([event(1)]).rename(columns={"timestamp": "when"}))
    with pytest.raises(ValueError, match=r"EventLog\(.*\) is closed"):
        log.append_events([event(1)])
    with pytest.raises(ValueError, match=r"unknown durability 'paranoid'; known: full, normal"):
        EventLog(tmp_path, durability="paranoid")
    with pytest.raises(ValueError, match=r"max_segment_bytes=1000: must be an int >= 32768"):
        EventLog(tmp_path, max_segment_bytes=1000)
    with pytest.raises(ValueError, match=r"max_total_bytes=40000: must be an int >= max_segment_bytes \(65536\)"):
        EventLog(tmp_path, max_segment_bytes=65536, max_total_bytes=40000)
    with pytest.raises(ValueError, match=r"unknown log kind 'clicks'; known: events, impressions"):
        read_log(tmp_path / "log", "clicks")
    with pytest.raises(ValueError, match=r"explode=True applies to impressions only"):
        read_log(tmp_path / "log", "events", explode=True)
    with pytest.raises(ValueError, match=r"since must be a finite number, got nan"):
        read_log(tmp_path / "log", since=math.nan)
    with pytest.raises(ValueError, match=r"since=5.0 is after until=1.0"):
        read_log(tmp_path / "log", since=5, until=1)


# -- recsys-log ------------------------------------------------------------------------------


@pytest.fixture
def filled_log(tmp_path):
    with EventLog(tmp_path / "log") as log:
        log.append_events([event(i) for i in range(5)])
        log.append_impressions([impression(i) for i in range(3)])
    return tmp_path / "log"


def test_cli_times_are_unix_seconds_iso_dates_or_a_year():
    from events.cli import _time

    assert _time("1700000001") == 1_700_000_001 and _time("1700000001.5") == 1_700_000_001.5
    assert _time("2030") == _time("2030-01-01") == pd.Timestamp("2030-01-01", tz="UTC").timestamp()
    assert _time("2024-03-01T12:00:00+02:00") == pd.Timestamp("2024-03-01T10:00:00", tz="UTC").timestamp()


def test_cli_reads_to_parquet_and_csv_and_prints(filled_log, tmp_path, capsys):
    out = tmp_path / "events.parquet"
    assert cli_main(["read", "--dir", str(filled_log), "--kind", "events", "--since", "1700000001",
                     "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), read_log(filled_log, since=1_700_000_001), check_dtype=False)
    assert len(pd.read_parquet(out)) == 4

    out = tmp_path / "positions.parquet"
    assert cli_main(["read", "--dir", str(filled_log), "--kind", "impressions", "--explode", "--out", str(out)]) == 0
    assert pd.read_parquet(out)["position"].tolist() == [0, 1, 2] * 3
    upper = tmp_path / "IMPRESSIONS.PARQUET"  # the extension in any case, as recsys-batch takes it
    assert cli_main(["read", "--dir", str(filled_log), "--kind", "impressions", "--out", str(upper)]) == 0
    assert pd.read_parquet(upper)["request_id"].tolist() == ["r0", "r1", "r2"]

    out = tmp_path / "impressions.csv"
    assert cli_main(["read", "--dir", str(filled_log), "--kind", "impressions", "--out", str(out)]) == 0
    csv = pd.read_csv(out)
    assert csv["request_id"].tolist() == ["r0", "r1", "r2"]
    assert json.loads(csv["items"].iloc[1]) == ["i1_0", "i1_1", "i1_2"]

    capsys.readouterr()
    assert cli_main(["read", "--dir", str(filled_log), "--kind", "events", "--head", "2",
                     "--until", "2023-11-14T22:13:22Z"]) == 0  # = 1700000002
    printed = capsys.readouterr().out
    assert "e0" in printed and "e1" in printed and "e2" not in printed and printed.endswith("2 rows\n")


def test_cli_stats_prints_json(filled_log, capsys):
    assert cli_main(["stats", "--dir", str(filled_log)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["events"] == 5 and stats["impressions"] == 3 and stats["segments"] == 1
    assert stats["dropped_segments"] == 0 and stats["bytes"] > 0 and stats["last_event_at"] > 0


def test_cli_takes_the_served_log_folder(tmp_path, capsys):
    """A server's --event-log folder holds events/, impressions/ and catalog/: reading it once printed
    0 rows (and all-zero stats) with exit 0."""
    with EventLog(tmp_path / "events") as log:
        log.append_events([event(1), event(2)])
    with EventLog(tmp_path / "impressions") as log:
        log.append_impressions([impression(1)])
    assert cli_main(["read", "--dir", str(tmp_path), "--kind", "events"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("2 rows\n") and f"reading {tmp_path / 'events'}" in err
    assert cli_main(["read", "--dir", str(tmp_path), "--kind", "catalog"]) == 0  # none written: the folder as it is
    assert capsys.readouterr().out == "0 rows\n"
    assert cli_main(["stats", "--dir", str(tmp_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == {"events", "impressions"} and stats["events"]["events"] == 2
    assert stats["impressions"]["impressions"] == 1
    # the events folder asked for impressions (the old docs' example) reads the impressions beside it
    assert cli_main(["read", "--dir", str(tmp_path / "events"), "--kind", "impressions"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("1 rows\n") and f"reading the impressions next to it, {tmp_path / 'impressions'}" in err
    assert cli_main(["read", "--dir", str(tmp_path / "impressions"), "--kind", "catalog"]) == 0  # no catalog/: as is
    assert capsys.readouterr().out == "0 rows\n"


@pytest.mark.parametrize("argv, message", [
    (["stats", "--dir", "{missing}"], "recsys-log: error: event log directory {missing} does not exist"),
    (["read", "--dir", "{missing}", "--kind", "events"],
     "recsys-log: error: event log directory {missing} does not exist"),
    (["read", "--dir", "{log}", "--kind", "events", "--out", "{log}/x.json"],
     "unknown file type '.json'; use one of .parquet, .csv"),
    (["read", "--dir", "{log}", "--kind", "events", "--out", "{missing}/x.csv"], "folder {missing} does not exist"),
    (["read", "--dir", "{log}", "--kind", "events", "--explode"], "--explode applies to --kind impressions only"),
    (["read", "--dir", "{log}", "--kind", "events", "--since", "yesterday"],
     "argument --since: expected Unix seconds or an ISO date, got 'yesterday'"),
    (["read", "--dir", "{log}", "--kind", "events", "--since", "1796209041000"],  # was "0 rows", silently
     "argument --since: '1796209041000' is after the year 9999: milliseconds? Divide by 1000"),
    (["read", "--dir", "{log}", "--kind", "clicks"], "argument --kind: invalid choice: 'clicks'"),
    (["read", "--dir", "{log}", "--kind", "events", "--head", "-1"], "argument --head: expected a count >= 0"),
    ([], "the following arguments are required"),
    (["stats", "--dir", "{notes}"], "{notes} holds no event log (no segment-*.sqlite, no log.lock)"),
    (["read", "--dir", "{notes}", "--kind", "events"], "{notes} holds no event log"),
])
def test_cli_bad_input_exits_2_with_one_line(filled_log, tmp_path, capsys, argv, message):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a log")  # was read as an empty log: zeros, "0 rows"
    fill = {"missing": str(tmp_path / "missing"), "log": str(filled_log), "notes": str(tmp_path / "notes")}
    argv = [a.format(**fill) for a in argv]
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message.format(**fill) in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_damaged_segment_is_named_by_the_reader_and_recsys_log(tmp_path, capsys):
    from events.cli import main as log_main
    from events.reader import read_log

    with EventLog(tmp_path / "log", durability="normal") as log:
        log.append_events([{"event_id": "e1", "user_id": "u", "item_id": "i", "timestamp": 1.7e9, "type": "click"}])
    segment = sorted((tmp_path / "log").glob("segment-*.sqlite"))[0]
    segment.write_bytes(b"not sqlite at all " * 2000)
    with pytest.raises(sqlite3.DatabaseError, match=rf"{segment.name}: .*this segment is damaged: move it out"):
        read_log(tmp_path / "log", "events")
    assert log_main(["read", "--dir", str(tmp_path / "log"), "--kind", "events"]) == 2
    assert segment.name in capsys.readouterr().err
