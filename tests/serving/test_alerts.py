"""The alert rules (ops/prometheus/alerts.yml): valid, each firing on its failure and quiet otherwise
(``promtool test rules`` on generated series), and loaded by a real Prometheus scraping a real
supervised server, where every metric they read exists and a real failure turns its alert on.

``make test`` installs Debian's ``prometheus`` package (``promtool`` and ``prometheus``).
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from export.repository import export_if_needed
from pipeline.artifacts import RunArtifacts
from serving.client import RecommendClient
from serving.event_log import ENV
from serving.health import HealthServer
from serving.supervisor import Supervisor
from serving.triton_server import TritonServer, free_ports
from tests.conftest import TINY_DATA, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make test` installs it (Debian's prometheus package: make prometheus-install)")
    return path


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def test_rules_are_valid_for_promtool():
    out = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


SUP = 'job="recsys-supervisor", instance="127.0.0.1:8003"'
TRI = 'job="recsys-triton", instance="127.0.0.1:8002"'
# alert -> scenarios: (input series {series: values every 15 s}, [(eval time, labels of each alert
# firing then beyond the rule's own)]); an empty list: quiet at that time.
CASES = {
    "RecsysNotReady": [
        ({f"recsys_supervisor_ready{{{SUP}}}": "1x8 0x12"},
         [("2m", []), ("2m45s", []), ("3m30s", [{"job": "recsys-supervisor", "instance": "127.0.0.1:8003"}])]),
        ({f"recsys_supervisor_ready{{{SUP}}}": "1x20"}, [("4m", [])]),
    ],
    "RecsysSupervisorDown": [
        ({f"up{{{SUP}}}": "1x4 0x10", f"up{{{TRI}}}": "1x14"},
         [("1m", []), ("2m30s", [{"job": "recsys-supervisor", "instance": "127.0.0.1:8003"}])]),
        ({f"up{{{SUP}}}": "1x14", f"up{{{TRI}}}": "0x14"}, [("3m", [])]),  # the other job: its own alert
    ],
    "RecsysTritonMetricsDown": [
        ({f"up{{{TRI}}}": "1x4 0x12"}, [("2m", []), ("3m30s", [{"job": "recsys-triton", "instance": "127.0.0.1:8002"}])]),
    ],
    "RecsysServerRestarted": [
        ({f"recsys_supervisor_restarts_total{{{SUP}}}": "0x20 1x40"},
         [("4m", []), ("6m", [{"job": "recsys-supervisor", "instance": "127.0.0.1:8003"}]), ("22m", [])]),
    ],
    "RecsysModelReloaded": [
        ({f"recsys_supervisor_reloads_total{{{SUP}}}": "0x20 1x40"},
         [("4m", []), ("6m", [{"job": "recsys-supervisor", "instance": "127.0.0.1:8003"}]), ("22m", [])]),
    ],
    "RecsysRestartFailing": [
        ({f"recsys_supervisor_restart_failures_total{{{SUP}}}": "0x20 1x40",
          f"recsys_supervisor_restarts_total{{{SUP}}}": "0+1x60"},
         [("4m", []), ("6m", [{"job": "recsys-supervisor", "instance": "127.0.0.1:8003"}])]),
    ],
    "RecsysInternalErrors": [
        ({'recsys_requests_total{route="known_user"}': "0+100x60",
          'recsys_request_errors_total{code="internal"}': "0+5x60",
          'recsys_request_errors_total{code="invalid_argument"}': "0+50x60"},
         [("4m", []), ("11m", [{}])]),
        ({'recsys_requests_total{route="known_user"}': "0+100x60",  # rejections are the client's: not this alert
          'recsys_request_errors_total{code="internal"}': "0x60",
          'recsys_request_errors_total{code="invalid_argument"}': "0+50x60"}, [("11m", [])]),
        ({'recsys_requests_total{route="known_user"}': "5x60",  # no traffic: no value, not an alert
          'recsys_request_errors_total{code="internal"}': "1x60"}, [("11m", [])]),
        ({'recsys_requests_total{route="known_user"}': "0+100x60",  # 1.5% of the clients' requests: the
          'recsys_requests_total{route="probe"}': "0+60x60",  # probes (0.9% with them) do not dilute it
          'recsys_request_errors_total{code="internal"}': "0+1.5x60"}, [("11m", [{}])]),
    ],
    "RecsysSlowAnswers": [
        ({'recsys_stage_seconds_bucket{stage="total", le="0.01"}': "0+5x80",
          'recsys_stage_seconds_bucket{stage="total", le="0.1"}': "0+100x80",
          'recsys_stage_seconds_bucket{stage="total", le="+Inf"}': "0+100x80"},
         [("8m", []), ("17m", [{}])]),
        ({'recsys_stage_seconds_bucket{stage="total", le="0.01"}': "0+100x80",
          'recsys_stage_seconds_bucket{stage="total", le="0.1"}': "0+100x80",
          'recsys_stage_seconds_bucket{stage="total", le="+Inf"}': "0+100x80",
          'recsys_stage_seconds_bucket{stage="rules", le="0.01"}': "0x80",  # another stage: not this alert
          'recsys_stage_seconds_bucket{stage="rules", le="+Inf"}': "0+100x80"}, [("17m", [])]),
    ],
    "RecsysSlowServedAnswers": [
        ({f'nv_inference_request_duration_us{{{TRI}, model="recommend", version="1"}}': "0+3000000x80",  # 150 ms
          f'nv_inference_request_success{{{TRI}, model="recommend", version="1"}}': "0+20x80",
          f'nv_inference_request_duration_us{{{TRI}, model="ranker", version="1"}}': "0+9000000x80"},
         [("8m", []), ("17m", [{"instance": "127.0.0.1:8002"}])]),
        ({f'nv_inference_request_duration_us{{{TRI}, model="recommend", version="1"}}': "0+200000x80",  # 10 ms
          f'nv_inference_request_success{{{TRI}, model="recommend", version="1"}}': "0+20x80"}, [("17m", [])]),
        ({f'nv_inference_request_duration_us{{{TRI}, model="recommend", version="1"}}': "5x80",  # no traffic
          f'nv_inference_request_success{{{TRI}, model="recommend", version="1"}}': "1x80"}, [("17m", [])]),
    ],
    "RecsysImpressionsLost": [
        ({"recsys_impressions_lost_total": "0x20 3x40"}, [("4m", []), ("6m", [{}]), ("17m", [])]),
    ],
    "RecsysOptionalRankerSkipped": [
        ({'recsys_models_skipped{model="ranker_int8"}': "1x4"}, [("30s", [{}])]),
        ({'recsys_models_skipped{model="ranker_int8"}': "0x4"}, [("30s", [])]),
    ],
    "RecsysOnnxInternalErrors": [
        ({'recsys_model_rejections_total{model="ranker", reason="internal"}': "0x20 2x40",
          'recsys_model_rejections_total{model="ranker", reason="id_out_of_range"}': "0+9x60"},
         [("4m", []), ("6m", [{"model": "ranker"}])]),
    ],
    "RecsysLiveEventsNotApplied": [
        ({f'recsys_live_apply_failures_total{{{TRI}, model_instance="recommend_0_0"}}': "0+3x40",
          f'recsys_live_apply_failures_total{{{TRI}, model_instance="recommend_0_1"}}': "0x40"},
         [("1m", []), ("4m", [{"instance": "127.0.0.1:8002", "model_instance": "recommend_0_0"}])]),
        ({'recsys_live_apply_failures_total{model_instance="recommend_0_0"}': "0x20 1x40"},  # one, recovered
         [("5m30s", []), ("6m", []), ("8m", [])]),
    ],
    "RecsysEventsNotReachingAnswers": [
        ({f'recsys_freshness_seconds{{{TRI}, of="event", model_instance="recommend_0_0"}}': "30x100",
          f'recsys_freshness_seconds{{{TRI}, of="event", model_instance="recommend_0_1"}}': "30+15x100",  # stuck
          f'recsys_events_total{{{TRI}, outcome="ok"}}': "0+10x100"},
         [("8m", []), ("16m", [{"instance": "127.0.0.1:8002", "model_instance": "recommend_0_1"}])]),
        ({f'recsys_freshness_seconds{{{TRI}, of="event", model_instance="recommend_0_0"}}': "30+15x100",  # no events
          f'recsys_events_total{{{TRI}, outcome="ok"}}': "7x100"}, [("16m", [])]),
        # another host's events do not page this host's instances (without Redis each applies its own)
        ({'recsys_freshness_seconds{job="recsys-triton", instance="b:8002", of="event", model_instance="r"}': "30+15x100",
          f'recsys_events_total{{{TRI}, outcome="ok"}}': "0+10x100",
          'recsys_events_total{job="recsys-triton", instance="b:8002", outcome="ok"}': "7x100"}, [("16m", [])]),
    ],
    "RecsysIngestFailing": [
        ({'recsys_events_request_errors_total{code="internal"}': "0x20 1x40"},  # no catalog model loaded
         [("4m", []), ("6m", [{}])]),
        ({'recsys_catalog_request_errors_total{code="internal"}': "0x20 1x40",
          'recsys_events_request_errors_total{code="invalid_argument"}': "0+4x60"}, [("4m", []), ("6m", [{}])]),
        ({'recsys_events_request_errors_total{code="invalid_argument"}': "0+4x60"}, [("6m", [])]),
    ],
    "RecsysEventLogDroppingData": [
        ({'recsys_event_log_dropped_segments{log="events"}': "0x20 1x300",
          'recsys_event_log_dropped_segments{log="impressions"}': "2x320"},
         [("4m", []), ("6m", [{"log": "events"}]), ("70m", [])]),
    ],
    "RecsysRedisDown": [
        ({'recsys_redis_up{role="events"}': "1x20",
          'recsys_redis_up{role="recommend", model_instance="recommend_0_0"}': "1x4 0x16"},
         [("1m", []), ("2m", []), ("3m30s", [{"role": "recommend", "model_instance": "recommend_0_0"}])]),
    ],
}


def test_every_alert_has_scenarios():
    assert set(CASES) == set(rules())


def promtool_tests() -> dict:
    by_name, tests = rules(), []
    for alert, scenarios in CASES.items():
        rule = by_name[alert]
        for series, checks in scenarios:
            tests.append({
                "interval": "15s",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{
                    "eval_time": at, "alertname": alert,
                    "exp_alerts": [{"exp_labels": {**rule.get("labels", {}), **extra},
                                    "exp_annotations": rule.get("annotations", {})} for extra in firing],
                } for at, firing in checks],
            })
    return {"rule_files": [str(RULES)], "evaluation_interval": "15s", "tests": tests}


def test_each_alert_fires_on_its_failure_and_stays_quiet_otherwise(tmp_path):
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump(promtool_tests(), sort_keys=False))
    out = subprocess.run([tool("promtool"), "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# -- a real Prometheus against a real supervised server ------------------------------------------------


class Prometheus:
    """Debian's prometheus on 127.0.0.1 (a free port), scraping ``targets`` (job -> host:port) every
    second with the alert rules; stopped by its PID."""

    def __init__(self, directory: Path, targets: dict[str, str]):
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                     for job, target in targets.items()]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as r:  # noqa: S310 - 127.0.0.1
            return json.load(r)["data"]

    def wait(self, what, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = what()
                if got:
                    return got
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus: not true after {timeout:.0f} s: {what.__doc__ or what}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def watched(tiny_deployed_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("alerts")
    cfg = compose_cfg(d, TINY_DATA + [f"export.repository={d / 'repo'}", "export.int8.enabled=false"])
    repo = export_if_needed(cfg, tiny_deployed_run)
    os.environ[ENV] = str(d / "event_log")
    supervisor = Supervisor(TritonServer(repo, log_path=d / "tritonserver.log"), interval=1.0, timeout=2.0)
    prom = health = None
    try:
        supervisor.start()
        health = HealthServer(supervisor).start()
        server = supervisor.server
        prom = Prometheus(d, {"recsys-triton": server.metrics_url.split("//")[1].split("/")[0],
                              "recsys-supervisor": f"127.0.0.1:{health.port}"})
        yield supervisor, prom, d / "event_log", RunArtifacts(repo / "recommend" / "1" / "artifacts")
    finally:
        if prom is not None:
            prom.stop()
        if health is not None:
            health.stop()
        supervisor.stop()
        os.environ.pop(ENV, None)


CONDITIONAL = {"recsys_redis_up"}  # exists only with Redis configured (tests/serving/test_redis_serving.py)


@pytest.mark.triton
@pytest.mark.slow
def test_prometheus_loads_the_rules_and_every_metric_they_read_exists(watched):
    supervisor, prom, _, art = watched

    def both_up():
        """both targets scraped"""
        active = prom.api("targets")["activeTargets"]
        return len(active) == 2 and all(t["health"] == "up" for t in active)

    prom.wait(both_up)
    user, t = str(art.load_store().users.ids[1]), float(art.load_store().last_ts.max()) + 60
    with RecommendClient(supervisor.server.grpc_url) as client:
        for _ in range(4):
            client.recommend(user, 5, t)
        client.send_events(pd.DataFrame([{"event_id": "al-1", "user_id": user, "item_id": str(art.load_store().items.ids[0]),
                                          "timestamp": t, "type": "click"}]))
        client.recommend(user, 5, t + 1)

    def evaluated():
        """every rule evaluated"""
        got = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return got if len(got) == len(rules()) and all(r["lastEvaluation"] > "2000" for r in got) else None

    for rule in prom.wait(evaluated):
        assert rule["health"] == "ok", rule
    exprs = " ".join(r["expr"] for r in rules().values())
    names = sorted(set(re.findall(r"\b(?:recsys|nv_inference)_[a-z_]+", exprs)))
    assert len(names) >= 18, names

    def missing() -> list[str]:
        return [n for n in names if n not in CONDITIONAL and not prom.api("query", query=f"count({n})")["result"]]

    deadline = time.monotonic() + 20
    while missing() and time.monotonic() < deadline:  # the answers' metrics reach Triton once a second
        time.sleep(1.0)
    assert not missing(), f"alert rules read metrics no target exports: {missing()}"
    # the per-instance label survives the scrape under its own name (Prometheus owns `instance`)
    series = prom.api("query", query="recsys_events_applied_total")["result"]
    instances = {s["metric"].get("model_instance") for s in series}
    assert len(instances) == 2 and all(i and i.startswith("recommend") for i in instances), series
    assert not any("exported_instance" in s["metric"] for s in series), series


@pytest.mark.triton
@pytest.mark.slow
def test_an_unreadable_event_log_turns_its_alert_on(watched):
    supervisor, prom, log_dir, art = watched
    bad = log_dir / "events" / "segment-999999.sqlite"
    bad.write_bytes(b"not a database" * 512)
    user = str(art.load_store().users.ids[2])
    try:
        with RecommendClient(supervisor.server.grpc_url) as client:
            def alert_on():
                """RecsysLiveEventsNotApplied pending or firing"""
                client.recommend(user, 5)
                return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "RecsysLiveEventsNotApplied"]

            alerts = prom.wait(alert_on, timeout=60)
        assert alerts[0]["state"] in ("pending", "firing") and alerts[0]["labels"]["severity"] == "page"
        assert alerts[0]["labels"]["model_instance"].startswith("recommend")
        quiet = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]
                 if a["labels"]["alertname"] not in ("RecsysLiveEventsNotApplied",)]
        assert quiet == [], quiet  # nothing else is wrong with this server
    finally:
        bad.unlink(missing_ok=True)
