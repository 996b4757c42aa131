"""Live events over gRPC on the real tritonserver: ingest, the next answer knows, everything logged.

One server with two ``recommend`` instances over the tiny deployed run, its event log in a
temporary directory (``RECSYS_EVENT_LOG``, inherited by the python stubs).
"""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from events.log import EventLog, read_log
from export.repository import export_if_needed
from pipeline.artifacts import RunArtifacts
from serving.client import RecommendClient, _inputs
from serving.event_log import ENV
from serving.health import metric_sum, scrape
from serving.metric_buffer import FLUSH_S
from serving.protocol import EVENTS_MODEL, encode_events, probe_user
from serving.triton_server import TritonServer
from tests.conftest import TINY_DATA, compose_cfg

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tiny_deployed_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    cfg = compose_cfg(d, TINY_DATA + [f"export.repository={d / 'repo'}", "export.int8.enabled=false"])
    repo = export_if_needed(cfg, tiny_deployed_run)
    assert "count: 2 kind: KIND_CPU" in (repo / "recommend" / "config.pbtxt").read_text()  # the default
    os.environ[ENV] = str(d / "event_log")
    try:
        with TritonServer(repo, log_path=d / "tritonserver.log") as server:
            yield server, d / "event_log", RunArtifacts(repo / "recommend" / "1" / "artifacts")
    finally:
        os.environ.pop(ENV, None)


def event(i, user, item, t, type_="click", **kw):
    return {"event_id": f"ev-{i}", "user_id": user, "item_id": item, "timestamp": t, "type": type_, **kw}


def test_an_event_changes_the_next_answer_of_every_instance(served):
    server, log_dir, art = served
    store = art.load_store()
    t = float(store.last_ts.max()) + 3600
    user = str(store.users.ids[3])
    with RecommendClient(server.grpc_url) as client:
        before = client.recommend(user, 10, t)
        top = before.item_ids[0]
        assert client.send_events(pd.DataFrame([event(1, user, top, t)])) == ["ok"]
        for _ in range(6):  # requests alternate between the two instances: each applied the event
            assert top not in client.recommend(user, 10, t + 1).item_ids
        # idempotent: the same event again is acknowledged, not applied twice
        assert client.send_events(pd.DataFrame([event(1, user, top, t)])) == ["duplicate"]
        # a user the run never saw is known after one event
        assert client.recommend("stranger", 5, t).route == "cold_user"
        assert client.send_events(pd.DataFrame([event(2, "stranger", before.item_ids[1], t)])) == ["ok"]
        answers = [client.recommend("stranger", 5, t + 1) for _ in range(4)]
        assert all(a.route == "known_user" and before.item_ids[1] not in a.item_ids for a in answers)
    time.sleep(FLUSH_S + 0.5)  # recsys_* metrics of recommend reach the server once a second
    metrics = scrape(server.metrics_url)
    assert metric_sum(metrics, "recsys_events_total", outcome="ok") == 2
    assert metric_sum(metrics, "recsys_events_total", outcome="duplicate") == 1
    assert metric_sum(metrics, "recsys_events_applied_total") == 4  # 2 events x 2 instances
    # one series per instance (each holds its own state): a stuck instance is not hidden by the other
    applied = {dict(lab)["model_instance"]: v for (n, lab), v in metrics.items() if n == "recsys_events_applied_total"}
    assert len(applied) == 2 and set(applied.values()) == {2.0}, applied
    ages = [v for (n, lab), v in metrics.items() if n == "recsys_freshness_seconds" and ("of", "event") in lab]
    assert len(ages) == 2 and all(0 <= v < 600 for v in ages), ages


def test_a_bad_event_is_rejected_alone_with_its_reason(served):
    server, log_dir, art = served
    store = art.load_store()
    t = float(store.last_ts.max()) + 7200
    item = str(store.items.ids[0])
    batch = pd.DataFrame([event(10, "u-a", item, t), event(11, "u-b", "no-such-item", t),
                          event(12, "u-c", item, -5.0), event(13, "u-d", item, t, "like"),
                          event(14, "", item, t), event(10, "u-a", item, t), event(15, "u-e", item, t, "impression")])
    with RecommendClient(server.grpc_url) as client:
        assert client.send_events(batch) == ["ok", "unknown_item", "bad_timestamp", "unknown_type", "missing_user_id",
                                             "duplicate_in_batch", "ok"]
        assert client.recommend("u-e", 5, t).route == "cold_user"  # an impression is logged, not "seen"
        # ids that are not UTF-8: refused, never replaced (two of them once became one id: the second was lost)
        raw = encode_events(pd.DataFrame([event(16, "u-f", item, t), event(17, "u-g", item, t)]))
        raw["event_id"] = np.array([b"ev-\xff", b"ev-\xfe"], dtype=object)
        result = client._call(EVENTS_MODEL, _inputs(raw), [grpcclient.InferRequestedOutput("status")])
        assert [v.decode() for v in result.as_numpy("status").ravel()] == ["bad_encoding", "bad_encoding"]
        # a whole request refused (one value missing): counted by the model (Triton counts it a success)
        raw["user_id"] = raw["user_id"][:1]
        with pytest.raises(InferenceServerException, match="one value per event"):
            client._call(EVENTS_MODEL, _inputs(raw), [grpcclient.InferRequestedOutput("status")])
    metrics = scrape(server.metrics_url)
    assert metric_sum(metrics, "recsys_events_request_errors_total", code="invalid_argument") == 1
    assert metric_sum(metrics, "recsys_events_request_errors_total", code="internal") == 0
    logged = read_log(log_dir / "events", "events")
    assert {"ev-10", "ev-15"} <= set(logged["event_id"]) and "ev-11" not in set(logged["event_id"])
    assert not any("\ufffd" in e for e in logged["event_id"])


def test_every_answer_is_logged_as_an_impression(served):
    server, log_dir, _ = served
    with RecommendClient(server.grpc_url) as client:
        answers = [client.recommend(f"visitor-{i}", 5, 1_700_000_000 + i) for i in range(5)]
    shown = read_log(log_dir / "impressions", "impressions").set_index("request_id")
    for a in answers:
        row = shown.loc[a.request_id]
        assert row["items"] == a.item_ids and row["user_id"] == a.user_id and row["route"] == a.route
        assert row["ranker"] == a.ranker and "@" in row["model_version"]
        # which run: its folder and manifest digest, as export.json says (was "1", the version folder, for all)
        exported = json.loads((server.model_repository / "export.json").read_text())
        assert row["model_version"].startswith(f"{Path(exported['run_dir']).name}:{exported['run_manifest_sha256'][:8]}@")
        np.testing.assert_allclose(row["scores"], a.scores, rtol=1e-6)
    # every log's size is exported, impressions too, with no event traffic (a thread looks every 5 s)
    deadline, sizes = time.monotonic() + 15, {}
    while time.monotonic() < deadline and not sizes.get("impressions"):
        sizes = {dict(lab)["log"]: v for (n, lab), v in scrape(server.metrics_url).items()
                 if n == "recsys_event_log_bytes"}
        time.sleep(0.5)
    assert set(sizes) == {"events", "impressions", "catalog"} and sizes["impressions"] > 0 and sizes["events"] > 0
    assert metric_sum(scrape(server.metrics_url), "recsys_event_log_dropped_segments") == 0


def test_the_liveness_probe_is_answered_and_recorded_nowhere(served):
    """The supervisor's probe id: a full answer, counted under route="probe", no impression logged
    (and, tests/pipeline/test_artifacts.py, nothing added to the exposure-cap window)."""
    server, log_dir, _ = served
    before = set(read_log(log_dir / "impressions", "impressions")["request_id"])
    probes = lambda: metric_sum(scrape(server.metrics_url), "recsys_requests_total", route="probe")  # noqa: E731
    time.sleep(FLUSH_S + 0.5)
    counted = probes()
    with RecommendClient(server.grpc_url) as client:
        answers = [client.recommend(probe_user(), 1) for _ in range(4)]  # the id this server took at start
    assert all(len(a.item_ids) == 1 and a.route == "cold_user" and a.request_id == "" for a in answers)
    assert set(read_log(log_dir / "impressions", "impressions")["request_id"]) == before
    time.sleep(FLUSH_S + 0.5)
    assert probes() - counted == 4


def test_attributes_segment_and_promoted_items_travel_over_grpc(served, capsys):
    """A user the server does not know, described by attributes (the cold-start attribute path),
    a segment, and a promoted item: all from the client, over gRPC."""
    from tritonclient.utils import InferenceServerException

    server, _, art = served
    store = art.load_store()
    t = float(store.last_ts.max()) + 20_000
    segment = store.features.encoders["user"]["segment"].state["vocab"][0]
    with RecommendClient(server.grpc_url) as client:
        plain = client.recommend("visitor-attr", 10, t)
        described = client.recommend("visitor-attr", 10, t, attributes={"age": 30, "segment": segment})
        # Parsed and validated end to end (a bad name is rejected below). Whether they move the list
        # depends on the run: this tiny one gates the cold route's residual to 0 (prior only).
        assert described.route == plain.route == "cold_user" and len(described.item_ids) == 10
        last = plain.item_ids[-1]
        boosted = client.recommend("visitor-attr", 10, t, promoted=[last], segment="any")
        assert last in boosted.item_ids
        assert boosted.scores[boosted.item_ids.index(last)] == pytest.approx(plain.scores[-1] + 0.1, abs=1e-4)
        with pytest.raises(InferenceServerException, match=r"unknown user attribute\(s\) \['shoe_size'\]"):
            client.recommend("visitor-attr", 10, t, attributes={"shoe_size": 44})
    # the same from the command line: recsys-recommend --promoted / --segment / --attribute
    import json

    from serving.cli import main as cli_main

    argv = ["--user", "visitor-attr", "--k", "10", "--timestamp", str(t), "--url", server.grpc_url, "--json"]
    assert cli_main(argv + ["--promoted", last, "--segment", "any"]) == 0
    assert json.loads(capsys.readouterr().out)["item_ids"] == boosted.item_ids
    assert cli_main(argv + ["--attribute", "age=30", "--attribute", f"segment={segment}"]) == 0
    assert json.loads(capsys.readouterr().out)["item_ids"] == described.item_ids
    assert cli_main(argv + ["--attribute", "shoe_size=44"]) == 2
    assert "unknown user attribute(s) ['shoe_size']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(argv + ["--attribute", "age"])
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_the_events_command_sends_a_file_and_reports_each_outcome(served, tmp_path, capsys):
    from serving.events_cli import main

    server, log_dir, art = served
    store = art.load_store()
    t = float(store.last_ts.max()) + 9000
    csv = tmp_path / "events.csv"
    pd.DataFrame([event("c1", "0042", str(store.items.ids[2]), t), event("c2", "0043", "nope", t),
                  event("c1", "0042", str(store.items.ids[2]), t)]).to_csv(csv, index=False)
    assert main(["send", str(csv), "--url", server.grpc_url]) == 0
    out = capsys.readouterr().out
    assert "3 events: " in out and "ok=1" in out and "unknown_item=1" in out and "duplicate_in_batch=1" in out
    assert "row 2: unknown_item" in out  # the second data row
    assert "0042" in set(read_log(log_dir / "events", "events")["user_id"])  # ids stay strings: "0042", not 42
    assert main(["send", str(csv), "--url", server.grpc_url, "--fail-on-rejected"]) == 1
    assert "duplicate=1" in capsys.readouterr().out  # resent: acknowledged, not applied twice
    assert main(["send", str(tmp_path / "missing.csv"), "--url", server.grpc_url]) == 2
    assert "events file" in capsys.readouterr().err


def test_an_item_upserted_online_is_recommended_blocked_and_takes_events(served, tmp_path, capsys):
    """The catalog model over gRPC: a new item (embedded by the exported item tower in every
    recommend instance) is served from the next answer; a block takes it out of the next answer of
    both instances, unblock brings it back; an event on it is accepted; all logged in the catalog folder."""
    from inference.models import TorchModel
    from pipeline.catalog import OnlineCatalog
    from serving.catalog_cli import main

    server, log_dir, art = served
    pipe = art.load_pipeline()  # offline: the PyTorch towers, to find the user whose taste is nearest the item
    store = pipe.store
    enc = store.features.encoders["item"]
    item = {"item_id": "launch-1", "category": enc["category"].state["vocab"][0], "genres": "no-such-genre",
            "price": 12.5, "quality": 0.4, "title": "Launch day special"}
    OnlineCatalog(pipe, TorchModel(art.load_towers(store).item_tower)).apply(pd.DataFrame(
        [{"op": "upsert_item", "entity_id": "launch-1", "attributes": {k: v for k, v in item.items() if k != "item_id"}}]))
    vector = pipe.retriever.item_embeddings[-1]
    t = float(store.last_ts.max()) + 30_000
    users = np.arange(len(store.users))
    fan = str(store.users.ids[int(np.argmax(pipe.retriever.embed_requests(users, np.full(len(users), int(t))) @ vector))])
    unknown = "<unknown>"  # the category of a genre the run never saw: only the new item has it
    with RecommendClient(server.grpc_url) as client:
        assert client.recommend(fan, 5, t, include_categories=[unknown]).item_ids == []
        assert client.upsert_items(pd.DataFrame([item])) == ["ok"]
        for _ in range(4):  # both instances: ranked from the index, with its title
            answer = client.recommend(fan, 5, t, include_categories=[unknown])
            assert answer.item_ids == ["launch-1"] and answer.reasons == ["ranked"]
            assert answer.titles == ["Launch day special"]
        assert client.block(["launch-1", "no-such-item"]) == ["ok", "unknown_item"]
        for _ in range(4):
            assert client.recommend(fan, 5, t, include_categories=[unknown]).item_ids == []
        assert client.unblock(["launch-1"]) == ["ok"]
        for _ in range(4):
            assert client.recommend(fan, 5, t, include_categories=[unknown]).item_ids == ["launch-1"]
        # an event on the new item is accepted and applied: seen, so never recommended to the fan again
        assert client.send_events(pd.DataFrame([event("launch-ev", fan, "launch-1", t)])) == ["ok"]
        for _ in range(4):
            assert client.recommend(fan, 5, t + 1, include_categories=[unknown]).item_ids == []
        # bad records, each with its reason, the rest kept
        assert client.upsert_items([{"item_id": "x1", "colour": "red"}, {"item_id": "x2", "price": "cheap"},
                                    {"item_id": "x3", "quality": 1e308},  # absurd: once an inf embedding
                                    {"item_id": "launch-2", "genres": "no-such-genre", "price": 3}]) == [
            "unknown_attribute", "bad_value", "bad_value", "ok"]
        # and what was wrong with each, over the wire (the `detail` output)
        assert client.last_details[0].startswith("'colour' is not an attribute of items; known: ")
        assert "price" in client.last_details[0] and client.last_details[3] == ""
        assert client.last_details[1].startswith("price='cheap': a finite number")
        assert set(client.recommend("cold-visitor", 5, t, include_categories=[unknown]).item_ids) == {"launch-1", "launch-2"}
        # stored user attributes: an unknown user's answer equals the same request with them given
        segment = store.features.encoders["user"]["segment"].state["vocab"][0]
        attrs = {"age": 41, "segment": segment, "country": "nowhere"}
        given = client.recommend("walk-in-2", 10, t, attributes=attrs)
        assert client.upsert_users([{"user_id": "walk-in", **attrs}]) == ["ok"]
        for _ in range(4):
            stored = client.recommend("walk-in", 10, t)
            assert (stored.item_ids, stored.scores) == (given.item_ids, given.scores)
    logged = read_log(log_dir / "catalog", "catalog")
    assert logged["op"].tolist() == ["upsert_item", "block", "unblock", "upsert_item", "upsert_user"]
    assert logged["attributes"].iloc[0] == {**{k: v for k, v in item.items() if k != "item_id"}, "price": 12.5}
    # the command: a CSV of items, ids kept as text, each outcome reported
    csv = tmp_path / "items.csv"
    pd.DataFrame([{"item_id": "0077", "genres": "no-such-genre", "price": "7"},
                  {"item_id": "0078", "price": "free"}]).to_csv(csv, index=False)
    assert main(["upsert-items", str(csv), "--url", server.grpc_url]) == 0
    out = capsys.readouterr().out
    assert "2 records: " in out and "ok=1" in out and "bad_value=1" in out
    assert "row 2: bad_value (price='free': a finite number" in out  # the command says why
    assert main(["block", "0077", "--url", server.grpc_url, "--fail-on-rejected"]) == 0
    assert main(["unblock", "nope", "--url", server.grpc_url, "--fail-on-rejected"]) == 1
    assert "unknown_item=1" in capsys.readouterr().out
    assert "0077" in set(read_log(log_dir / "catalog", "catalog")["entity_id"])
    time.sleep(FLUSH_S + 0.5)  # recommend's recsys_* metrics reach the server once a second
    metrics = scrape(server.metrics_url)
    assert metric_sum(metrics, "recsys_catalog_records_total", op="upsert_item", outcome="ok") == 3
    assert metric_sum(metrics, "recsys_catalog_applied_total", change="new_items") == 4  # 2 items x 2 instances


def test_the_catalog_command_sends_to_every_host_and_names_the_one_it_could_not_reach(served, capsys):
    """recsys-catalog --url A --url B: without Redis the catalog is per host, so the
    command sends each change to every host given; an unreachable one is named, the others still get
    it, and the exit code is 2."""
    from serving.catalog_cli import main

    server, log_dir, art = served
    item = str(art.load_store().items.ids[11])
    dead = "127.0.0.1:1"  # nothing listens there
    assert main(["block", item, "--url", dead, "--url", server.grpc_url, "--timeout", "5"]) == 2
    out, err = capsys.readouterr()
    assert f"{server.grpc_url}:" in out and "1 records: ok=1" in out
    assert dead in err and "not sent to 1 of 2 hosts" in err
    logged = read_log(log_dir / "catalog", "catalog")
    assert ((logged["op"] == "block") & (logged["entity_id"] == item)).sum() == 1
    assert main(["unblock", item, "--url", server.grpc_url]) == 0


def test_a_bulk_catalog_upload_is_applied_over_several_answers_and_its_events_wait_for_it(served):
    """2,500 new items in one call: an instance applies at most 1,000 records before an answer (a 50k
    upload held one answer for seconds, past the liveness probe's deadline); an event on the last item,
    logged right after, waits until its item is applied (never skipped as unknown); an event on a known
    item does not wait for the upload."""
    server, log_dir, art = served
    store = art.load_store()
    category = store.features.encoders["item"]["category"].state["vocab"][0]
    items = pd.DataFrame({"item_id": [f"bulk-{i}" for i in range(2500)], "category": category})
    metric = lambda name, **lab: metric_sum(scrape(server.metrics_url), name, **lab)  # noqa: E731
    user = str(store.users.ids[6])
    with RecommendClient(server.grpc_url, timeout=60) as client:
        for _ in range(4):  # both instances take what earlier tests left in the logs: the counts below are exact
            client.recommend(user, 5)
        time.sleep(FLUSH_S + 0.5)
        new0, applied0 = metric("recsys_catalog_applied_total", change="new_items"), metric("recsys_events_applied_total")
        skipped0 = metric("recsys_events_skipped_total")
        assert set(client.upsert_items(items)) == {"ok"}
        known = str(store.items.ids[5])
        assert client.send_events(pd.DataFrame([event("bulk-ev", user, "bulk-2499", time.time()),
                                                event("bulk-known", user, known, time.time())])) == ["ok", "ok"]
        client.recommend(user, 5)  # one answer: one instance applied the first 1,000 records, held the new item's event
        time.sleep(FLUSH_S + 0.5)
        # (bounds, not counts: an instance may still hold records or events of earlier tests, if Triton did
        # not spread the warm-up over both; the exact semantics: tests/serving/test_recommend_catch_up.py)
        assert 900 < metric("recsys_catalog_applied_total", change="new_items") - new0 <= 1000
        for _ in range(8):  # 3 answers per instance apply the rest, then the event
            client.recommend(user, 5)
        time.sleep(FLUSH_S + 0.5)
        assert metric("recsys_catalog_applied_total", change="new_items") - new0 >= 2 * 2500
        assert metric("recsys_events_skipped_total") == skipped0
        assert metric("recsys_events_applied_total") - applied0 >= 4  # both events, applied by both instances


def test_events_that_cannot_be_applied_are_counted_and_answers_go_on(served):
    """An unreadable segment in the events log (a disk error, a bad copy): every instance answers from
    the state it has, counts each answer given without the news, and recovers once it is gone."""
    server, log_dir, art = served
    bad = log_dir / "events" / "segment-999999.sqlite"
    bad.write_bytes(b"not a database" * 512)
    user = str(art.load_store().users.ids[2])
    failed = lambda: metric_sum(scrape(server.metrics_url), "recsys_live_apply_failures_total")  # noqa: E731
    try:
        time.sleep(FLUSH_S + 0.5)
        before = failed()
        with RecommendClient(server.grpc_url) as client:
            assert all(len(client.recommend(user, 5).item_ids) == 5 for _ in range(6))
            time.sleep(FLUSH_S + 0.5)
            metrics = scrape(server.metrics_url)
            per_instance = [v for (n, lab), v in metrics.items() if n == "recsys_live_apply_failures_total"]
            assert failed() - before == 6 and len(per_instance) == 2 and min(per_instance) > 0, per_instance
            assert "live events not applied" in server.log_path.read_text()
            bad.unlink()
            client.recommend(user, 5)
            client.recommend(user, 5)
            time.sleep(FLUSH_S + 0.5)
            after = failed()
            assert all(len(client.recommend(user, 5).item_ids) == 5 for _ in range(4))
            time.sleep(FLUSH_S + 0.5)
            assert failed() == after  # recovered: no answer without the news any more
    finally:
        bad.unlink(missing_ok=True)


def test_a_logged_event_on_an_item_this_host_lacks_is_counted_not_silently_dropped(served):
    """An event in the log whose item this server's catalog does not hold (written by a host that has
    the item, the case of Redis without the catalog shared): each instance answers on, counts it under
    recsys_events_skipped_total{reason="unknown_item"} and says so in the log."""
    server, log_dir, art = served
    store = art.load_store()
    user = str(store.users.ids[4])
    skipped = lambda: metric_sum(scrape(server.metrics_url), "recsys_events_skipped_total",  # noqa: E731
                                 reason="unknown_item")
    time.sleep(FLUSH_S + 0.5)
    before = skipped()
    with EventLog(log_dir / "events") as other_host:
        t = float(store.last_ts.max()) + 7200
        assert other_host.append_events([event("elsewhere", user, "only-on-host-b", t),
                                         event("here", user, str(store.items.ids[1]), t)]) == [True, True]
    with RecommendClient(server.grpc_url) as client:
        for _ in range(4):  # both instances read the log
            assert len(client.recommend(user, 5).item_ids) == 5
    time.sleep(FLUSH_S + 0.5)
    assert skipped() - before == 2  # one event, two instances
    assert "not in this instance's catalog" in server.log_path.read_text()


def test_acknowledged_events_and_impressions_survive_a_killed_server(served, tmp_path):
    """SIGKILL of tritonserver right after the acks: every acknowledged row is in the log, and a
    restarted server applies the events again (from the log) before its first answer."""
    server, log_dir, art = served
    store = art.load_store()
    t = float(store.last_ts.max()) + 10_000
    user, item = str(store.users.ids[5]), None
    acked, shown = [], []
    with RecommendClient(server.grpc_url) as client:
        item = client.recommend(user, 10, t).item_ids[0]
        for i in range(40):
            batch = pd.DataFrame([event(f"k{i}", f"killer-{i}", str(store.items.ids[i % 7]), t)])
            if client.send_events(batch) == ["ok"]:
                acked.append(f"ev-k{i}")
            shown.append(client.recommend(f"killer-{i}", 3, t).request_id)
        assert client.send_events(pd.DataFrame([event("last", user, item, t)])) == ["ok"]
    os.kill(server.pid, signal.SIGKILL)
    server.stop()
    logged = read_log(log_dir / "events", "events")
    assert set(acked) | {"ev-last"} <= set(logged["event_id"])
    assert set(shown) <= set(read_log(log_dir / "impressions", "impressions")["request_id"])
    repo = server.model_repository
    with TritonServer(repo, log_path=tmp_path / "restarted.log") as again, RecommendClient(again.grpc_url) as client:
        assert item not in client.recommend(user, 10, t + 1).item_ids  # the logged event, applied at start
        assert client.recommend("killer-3", 3, t + 1).route == "known_user"
        if (log_dir / "catalog").is_dir():  # after the catalog test: items added online and blocks are replayed
            shown = client.recommend("after-restart", 10, t + 1, include_categories=["<unknown>"]).item_ids
            assert "launch-2" in shown and "0077" not in shown
