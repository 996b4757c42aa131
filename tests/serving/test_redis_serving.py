"""Two tritonservers (two "hosts": each its own local event log) sharing the live events and the
catalog records through one real redis-server: an event sent to A changes B's next answer, and so does
a new item or a block; Redis killed while both serve: both keep answering, the metrics say so, and the
events acknowledged meanwhile reach B once Redis is back."""

import contextlib
import os
import time

import pandas as pd
import pytest

from events.log import read_log
from export.repository import export_if_needed
from pipeline.artifacts import RunArtifacts
from serving.client import RecommendClient
from serving.event_log import ENV, REDIS_ENV
from serving.health import metric_sum, scrape
from serving.metric_buffer import FLUSH_S
from serving.triton_server import TritonServer
from tests.conftest import TINY_DATA, compose_cfg
from serving.redis_server import RedisServer


def test_serve_refuses_a_malformed_redis_url_before_starting(capsys, monkeypatch):
    from serving.serve import main

    monkeypatch.delenv(REDIS_ENV, raising=False)
    assert main(["--redis", "127.0.0.1:6379", "--model-repository", "/nonexistent"]) == 2
    assert "--redis: Redis URL '127.0.0.1:6379': expected redis://HOST:PORT/DB" in capsys.readouterr().err
    assert REDIS_ENV not in os.environ


@pytest.fixture(scope="module")
def two_hosts(tiny_deployed_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("redis_hosts")
    cfg = compose_cfg(d, TINY_DATA + [f"export.repository={d / 'repo'}", "export.int8.enabled=false"])
    repo = export_if_needed(cfg, tiny_deployed_run)
    # one recommend instance per "host": each applies each event once (two instances would each apply it)
    config = repo / "recommend" / "config.pbtxt"
    config.write_text(config.read_text().replace("count: 2 kind: KIND_CPU", "count: 1 kind: KIND_CPU"))
    redis = RedisServer(d / "redis").start()
    saved = {k: os.environ.get(k) for k in (ENV, REDIS_ENV)}
    try:
        with contextlib.ExitStack() as stack:
            os.environ[REDIS_ENV] = redis.url
            servers = []
            for name in ("a", "b"):  # the stubs copy the environment at start: one log directory each
                os.environ[ENV] = str(d / f"log_{name}")
                servers.append(stack.enter_context(TritonServer(repo, log_path=d / f"{name}.log")))
            yield servers, redis, d, RunArtifacts(repo / "recommend" / "1" / "artifacts")
    finally:
        redis.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def event(i, user, item, t):
    return {"event_id": f"rx-{i}", "user_id": user, "item_id": item, "timestamp": t, "type": "click"}


def metric(server, name, **labels) -> float:
    if name in BUFFERED:  # recommend's counters reach the server once a second (serving/metric_buffer.py)
        time.sleep(FLUSH_S + 0.5)
    return metric_sum(scrape(server.metrics_url), name, **labels)


BUFFERED = {"recsys_events_applied_total", "recsys_catalog_applied_total", "recsys_events_skipped_total"}


@pytest.mark.triton
@pytest.mark.slow
def test_an_event_sent_to_server_a_changes_server_bs_next_answer(two_hosts):
    (a, b), _, d, art = two_hosts
    store = art.load_store()
    t = float(store.last_ts.max()) + 3600
    user = str(store.users.ids[4])
    with RecommendClient(a.grpc_url) as to_a, RecommendClient(b.grpc_url) as to_b:
        top = to_b.recommend(user, 10, t).item_ids[0]
        assert to_a.send_events(pd.DataFrame([event(1, user, top, t)])) == ["ok"]
        # published before A acknowledged: B's very next answer has applied it (no polling)
        assert top not in to_b.recommend(user, 10, t + 1).item_ids
        assert top not in to_a.recommend(user, 10, t + 1).item_ids  # A follows the same stream
        # the same id sent to B (a client retrying on another host): B logs it, the stream keeps one copy
        assert to_b.send_events(pd.DataFrame([event(1, user, top, t)])) == ["ok"]
    assert read_log(d / "log_b" / "events", "events")["event_id"].tolist() == ["rx-1"]
    assert metric(a, "recsys_redis_published_total") == 1 and metric(b, "recsys_redis_published_total") == 0
    for server in (a, b):
        assert metric(server, "recsys_redis_up", role="events") == 1
        assert metric(server, "recsys_redis_up", role="recommend") == 1
        assert metric(server, "recsys_events_applied_total") == 1  # once per host, not once per copy


@pytest.mark.triton
@pytest.mark.slow
def test_a_catalog_change_sent_to_server_a_is_in_server_bs_next_answer(two_hosts):
    """The catalog stream: an item upserted on A is in B's very next answer (B embeds it with its own
    item tower), B's events and catalog models accept an event on it and a block of it, and the block
    sent to B leaves A's very next answer. Before this stream, B skipped the event as an unknown item."""
    (a, b), _, d, art = two_hosts
    store = art.load_store()
    t = float(store.last_ts.max()) + 5000
    enc = store.features.encoders["item"]
    item = {"item_id": "rx-launch", "category": enc["category"].state["vocab"][0], "genres": "no-such-genre",
            "price": 12.5, "quality": 0.4, "title": "Shared launch"}
    unknown = "<unknown>"  # the category of a genre the run never saw: only the new item has it
    user = str(store.users.ids[3])
    with RecommendClient(a.grpc_url) as to_a, RecommendClient(b.grpc_url) as to_b:
        assert to_b.recommend(user, 5, t, include_categories=[unknown]).item_ids == []
        assert to_a.upsert_items(pd.DataFrame([item])) == ["ok"]
        answer = to_b.recommend(user, 5, t, include_categories=[unknown])  # published before A's ack: no polling
        assert answer.item_ids == ["rx-launch"] and answer.titles == ["Shared launch"]
        assert to_a.recommend(user, 5, t, include_categories=[unknown]).item_ids == ["rx-launch"]
        assert to_b.send_events(pd.DataFrame([event(30, user, "rx-launch", t)])) == ["ok"]  # B's events model knows it
        assert to_b.block(["rx-launch"]) == ["ok"]  # and B's catalog model
        assert to_a.recommend(user, 5, t + 1, include_categories=[unknown]).item_ids == []
        assert to_b.recommend(user, 5, t + 1, include_categories=[unknown]).item_ids == []
    for server in (a, b):
        assert metric(server, "recsys_catalog_applied_total", change="new_items") == 1
        assert metric(server, "recsys_catalog_applied_total", change="blocked") == 1
        assert metric(server, "recsys_events_skipped_total") == 0  # the event on the new item applied everywhere
        assert metric(server, "recsys_redis_up", role="catalog") == 1
        assert metric(server, "recsys_redis_catalog_published_total") == 1  # A the upsert, B the block
        assert metric(server, "recsys_redis_catalog_backlog_records") == 0
    # each host's log holds the records it took; the stream carries both
    assert read_log(d / "log_a" / "catalog", "catalog")["op"].tolist() == ["upsert_item"]
    assert read_log(d / "log_b" / "catalog", "catalog")["op"].tolist() == ["block"]


@pytest.mark.triton
@pytest.mark.slow
def test_redis_killed_both_keep_answering_and_catch_up_when_it_returns(two_hosts):
    (a, b), redis, d, art = two_hosts
    store = art.load_store()
    t = float(store.last_ts.max()) + 7200
    user = str(store.users.ids[6])
    applied_before = metric(b, "recsys_events_applied_total")
    with RecommendClient(a.grpc_url) as to_a, RecommendClient(b.grpc_url) as to_b:
        top = to_b.recommend(user, 10, t).item_ids[0]
        redis.kill()
        start = time.perf_counter()
        for _ in range(5):
            assert to_a.recommend(user, 10, t).item_ids and to_b.recommend(user, 10, t).item_ids
        assert (time.perf_counter() - start) / 10 < 0.5  # no timeout per answer while Redis is down
        assert to_a.send_events(pd.DataFrame([event(20, user, top, t)])) == ["ok"]  # durable on A: acknowledged
        assert top in to_b.recommend(user, 10, t + 1).item_ids  # not shared yet: B answers from its state
        deadline = time.monotonic() + 10
        while metric(a, "recsys_redis_up", role="events") != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(a, "recsys_redis_up", role="events") == 0
        assert metric(a, "recsys_redis_backlog_events") == 1
        assert metric(b, "recsys_redis_up", role="recommend") == 0
        redis.start()  # the same directory: its append-only file brings back the stream and the id keys
        deadline = time.monotonic() + 15
        while top in to_b.recommend(user, 10, t + 1).item_ids:  # A's publisher thread sends the backlog
            assert time.monotonic() < deadline, "the event sent while Redis was down never reached B"
            time.sleep(0.2)
        to_a.recommend(user, 10, t + 1)
    while metric(a, "recsys_redis_backlog_events") != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(a, "recsys_redis_backlog_events") == 0 and metric(a, "recsys_redis_up", role="events") == 1
    assert metric(b, "recsys_redis_up", role="recommend") == 1
    assert metric(b, "recsys_events_applied_total") == applied_before + 1  # rx-20, once
    assert metric(b, "recsys_redis_missed_events_total") == 0  # the append-only file kept the stream
    # one log line per outage and model, not one per call
    lines = (d / "a.log").read_text().splitlines()
    for who in ("events publisher", "recommend tail"):
        assert sum(f"{who}: Redis" in x and "unreachable" in x for x in lines) == 1
        assert sum(f"{who}: Redis" in x and "is back" in x for x in lines) == 1
