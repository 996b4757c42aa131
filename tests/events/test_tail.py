"""events/tail.py: a reader that follows the log sees every appended event once, across segments."""

import os
import sqlite3
import time

import pytest

from events.log import EventLog
from events.tail import EventTail
from features.feedback import LogCursor, read_log_events
from features.schema import DataError

TINY = 32 * 1024  # the smallest segment: ~250 events


def events(lo: int, hi: int) -> list[dict]:
    return [{"event_id": f"e{i}", "user_id": f"u{i % 7}", "item_id": f"i{i}", "timestamp": 1_700_000_000.0 + i,
             "type": "click"} for i in range(lo, hi)]


def test_each_event_is_read_once_in_order_across_rotations(tmp_path):
    tail = EventTail(tmp_path / "log")
    assert tail.read_new().empty  # no log yet
    with EventLog(tmp_path / "log", max_segment_bytes=TINY, durability="normal") as log:
        seen = []
        for lo in range(0, 1200, 100):  # several segments
            log.append_events(events(lo, lo + 100))
            log.append_events(events(lo, lo + 3))  # resent duplicates: not stored, not read again
            seen += tail.read_new()["event_id"].tolist()
            assert tail.read_new().empty
        assert log.stats()["segments"] > 2
    assert seen == [f"e{i}" for i in range(1200)]
    tail.close()


def test_a_late_reader_skips_what_was_stored_before_its_snapshot(tmp_path):
    with EventLog(tmp_path, durability="normal") as log:
        log.append_events(events(0, 5))
        time.sleep(0.05)
        snapshot = time.time()
        time.sleep(0.05)
        log.append_events(events(5, 8))
    new = EventTail(tmp_path, received_after=snapshot).read_new()
    assert new["event_id"].tolist() == ["e5", "e6", "e7"]
    assert str(new["timestamp"].dtype) == "float64" and new["user_id"].tolist() == ["u5", "u6", "u0"]


def test_a_bounded_read_takes_a_burst_in_parts_across_segments_in_order(tmp_path):
    """A served instance reads at most one answer's worth of events (``limit``): a 100,000-event burst
    used to be read whole before the next answer (~1 s). The cursor stops after the last row returned,
    also inside a segment and with rows the snapshot filter skips; ``more`` says rows may remain."""
    with EventLog(tmp_path / "log", max_segment_bytes=TINY, durability="normal") as log:
        log.append_events(events(0, 3))
        time.sleep(0.05)
        snapshot = time.time()
        time.sleep(0.05)
        for lo in range(3, 700, 100):  # several segments
            log.append_events(events(lo, min(lo + 100, 700)))
        assert log.stats()["segments"] > 2
    tail = EventTail(tmp_path / "log", received_after=snapshot)
    parts = []
    while True:
        got = tail.read_new_columns(limit=64)
        assert len(got["event_id"]) <= 64
        parts.append(list(got["event_id"]))
        if not tail.more:
            break
    assert [e for p in parts for e in p] == [f"e{i}" for i in range(3, 700)]
    assert [len(p) for p in parts] == [64] * 10 + [57]  # 697 rows
    assert tail.read_new(limit=5).empty and not tail.more
    with EventLog(tmp_path / "log", max_segment_bytes=TINY, durability="normal") as log:
        log.append_events(events(700, 703))
    assert tail.read_new(limit=2)["event_id"].tolist() == ["e700", "e701"] and tail.more
    assert tail.read_new()["event_id"].tolist() == ["e702"] and not tail.more  # no limit: the rest
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="limit"):
            tail.read_new_columns(limit=bad)
    tail.close()


class _CommitsBetweenStatements:
    """A segment connection during whose first statement the writer commits one more event."""

    def __init__(self, conn, commit):
        self.conn, self.commit, self.done = conn, commit, False

    def execute(self, sql, *args):
        result = self.conn.execute(sql, *args)
        if not self.done:
            self.done = True
            self.commit()  # after the tail's first statement, before its second
        return result

    def close(self):
        self.conn.close()


def test_an_event_committed_while_the_tail_reads_a_new_segment_is_not_skipped(tmp_path):
    """The race of a rotation: the tail looks at a segment that is new and still empty, and the
    writer commits its first row between the tail's statements. It must be read, once."""
    import fcntl

    with EventLog(tmp_path, durability="normal") as log:
        log.append_events(events(0, 1))
        tail = EventTail(tmp_path)
        assert tail.read_new()["event_id"].tolist() == ["e0"]
        fcntl.flock(log._lock_fd, fcntl.LOCK_EX)  # the writer's rotation: segment 2 in place, still empty
        log._refresh()
        log._create_segment(2)
        fcntl.flock(log._lock_fd, fcntl.LOCK_UN)
        opened = tail._open
        tail._open = lambda n: (_CommitsBetweenStatements(opened(n), lambda: log.append_events(events(1, 2)))
                                if n == 2 else opened(n))
        first = tail.read_new()["event_id"].tolist()
        tail._open = opened
        second = tail.read_new()["event_id"].tolist()
    assert first + second == ["e1"]


def test_segment_listing_lists_again_only_when_the_directory_changed(tmp_path, monkeypatch):
    import events.segments as segments

    calls = []
    real = segments.list_segments
    monkeypatch.setattr(segments, "list_segments", lambda d: calls.append(d) or real(d))
    listing = segments.SegmentListing(tmp_path / "log")
    assert listing() == [] and calls == []  # no directory yet: nothing, no scan
    with EventLog(tmp_path / "log") as log:
        log.append_events([{"event_id": "e1", "user_id": "u", "item_id": "i", "timestamp": 1e9, "type": "click"}])
    assert listing() == [1] and len(calls) == 1
    assert listing() == [1] and len(calls) == 2  # changed within QUIET_S: listed every time
    old = time.time_ns() - 10**10  # the directory has been quiet for 10 s
    os.utime(tmp_path / "log", ns=(old, old))
    assert listing() == [1] and len(calls) == 3  # its mtime moved: listed
    assert listing() == [1] and listing() == [1] and len(calls) == 3  # quiet and unchanged: the listing kept
    segments.segment_path(tmp_path / "log", 2).write_bytes(b"")  # a new segment: the mtime moves
    assert listing() == [1, 2] and len(calls) == 4


def test_a_segment_added_in_the_tick_of_a_listing_is_seen_later(tmp_path):
    """Coarse file times: a segment renamed into place in the same tick as a listing leaves the
    directory's mtime as it was; the listing taken in that tick must not be kept."""
    import events.segments as segments

    d = tmp_path / "log"
    d.mkdir()
    segments.segment_path(d, 1).write_bytes(b"")
    tick = time.time_ns() - 5 * 10**8  # the directory changed half a second ago (one coarse tick)
    os.utime(d, ns=(tick, tick))
    listing = segments.SegmentListing(d)
    assert listing() == [1]
    segments.segment_path(d, 2).write_bytes(b"")  # another process, in the same tick
    os.utime(d, ns=(tick, tick))
    time.sleep(0.6)  # the reader's next call comes after the quiet window
    assert listing() == [1, 2]


def test_a_log_has_one_identity_and_a_tail_tells_a_replacement_apart(tmp_path):
    """``log.id``: drawn by the first writer, kept by every later one; a tail keeps the identity it first
    saw, so a log replaced under it (removed and refilled past its position) raises CursorPastEnd instead
    of reading on from the old position."""
    import shutil

    from events.segments import ID_NAME, log_id
    from events.tail import CursorPastEnd

    rows = [{"event_id": f"e{i}", "user_id": "u", "item_id": "i", "timestamp": 50.0 + i, "type": "click"}
            for i in range(9)]
    with EventLog(tmp_path / "log", durability="normal") as a, EventLog(tmp_path / "log", durability="normal") as b:
        assert a.log_id == b.log_id == log_id(tmp_path / "log") and len(a.log_id) == 32
        a.append_events(rows[:2])
    tail = EventTail(tmp_path / "log")
    assert tail.read_new()["event_id"].tolist() == ["e0", "e1"] and tail.log_id == log_id(tmp_path / "log")
    shutil.rmtree(tmp_path / "log")
    with EventLog(tmp_path / "log", durability="normal") as c:
        c.append_events(rows[2:])  # 7 rows: past the tail's (1, 2)
        assert c.log_id != tail.log_id
    with pytest.raises(CursorPastEnd, match="identity"):
        tail.read_new()
    # a log from before identities (no log.id): positions only, as before; the next writer gives it one
    (tmp_path / "log" / ID_NAME).unlink()
    assert EventTail(tmp_path / "log", after=(1, 5), log_id="whatever").read_new()["event_id"].tolist() == ["e7", "e8"]
    with EventLog(tmp_path / "log", durability="normal") as d:
        assert d.log_id == log_id(tmp_path / "log") is not None


def test_an_empty_identity_is_repaired_and_the_catalog_vocabulary_survives_a_replaced_log(tmp_path):
    """An empty ``log.id`` (a writer killed between creating and writing it) is replaced by the next
    writer; the events / catalog models' vocabulary (CatalogItems) reads a catalog log replaced under it
    whole again instead of failing every request."""
    import shutil

    from events.catalog import CatalogItems
    from events.segments import ID_NAME, log_id
    from features.vocab import IdVocab

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ID_NAME).write_text("")
    with EventLog(tmp_path / "empty", durability="normal") as log:
        assert log.log_id is not None and log.log_id == log_id(tmp_path / "empty")

    def upsert(i):
        return {"record_id": f"r{i}", "op": "upsert_item", "entity_id": f"new{i}", "attributes": {}, "timestamp": 1.0}

    with EventLog(tmp_path / "catalog", durability="normal") as log:
        log.append_catalog([upsert(0)])
    items = CatalogItems(IdVocab(["a"]), tmp_path / "catalog")
    assert items.follow().lookup(["new0"])[0] >= 0
    shutil.rmtree(tmp_path / "catalog")
    with EventLog(tmp_path / "catalog", durability="normal") as log:
        log.append_catalog([upsert(i) for i in range(1, 5)])
    assert (items.follow().lookup([f"new{i}" for i in range(5)]) >= 0).all()
    items.close()


def test_segments_the_log_dropped_before_a_reader_came_back_are_counted_once(tmp_path):
    """The log's size bound drops its oldest segments; a cursor in one of them resumes at the oldest live
    one (nothing else to read), and the dropped segments after it are counted (a refresh says so)."""
    with EventLog(tmp_path / "log", max_segment_bytes=TINY, max_total_bytes=3 * TINY, durability="normal") as log:
        log.append_events(events(0, 100))
        first = EventTail(tmp_path / "log")
        first.read_new()
        cursor = (first.segment, first.rowid)
        for lo in range(100, 3000, 100):  # many segments: the oldest are dropped
            log.append_events(events(lo, lo + 100))
        live = sorted(int(f.name[8:14]) for f in (tmp_path / "log").glob("segment-*.sqlite"))
    assert live[0] > cursor[0] + 1
    tail = EventTail(tmp_path / "log", after=cursor)
    got = tail.read_new()["event_id"].tolist()
    assert tail.skipped_segments == live[0] - cursor[0] - 1
    assert got[-1] == "e2999" and len(got) == len(set(got))
    assert tail.read_new().empty and tail.skipped_segments == live[0] - cursor[0] - 1  # counted once
    fresh = EventTail(tmp_path / "log")  # no cursor: the log as it is, nothing counted
    fresh.read_new()
    assert fresh.skipped_segments == 0
    # a limited read that stopped inside a segment the bound then drops: its unread rows are lost too,
    # and counted (a review found them uncounted: before limits a read always ended at the segment's end)
    with EventLog(tmp_path / "cut", max_segment_bytes=TINY, max_total_bytes=3 * TINY, durability="normal") as log:
        log.append_events(events(0, 100))
        cut = EventTail(tmp_path / "cut")
        assert len(cut.read_new(limit=10)) == 10 and cut.more and cut.segment == 1
        for lo in range(100, 3000, 100):
            log.append_events(events(lo, lo + 100))
        live = sorted(int(f.name[8:14]) for f in (tmp_path / "cut").glob("segment-*.sqlite"))
    cut.read_new()
    assert cut.skipped_segments == live[0] - 1  # segment 1 (half read) and every one up to the oldest live
    report = {}  # what a refresh reads and prints (log_skipped_segments)
    frame, _ = read_log_events(tmp_path / "log", LogCursor(str(tmp_path / "log"), *cursor), report=report)
    assert report == {"skipped_segments": live[0] - cursor[0] - 1} and frame["event_id"].tolist() == got


def test_a_damaged_segment_is_an_error_for_a_verifying_reader_not_an_empty_one(tmp_path):
    with EventLog(tmp_path / "log", max_segment_bytes=TINY, durability="normal") as log:
        for lo in range(0, 1000, 100):
            log.append_events(events(lo, lo + 100))
    segments = sorted((tmp_path / "log").glob("segment-*.sqlite"))
    data = bytearray(segments[0].read_bytes())
    page = 4096
    for start in range(3 * page, len(data), page):  # every page from the fourth: headers and cells overwritten
        data[start + 8 : start + 200] = b"\xab" * 192
    segments[0].write_bytes(bytes(data))
    with pytest.raises(sqlite3.DatabaseError, match=r"segment \d+ is damaged"):
        EventTail(tmp_path / "log", verify=True).read_new()
    with pytest.raises(DataError, match="a segment could not be read"):  # what a refresh or retrain says
        read_log_events(tmp_path / "log")


def test_segments_without_rows_of_the_followed_table_are_no_gap(tmp_path):
    """One EventLog folder holds events and impressions: segments full of impressions lie between two
    events (a reviewer found them counted as dropped)."""
    def imp(i):
        return {"request_id": f"r{i}", "user_id": "u", "items": ["a" * 50] * 200, "scores": [], "reasons": [],
                "timestamp": 1.0}

    with EventLog(tmp_path / "log", max_segment_bytes=TINY, max_total_bytes=10**9, durability="normal") as log:
        log.append_events(events(0, 1))
        tail = EventTail(tmp_path / "log")
        tail.read_new()
        for j in range(30):
            log.append_impressions([imp(j)])
        log.append_events(events(1, 2))
        assert len(list((tmp_path / "log").glob("segment-*.sqlite"))) > 3
        assert tail.read_new()["event_id"].tolist() == ["e1"] and tail.skipped_segments == 0
        catalog = EventTail(tmp_path / "log", kind="catalog")
        catalog.read_new()
        assert catalog.skipped_segments == 0
