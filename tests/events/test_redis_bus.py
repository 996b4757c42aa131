"""events/redis_bus.py against a real redis-server: publish / tail round trip, idempotency across
publishers, the snapshot cut, and Redis killed and restarted under both."""

import math
import time

import numpy as np
import pandas as pd
import pytest

from events.log import EventLog, read_log
from events.redis_bus import RedisPublisher, RedisTail, check_url, redact
from events.schema import EVENT_COLUMNS, EVENT_DTYPES
from events.tail import EventTail
from serving.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def events(lo: int, hi: int, prefix: str = "e") -> list[dict]:
    return [{"event_id": f"{prefix}{i}", "user_id": f"u{i % 7}", "item_id": f"i{i}", "timestamp": 1_700_000_000.25 + i,
             "type": "click", **({"weight": 0.5 + i} if i % 2 else {})} for i in range(lo, hi)]


def drain(tail: RedisTail) -> pd.DataFrame:
    frames = [tail.read_new()]
    while tail.more:
        frames.append(tail.read_new())
    return pd.concat(frames, ignore_index=True)


def test_published_events_come_back_with_the_local_tails_columns_and_values(tmp_path, redis_server):
    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 25))
        publisher = RedisPublisher(redis_server.url, tmp_path / "log", batch=10)
        tail = RedisTail(redis_server.url, count=7, max_reads=2)
        assert publisher.backlog == 25 and publisher.flush() == 25 and publisher.up is True
        assert publisher.backlog == 0 and publisher.published == 25
        got = drain(tail)
        want = EventTail(tmp_path / "log").read_new()
        assert list(got.columns) == list(EVENT_COLUMNS)
        assert {c: str(t) for c, t in got.dtypes.items()} == {c: str(t) for c, t in want.dtypes.items()}
        pd.testing.assert_frame_equal(got, want)  # timestamps, weights (NaN when absent), received_at: exact
        assert math.isnan(got["weight"][0]) and got["weight"][1] == 1.5
        assert tail.read_new().empty and not tail.more
        local.append_events(events(25, 27))
        assert publisher.flush() == 2 and drain(tail)["event_id"].tolist() == ["e25", "e26"]
        publisher.close()
        tail.close()
    assert {c for c in EVENT_DTYPES} == set(EVENT_COLUMNS)


def test_a_read_is_bounded_and_the_rest_comes_next(tmp_path, redis_server):
    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 50))
    RedisPublisher(redis_server.url, tmp_path / "log").flush()
    tail = RedisTail(redis_server.url, count=10, max_reads=2)
    first = tail.read_new()
    assert len(first) == 20 and tail.more
    assert drain(tail)["event_id"].tolist() == [f"e{i}" for i in range(20, 50)]
    limited = RedisTail(redis_server.url, count=10, max_reads=3)  # a served instance's room: below the bound
    assert limited.read_new(limit=13)["event_id"].tolist() == [f"e{i}" for i in range(13)] and limited.more
    assert limited.read_new(limit=100)["event_id"].tolist() == [f"e{i}" for i in range(13, 43)] and limited.more
    assert drain(limited)["event_id"].tolist() == [f"e{i}" for i in range(43, 50)]
    with pytest.raises(ValueError, match="limit"):
        limited.read_new(limit=0)
    # a limited read that fills its (smaller) ask is not "caught up": nothing counted as trimmed (a review
    # found 45 of 50 counted missed, and warned, when the first read asked for 5 with the check due)
    checked = RedisTail(redis_server.url, count=10, max_reads=3, check_s=0.0)
    assert len(checked.read_new(limit=5)) == 5 and checked.more
    assert len(drain(checked)) == 45 and checked.missed == 0


def test_two_publishers_with_the_same_ids_put_each_event_in_the_stream_once(tmp_path, redis_server):
    """Two hosts took overlapping events (a client retried on the other host): one copy each in the stream."""
    with EventLog(tmp_path / "a", durability="normal") as a, EventLog(tmp_path / "b", durability="normal") as b:
        a.append_events(events(0, 30))
        b.append_events(events(20, 40) + events(0, 5, prefix="b"))
        pa, pb = RedisPublisher(redis_server.url, tmp_path / "a"), RedisPublisher(redis_server.url, tmp_path / "b")
        assert pa.flush() == 30 and pb.flush() == 25
        assert (pa.published, pb.published, pb.resent) == (30, 15, 10)
        pa.close(), pb.close()
        # a restarted publisher without its cursor file resends everything: still one copy
        for f in (tmp_path / "a").glob("redis-published-*.json"):
            f.unlink()
        again = RedisPublisher(redis_server.url, tmp_path / "a")
        assert again.flush() == 30 and again.published == 0 and again.resent == 30
    ids = drain(RedisTail(redis_server.url))["event_id"].tolist()
    assert sorted(ids) == sorted({f"e{i}" for i in range(40)} | {f"b{i}" for i in range(5)})
    assert len(ids) == len(set(ids)) == 45


def test_a_publisher_resumes_from_its_cursor_file(tmp_path, redis_server):
    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 10))
        first = RedisPublisher(redis_server.url, tmp_path / "log")
        first.flush()
        first.close()
        local.append_events(events(10, 13))
        second = RedisPublisher(redis_server.url, tmp_path / "log")
        assert second.backlog == 3 and second.flush() == 3 and second.resent == 0


def test_a_tail_started_at_the_snapshot_time_skips_older_events(tmp_path, redis_server):
    with EventLog(tmp_path / "log", durability="normal") as local:
        publisher = RedisPublisher(redis_server.url, tmp_path / "log")
        local.append_events(events(0, 5))
        publisher.flush()
        time.sleep(0.05)
        snapshot = time.time()
        time.sleep(0.05)
        local.append_events(events(5, 8))
        publisher.flush()
    new = RedisTail(redis_server.url, received_after=snapshot).read_new()
    assert new["event_id"].tolist() == ["e5", "e6", "e7"]
    assert (new["received_at"] > snapshot).all()


def test_bad_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"Redis URL 'localhost:6379'.*redis://127.0.0.1:6379/0"):
        check_url("localhost:6379")
    assert redact("redis://:s3cret@10.0.0.5:6379/0") == "redis://***@10.0.0.5:6379/0"  # never logged
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="maxlen"):
        RedisPublisher("redis://127.0.0.1:1/0", tmp_path, maxlen=-1)
    with pytest.raises(ValueError, match="count"):
        RedisTail("redis://127.0.0.1:1/0", count=0)


def test_redis_down_then_back_the_backlog_goes_out_once_and_tails_catch_up(tmp_path):
    """Killed (SIGKILL) under a publisher and two tails: nothing raises, the publisher keeps the backlog
    and says so once, the tails return nothing; restarted on the same directory: the backlog is published
    once, both tails catch up from their last id, and nothing is read twice."""
    notices: list[tuple[str, bool]] = []
    server = RedisServer(tmp_path / "redis").start()
    try:
        with EventLog(tmp_path / "log", durability="normal") as local:
            publisher = RedisPublisher(server.url, tmp_path / "log", retry_s=0.2, timeout_s=0.2,
                                       on_change=lambda up, why: notices.append(("pub", up)))
            tails = [RedisTail(server.url, retry_s=0.2, timeout_s=0.2,
                               on_change=lambda up, why, n=n: notices.append((f"tail{n}", up))) for n in range(2)]
            local.append_events(events(0, 10))
            publisher.flush()
            seen = [drain(t)["event_id"].tolist() for t in tails]
            assert seen == [[f"e{i}" for i in range(10)]] * 2

            server.kill()
            for lo in range(10, 40, 10):  # acknowledged locally while Redis is down
                local.append_events(events(lo, lo + 10))
                start = time.perf_counter()
                assert publisher.flush() == 0
                assert all(t.read_new().empty for t in tails)
                assert time.perf_counter() - start < 0.5  # no timeout per call: at most one try per retry_s
            assert publisher.up is False and publisher.backlog == 30
            assert all(t.up is False for t in tails)
            assert notices.count(("pub", False)) == 1 and notices.count(("tail0", False)) == 1  # once per outage

            server.start()
            time.sleep(0.25)  # past retry_s
            assert publisher.flush() == 30 and publisher.backlog == 0 and publisher.up is True
            assert publisher.published == 40 and publisher.resent == 0
            publisher.flush()  # nothing again
            for n, t in enumerate(tails):
                seen[n] += drain(t)["event_id"].tolist()
                assert t.up is True
            assert seen == [[f"e{i}" for i in range(40)]] * 2  # each once, in order: no double apply
            assert ("pub", True) in notices and ("tail1", True) in notices
            publisher.close()
    finally:
        server.stop()
    assert len(read_log(tmp_path / "log", "events")) == 40


def test_the_background_thread_publishes_the_backlog_without_new_calls(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        with EventLog(tmp_path / "log", durability="normal") as local:
            publisher = RedisPublisher(server.url, tmp_path / "log", retry_s=0.1, timeout_s=0.2)
            local.append_events(events(0, 2))
            assert publisher.flush() == 2  # the request path reads the log first (its connection) ...
            publisher.start()  # ... then the thread reads it too
            server.kill()
            local.append_events(events(2, 7))
            deadline = time.monotonic() + 15
            while (publisher.up is not False or publisher.backlog != 5) and time.monotonic() < deadline:
                time.sleep(0.05)  # the thread's next round finds Redis gone and counts what waits
            assert publisher.up is False and publisher.backlog == 5
            server.start()
            deadline = time.monotonic() + 15
            while publisher.backlog and time.monotonic() < deadline:
                time.sleep(0.05)
            publisher.close()
        assert publisher.backlog == 0 and publisher.up is True
        assert drain(RedisTail(server.url))["event_id"].tolist() == [f"e{i}" for i in range(7)]
    finally:
        server.stop()


def test_the_stream_is_trimmed_near_maxlen(tmp_path, redis_server):
    import redis

    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 2000))
    RedisPublisher(redis_server.url, tmp_path / "log", maxlen=500).flush()
    length = redis.Redis.from_url(redis_server.url).xlen("recsys:{events}")
    assert 500 <= length < 1000  # approximate trim (whole radix-tree nodes of 100 entries)
    assert np.isfinite(length)


def test_nothing_listening_from_the_start_is_down_not_an_error(tmp_path):
    from serving.triton_server import free_ports

    url = f"redis://127.0.0.1:{free_ports(1)[0]}/0"
    notices = []
    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 3))
        publisher = RedisPublisher(url, tmp_path / "log", on_change=lambda up, why: notices.append(why))
        tail = RedisTail(url, on_change=lambda up, why: notices.append(why))
        start = time.perf_counter()
        for _ in range(20):
            assert publisher.flush() == 0 and tail.read_new().empty
        assert time.perf_counter() - start < 1.0
    assert publisher.up is False and tail.up is False and publisher.backlog == 3
    assert len(notices) == 2 and "3 events wait in the local log" in notices[0]


def test_a_tail_away_longer_than_the_stream_keeps_says_how_many_it_missed(tmp_path, redis_server, caplog):
    with EventLog(tmp_path / "log", durability="normal") as local:
        publisher = RedisPublisher(redis_server.url, tmp_path / "log", maxlen=100)
        local.append_events(events(0, 50))
        publisher.flush()
        tail = RedisTail(redis_server.url, check_s=0)
        assert len(drain(tail)) == 50 and tail.missed == 0  # caught up
        local.append_events(events(50, 1550))
        publisher.flush()  # 1,500 more while the tail does not read: the stream keeps ~100-200
        with caplog.at_level("WARNING", logger="events.redis_bus"):
            got = drain(tail)
    assert got["event_id"].iloc[-1] == "e1549" and tail.missed == 1500 - len(got) > 0
    assert len(got) <= 200  # what the stream kept
    assert f"{tail.missed} events of the Redis stream" in caplog.text and "REDIS_MAXLEN" in caplog.text
    caplog.clear()
    assert tail.read_new().empty and tail.missed == 1500 - len(got) and not caplog.text  # said once


def test_a_tail_that_keeps_up_misses_nothing_even_when_the_stream_turns_over(tmp_path, redis_server):
    """Between two checks far more events than the stream keeps pass, all read in time: nothing missed."""
    with EventLog(tmp_path / "log", durability="normal") as local:
        publisher = RedisPublisher(redis_server.url, tmp_path / "log", maxlen=100)
        tail = RedisTail(redis_server.url, check_s=0.3)
        read = []
        for r in range(30):
            local.append_events(events(r * 50, r * 50 + 50))
            publisher.flush()
            read += drain(tail)["event_id"].tolist()
            if r in (0, 29):
                time.sleep(0.35)  # the next read checks
        read += drain(tail)["event_id"].tolist()
    assert read == [f"e{i}" for i in range(1500)] and tail.missed == 0


def records(lo: int, hi: int) -> list[dict]:
    """Catalog records: new items with attributes (a float among them), a block, a user upsert."""
    out = []
    for i in range(lo, hi):
        if i % 3 == 0:
            out.append({"record_id": f"r{i}", "op": "upsert_item", "entity_id": f"new{i}",
                        "attributes": {"category": f"c{i % 2}", "price": 9.99 + i / 3}, "timestamp": 1_700_000_000.5 + i})
        elif i % 3 == 1:
            out.append({"record_id": f"r{i}", "op": "block", "entity_id": f"new{i - 1}", "attributes": {},
                        "timestamp": 1_700_000_000.5 + i})
        else:
            out.append({"record_id": f"r{i}", "op": "upsert_user", "entity_id": f"u{i}", "attributes": {"age": 30 + i},
                        "timestamp": 1_700_000_000.5 + i})
    return out


def test_catalog_records_come_back_from_their_own_stream_as_the_local_tail_reads_them(tmp_path, redis_server):
    """The catalog stream (kind="catalog"): the same frame as the local catalog tail (attributes as JSON
    text, floats exact), never trimmed by default, and separate from the events' stream."""
    import redis

    from events.catalog import fold_records
    from events.redis_bus import DEFAULT_CATALOG_MAXLEN, DEFAULT_CATALOG_STREAM
    from events.schema import CATALOG_COLUMNS

    with EventLog(tmp_path / "catalog", durability="normal") as local:
        local.append_catalog(records(0, 30))
        publisher = RedisPublisher(redis_server.url, tmp_path / "catalog", stream=DEFAULT_CATALOG_STREAM,
                                   maxlen=DEFAULT_CATALOG_MAXLEN, kind="catalog", batch=7)
        tail = RedisTail(redis_server.url, stream=DEFAULT_CATALOG_STREAM, kind="catalog", count=8, max_reads=2)
        assert publisher.backlog == 30 and publisher.flush() == 30 and publisher.backlog == 0
        got, want = drain(tail), EventTail(tmp_path / "catalog", kind="catalog").read_new()
        assert list(got.columns) == list(CATALOG_COLUMNS)
        pd.testing.assert_frame_equal(got, want)
        assert fold_records(got) == fold_records(want)  # what recommend applies: the same changes
        assert fold_records(got).items["new3"] == {"category": "c1", "price": 9.99 + 1.0}
        assert RedisTail(redis_server.url).read_new().empty  # the events' stream has none of them
        local.append_catalog(records(30, 32))
        assert publisher.flush() == 2 and drain(tail)["record_id"].tolist() == ["r30", "r31"]
        publisher.close()
        tail.close()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert client.xlen(DEFAULT_CATALOG_STREAM) == 32
    # maxlen 0 keeps every record: 3,000 more, and the first is still there
    with EventLog(tmp_path / "catalog", durability="normal") as local:
        local.append_catalog([{**r, "record_id": f"bulk{n}"} for n, r in enumerate(records(0, 3000))])
    RedisPublisher(redis_server.url, tmp_path / "catalog", stream=DEFAULT_CATALOG_STREAM, maxlen=0,
                   kind="catalog").flush()
    assert client.xlen(DEFAULT_CATALOG_STREAM) == 3032
    assert drain(RedisTail(redis_server.url, stream=DEFAULT_CATALOG_STREAM, kind="catalog"))["record_id"][0] == "r0"


def test_the_catalog_vocabulary_follows_the_whole_stream_not_one_bounded_read(tmp_path, redis_server):
    """CatalogItems over the catalog stream (the events and catalog models with Redis): every item
    upserted so far, however many bounded reads that takes (one read of 10,000 left later items
    unknown, so their events were rejected until enough calls had gone by)."""
    from events.catalog import CatalogItems
    from events.redis_bus import DEFAULT_CATALOG_STREAM
    from features.vocab import IdVocab

    with EventLog(tmp_path / "catalog", durability="normal") as local:
        local.append_catalog(records(0, 60))
    RedisPublisher(redis_server.url, tmp_path / "catalog", stream=DEFAULT_CATALOG_STREAM, maxlen=0,
                   kind="catalog").flush()
    tail = RedisTail(redis_server.url, stream=DEFAULT_CATALOG_STREAM, kind="catalog", count=4, max_reads=2)
    vocab = CatalogItems(IdVocab(["i0"]), tmp_path / "unused", tail).items  # drained when made
    assert vocab.lookup([f"new{i}" for i in range(0, 60, 3)]).min() >= 0 and len(vocab) == 21
    tail.close()


def test_a_tail_from_the_streams_start_counts_what_was_trimmed_before_it_started(tmp_path, redis_server, caplog):
    """A catalog tail reads the whole stream: entries trimmed before it started are missing from its
    state too, and counted (a tail starting at a snapshot time cannot know what came before)."""
    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 1000))
    RedisPublisher(redis_server.url, tmp_path / "log", maxlen=100).flush()
    tail = RedisTail(redis_server.url, check_s=0.0)
    got = drain(tail)
    tail.read_new()  # caught up: the check counts
    assert tail.missed == 1000 - len(got) > 0
    tail.close()


def test_a_publisher_whose_log_is_replaced_publishes_the_new_one_from_its_start(tmp_path, redis_server):
    """The publisher's cursor records the log's identity: a log replaced under a running publisher, or
    under its saved cursor file, is published from its start (reading on from the old position skipped
    its first rows; the stream's id keys drop what it already has)."""
    import shutil

    with EventLog(tmp_path / "log", durability="normal") as local:
        local.append_events(events(0, 5))
    publisher = RedisPublisher(redis_server.url, tmp_path / "log")
    assert publisher.flush() == 5
    publisher.close()  # saves (1, 5, identity)
    saved = (tmp_path / "log" / "redis-published-recsys__events_.json").read_text()
    shutil.rmtree(tmp_path / "log")
    with EventLog(tmp_path / "log", durability="normal") as local:  # another log, longer than the cursor
        local.append_events(events(100, 108, prefix="n"))
    (tmp_path / "log" / "redis-published-recsys__events_.json").write_text(saved)  # restored with a stale cursor
    again = RedisPublisher(redis_server.url, tmp_path / "log")
    assert again.backlog == 8 and again.flush() == 8
    ids = drain(RedisTail(redis_server.url))["event_id"].tolist()
    assert ids == [f"e{i}" for i in range(5)] + [f"n{i}" for i in range(100, 108)]
    again.close()
