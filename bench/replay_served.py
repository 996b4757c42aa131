"""The served half of ``python -m bench.replay``: live events over gRPC on the real Triton server.

Given the history run and the stream (see :mod:`bench.replay`), with the run exported to a temporary
repository and served by ``tritonserver`` (two ``recommend`` instances, the committed default; the event log in a temporary
directory):

1. **Serving p95 with and without events flowing**: ``requests`` recommend calls at concurrency 1
   (stream users, k=10), first with no events, then while another process sends the stream's
   events at ``events_per_s`` (100/s), one event per call and then ten per call (what a collector
   batching every 100 ms sends); the p95 ratio is the cost of live events to serving.
2. **Event-to-answer visibility on one server**: for ``trials`` users, take the top item of their
   current answer, send an event for it, and time from the send until an answer without that item
   comes back (the event call plus the next recommend).
3. **Across two servers through the shared log**: a second server on the same log directory; the
   event goes to server A, the answers are asked from server B.
4. **Across two servers through Redis** (two "hosts"): a ``redis-server`` on a free port, two
   servers each with its own log directory and ``RECSYS_REDIS_URL`` set: A's ``events`` publishes to
   the stream before acknowledging, B's ``recommend`` reads the stream before each answer.
5. **Ingest throughput**: the rest of the stream in batches of 1,000 events per call.

``visibility_only`` measures 2-4 only (``python -m bench.replay --run-dir DIR --visibility-only``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from export.config import DEFAULTS
from serving.client import RecommendClient
from serving.event_log import ENV, REDIS_ENV
from serving.redis_server import RedisServer
from serving.triton_server import TritonServer


def export(run_dir: Path, repo: Path) -> Path:
    from omegaconf import OmegaConf

    from export.repository import export_if_needed
    from pipeline.artifacts import RunArtifacts

    cfg = OmegaConf.create(RunArtifacts(run_dir).manifest()["config"])
    cfg.export = OmegaConf.merge(OmegaConf.load(DEFAULTS), {"repository": str(repo), "int8": {"enabled": False}})
    return export_if_needed(cfg, run_dir)


def events_frame(stream: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"event_id": [f"{prefix}{i}" for i in range(len(stream))],
                         "user_id": stream["user_id"].astype(str).to_numpy(), "item_id": stream["item_id"].astype(str).to_numpy(),
                         "timestamp": stream["timestamp"].astype(float).to_numpy(), "type": "rating"})


def latencies(url: str, users: list[str], ts: float, k: int) -> list[float]:
    out = []
    with RecommendClient(url) as client:
        for u in users:
            start = time.perf_counter()
            client.recommend(u, k, ts)
            out.append(time.perf_counter() - start)
    return out


def visibility(send_url: str, ask_url: str, users: list[str], ts: float, k: int) -> list[float]:
    """Seconds from sending an event for a user's top item until an answer (from ``ask_url``) drops it."""
    out = []
    with RecommendClient(send_url) as sender, RecommendClient(ask_url) as asker:
        for n, user in enumerate(users):
            top = asker.recommend(user, k, ts).item_ids[0]
            start = time.perf_counter()
            status = sender.send_events(pd.DataFrame([{"event_id": f"vis-{send_url}-{ask_url}-{n}", "user_id": user,
                                                       "item_id": top, "timestamp": ts, "type": "click"}]))
            assert status == ["ok"], status
            for _ in range(200):
                if top not in asker.recommend(user, k, ts).item_ids:
                    break
            else:
                raise RuntimeError(f"event for {user}/{top} not visible after 200 answers")
            out.append(time.perf_counter() - start)
    return out


def _send(url: str, events: pd.DataFrame, batch: int, per_s: float, stop, sent) -> None:
    """A separate process (its own GIL): ``per_s`` events per second in calls of ``batch`` events."""
    with RecommendClient(url) as client:
        next_at, i = time.perf_counter(), 0
        while not stop.is_set() and i < len(events):
            client.send_events(events.iloc[i : i + batch])
            i += batch
            sent.value = i
            next_at += batch / per_s
            time.sleep(max(0.0, next_at - time.perf_counter()))


def with_flow(url: str, events: pd.DataFrame, batch: int, per_s: float, measure) -> tuple[list[float], float]:
    """Run ``measure()`` while another process sends events; returns its result and the achieved events/s."""
    ctx = mp.get_context("spawn")
    stop, sent = ctx.Event(), ctx.Value("i", 0)
    proc = ctx.Process(target=_send, args=(url, events, batch, per_s, stop, sent))
    proc.start()
    time.sleep(1.0)  # the sender is up and sending
    start, first = time.perf_counter(), sent.value
    result = measure()
    rate = (sent.value - first) / (time.perf_counter() - start)
    stop.set()
    proc.join(30)
    return result, rate


def visibility_redis(repo: Path, tmp: Path, users: list[str], ts: float, k: int) -> list[float]:
    """:func:`visibility` from server A to server B, two "hosts" sharing the events through Redis only."""
    saved = {key: os.environ.get(key) for key in (ENV, REDIS_ENV)}
    try:
        with RedisServer(tmp / "redis") as redis:
            os.environ[REDIS_ENV] = redis.url
            os.environ[ENV] = str(tmp / "log_host_a")  # each server copies the environment when it starts
            with TritonServer(repo, log_path=tmp / "redis_a.log") as a:
                os.environ[ENV] = str(tmp / "log_host_b")
                with TritonServer(repo, log_path=tmp / "redis_b.log") as b:
                    latencies(b.grpc_url, users[:20], ts, k)  # warm-up
                    return visibility(a.grpc_url, b.grpc_url, users, ts, k)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def summary(values: list[float]) -> dict:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "max": pct(values, 100), "trials": len(values)}


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def measure_served(run_dir: Path, stream: pd.DataFrame, k: int = 10, requests: int = 500, events_per_s: float = 100.0,
                   trials: int = 100, visibility_only: bool = False) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = export(run_dir, tmp / "repo")
        os.environ[ENV] = str(tmp / "event_log")
        try:
            with TritonServer(repo, log_path=tmp / "a.log") as a:
                users = stream["user_id"].astype(str).drop_duplicates().tolist()
                ts = float(stream["timestamp"].min())
                sample = [users[i % len(users)] for i in range(requests)]
                latencies(a.grpc_url, sample[:50], ts, k)  # warm-up
                if not visibility_only:
                    quiet = latencies(a.grpc_url, sample, ts, k)
                    out["serving_ms"] = {"p50_quiet": pct(quiet, 50), "p95_quiet": pct(quiet, 95)}
                    events = events_frame(stream, "flow-")
                    for batch in (1, 10):  # one event per call, or what a collector sends every 100 ms
                        busy, rate = with_flow(a.grpc_url, events, batch, events_per_s, lambda: latencies(a.grpc_url, sample, ts, k))
                        out["serving_ms"][f"events_{batch}_per_call"] = {
                            "p50": pct(busy, 50), "p95": pct(busy, 95), "events_per_s": round(rate, 1),
                            "p95_ratio": round(pct(busy, 95) / pct(quiet, 95), 3)}
                        events = events_frame(stream, f"flow{batch}-")
                vis_users = users[-trials:]
                one = visibility(a.grpc_url, a.grpc_url, vis_users, ts + 1, k)
                out["visibility_one_server_ms"] = summary(one)
                with TritonServer(repo, log_path=tmp / "b.log") as b:
                    two = visibility(a.grpc_url, b.grpc_url, users[:trials], ts + 2, k)
                out["visibility_two_servers_ms"] = summary(two)
                if not visibility_only:
                    rest = events_frame(stream, "bulk-")
                    with RecommendClient(a.grpc_url, timeout=120) as client:
                        start = time.perf_counter()
                        status = client.send_events(rest, batch_size=1000)
                        seconds = time.perf_counter() - start
                    out["ingest"] = {"events": len(rest), "batch": 1000, "events_per_s": round(len(rest) / seconds, 1),
                                     "ok": status.count("ok")}
            out["visibility_two_servers_redis_ms"] = summary(visibility_redis(repo, tmp, users[:trials], ts + 3, k))
        finally:
            os.environ.pop(ENV, None)
    return out
