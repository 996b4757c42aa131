"""Load benchmark of the served ``recommend`` model against the in-process pipeline, in one run.

Given a trained run, it exports the Triton model repository if needed (``export.repository``), starts
the real server (``serving.triton_server.TritonServer``, 127.0.0.1 only), warms it up and, for each
concurrency level, sends real recommend requests over gRPC (``serving.client.RecommendClient``,
one client per thread): known user ids from the run's feature store plus a share of unknown ids
(cold start), k=10, one fixed timestamp (the end of the data). Each level is bounded by
``--requests`` and ``--seconds``; every latency is recorded and every failed call counted (an
exception, or fewer than k items). Server-side time per request is read from Triton's inference
statistics and the product's ``recsys_stage_seconds`` histogram, before and after each level.

Then the SAME requests go through the in-process pipeline (``pipeline.artifacts.load_pipeline``),
sequentially, with ``torch.set_num_threads(1)``: once with the PyTorch models and once with the
exported ONNX models on onnxruntime (what the Triton models run), so the Triton overhead is a
ratio measured in the same run on the same machine state.

Usage (from the repository root):
    .venv/bin/python -m bench.load --run-dir RUN                       # exports to a temp dir
    .venv/bin/python -m bench.load --run-dir RUN --repository DIR      # reuse / write DIR
    .venv/bin/python -m bench.load --run-dir RUN --p95-target-ms 10    # exit 1 when missed
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.load --run-dir RUN
        # the server inherits the environment: one BLAS/OpenMP thread in every process (see README)

Writes ``load_<name>.md`` (tables) and ``load_<name>.json`` (settings, rows, raw latencies) to
``--out-dir``. Exit status: 0, or 1 when a request failed or the p95 target at concurrency 1
was missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import RunArtifacts

log = logging.getLogger("bench.load")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("user_tower", "retrieval", "features", "ranker", "rules", "total")


@dataclass
class Phase:
    """One measured setting: latencies of the requests it completed, and its failures."""

    setting: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    known: list[bool] = field(default_factory=list)  # per completed request: a known user id?
    failures: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failure messages
    wall_s: float = 0.0
    server_ms: dict[str, float] = field(default_factory=dict)  # mean per request, by stage / model
    ranker_ms: list[float] = field(default_factory=list)  # in process: the ranker stage of each request

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.failures

    def percentile(self, q: float, known: bool | None = None) -> float:
        lat = np.asarray(self.latencies_ms)
        if known is not None:
            lat = lat[np.asarray(self.known, bool) == known]
        return float(np.percentile(lat, q)) if len(lat) else float("nan")

    def summary(self) -> dict:
        return {"setting": self.setting, "concurrency": self.concurrency, "requests": self.requests,
                "failures": self.failures, "p50_ms": self.percentile(50), "p95_ms": self.percentile(95),
                "p99_ms": self.percentile(99), "mean_ms": float(np.mean(self.latencies_ms or [np.nan])),
                "p50_known_ms": self.percentile(50, True), "p50_cold_ms": self.percentile(50, False),
                "rps": len(self.latencies_ms) / self.wall_s if self.wall_s else float("nan"),
                "wall_s": self.wall_s, "server_ms": self.server_ms, "errors": self.errors,
                "ranker_p50_ms": float(np.percentile(self.ranker_ms, 50)) if self.ranker_ms else float("nan")}


def make_requests(art: RunArtifacts, n: int, unknown_share: float, k: int, seed: int) -> list[dict]:
    """``n`` request kwargs: known users (with history) sampled with a seed, a share of unknown ids.

    Every request carries the same timestamp, the last one in the data, so context features and
    answers do not depend on when the benchmark runs.
    """
    store = art.load_store()
    users = store.users.ids
    with_history = np.flatnonzero(np.diff(store.seen.indptr) > 0)
    if not len(with_history):
        raise ValueError(f"{art.path('store')} has no user with history; is it a trained run?")
    timestamp = int(store.last_ts.max())
    rng = np.random.default_rng(seed)
    unknown = rng.random(n) < unknown_share
    picks = rng.choice(with_history, size=n, replace=True)
    return [{"user_id": f"bench-new-user-{i:06d}" if unknown[i] else str(users[picks[i]]), "k": k,
             "timestamp": timestamp} for i in range(n)]


# --- server side ---------------------------------------------------------------------------------

def server_counters(grpc_url: str, metrics_url: str) -> dict[str, float]:
    """Cumulative server-side times (ms) and counts: Triton's per-model statistics, recsys stages."""
    import tritonclient.grpc as grpcclient

    from serving.metric_buffer import FLUSH_S

    time.sleep(FLUSH_S + 0.3)  # recommend sends its recsys_* metrics once a second
    out: dict[str, float] = {}
    with grpcclient.InferenceServerClient(grpc_url) as client:
        stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    for m in stats:
        s = m.get("inference_stats", {})
        out[f"{m['name']}.count"] = float(s.get("success", {}).get("count", 0))
        out[f"{m['name']}.executions"] = float(m.get("execution_count", 0))
        for part in ("queue", "compute_input", "compute_infer", "compute_output"):
            out[f"{m['name']}.{part}"] = float(s.get(part, {}).get("ns", 0)) / 1e6
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        hit = re.match(r'recsys_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if hit:
            kind, stage, value = hit.groups()
            out[f"stage.{stage}.{kind}"] = float(value) * (1e3 if kind == "sum" else 1.0)
    return out


def per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Mean server-side ms per recommend request between two counter snapshots."""
    d = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    out = {}
    for stage in STAGES:
        if d.get(f"stage.{stage}.count"):
            out[f"stage:{stage}"] = d[f"stage.{stage}.sum"] / max(n, 1)
    for model in ("recommend", "user_tower", "ranker", "ranker_student"):
        if d.get(f"{model}.count"):
            out[f"{model}:queue"] = d[f"{model}.queue"] / max(n, 1)
            out[f"{model}:compute"] = sum(d[f"{model}.{p}"] for p in ("compute_input", "compute_infer",
                                                                        "compute_output")) / max(n, 1)
            out[f"{model}:executions"] = d[f"{model}.executions"] / max(n, 1)
    return out


def triton_phase(url: str, requests: list[dict], concurrency: int, seconds: float, timeout: float,
                 setting: str = "triton gRPC", outputs: tuple[str, ...] | None = None) -> Phase:
    """Send ``requests`` from ``concurrency`` threads (one gRPC client each) until done or ``seconds``.
    ``outputs``: ask for these outputs (default: the client's, i.e. ``answer`` alone)."""
    import tritonclient.grpc as grpcclient

    from serving.client import RecommendClient

    phase = Phase(setting, concurrency)
    lock, cursor = threading.Lock(), iter(range(len(requests)))
    deadline = time.monotonic() + seconds

    def worker() -> None:
        with RecommendClient(url, timeout=timeout) as client:
            if outputs is not None:
                client._outputs = [grpcclient.InferRequestedOutput(name) for name in outputs]
            while time.monotonic() < deadline:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                r = requests[i]
                start = time.perf_counter()
                try:
                    answer = client.recommend(**r)
                    ok, why = len(answer.item_ids) == r["k"], f"{len(answer.item_ids)} items for k={r['k']}"
                except Exception as err:  # noqa: BLE001 - a failed request is counted, not fatal
                    ok, why = False, f"{type(err).__name__}: {err}"
                ms = (time.perf_counter() - start) * 1e3
                with lock:
                    if ok:
                        phase.latencies_ms.append(ms)
                        phase.known.append(not r["user_id"].startswith("bench-new-user-"))
                    else:
                        phase.failures += 1
                        if len(phase.errors) < 5:
                            phase.errors.append(why[:300])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.wall_s = time.perf_counter() - start
    return phase


# --- the protocol's floor -------------------------------------------------------------------------

ECHO_MODEL = '''"""The floor of a served answer: recommend's protocol, the python backend, no pipeline (bench.load --floor)."""
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

from pipeline.pipeline import Recommendation
from serving.request import encode_recommendation


class TritonPythonModel:
    def initialize(self, args):
        self.items = [str(1000 + i) for i in range(100)]
        self.titles = {i: f"A film title of typical length ({i})" for i in self.items}

    def execute(self, requests):
        out = []
        for request in requests:
            arrays = {t.name(): t.as_numpy() for t in request.inputs()}  # read like recommend does
            k = max(1, min(int(arrays["k"][0]), len(self.items)))
            answer = Recommendation("u", "known_user", self.items[:k], [1 - i / 200 for i in range(k)], ["ranked"] * k,
                                    ["collaborative"] * k)
            tensors = encode_recommendation(answer, self.titles, "ranker", uuid.uuid4().hex,
                                            request.requested_output_names())
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in tensors.items()]))
        return out
'''


def floor_phases(args, repo: Path, requests: list[dict]) -> list[Phase]:
    """The same requests (concurrency 1) against an echo model with ``recommend``'s config and wire format
    that answers a fixed list of k items: what the python backend, gRPC and the client cost with no
    pipeline, asked for ``answer`` alone and for the eight named outputs."""
    from serving.protocol import FIELDS
    from serving.triton_server import TritonServer

    with tempfile.TemporaryDirectory(prefix="bench-load-floor-") as tmp:
        echo = Path(tmp) / "recommend"
        (echo / "1").mkdir(parents=True)
        (echo / "1" / "model.py").write_text(ECHO_MODEL)
        shutil.copy(repo / "recommend" / "config.pbtxt", echo / "config.pbtxt")
        set_instances(echo / "config.pbtxt", 1)
        server = TritonServer(Path(tmp))
        try:
            server.start().wait_ready(args.ready_timeout)
            triton_phase(server.grpc_url, requests[:args.warmup], 1, args.seconds, args.timeout)
            phases = [triton_phase(server.grpc_url, requests, 1, args.seconds, args.timeout, "floor: echo, answer"),
                      triton_phase(server.grpc_url, requests, 1, args.seconds, args.timeout,
                                   "floor: echo, 8 named outputs", FIELDS)]
        finally:
            server.stop()
    for p in phases:
        log.info("%s: %d requests, p50 %.2f ms, p95 %.2f ms", p.setting, p.requests, p.percentile(50), p.percentile(95))
    return phases


# --- in process ----------------------------------------------------------------------------------

def inprocess_phase(setting: str, pipeline, requests: list[dict], seconds: float, warmup: int,
                    pace_ms: float = 0.0) -> Phase:
    """The same requests through ``pipeline.recommend``, one at a time, with per-stage times.
    ``pace_ms``: idle this long before each request (as a served instance idles while the client,
    gRPC and the server run); not counted in its latency."""
    from pipeline.pipeline import Request

    totals: dict[str, float] = {}
    ranker_ms: list[float] = []

    def on_stage(stage: str, seconds: float) -> None:  # the served model's recsys_stage_seconds stages
        if stage != "total":
            totals[f"stage:{stage}"] = totals.get(f"stage:{stage}", 0.0) + seconds * 1e3
        if stage == "ranker":
            ranker_ms.append(seconds * 1e3)
    for r in requests[:warmup]:
        pipeline.recommend([Request(**r)])
    totals.clear()
    phase = Phase(setting, 1)
    deadline = time.monotonic() + seconds
    start = time.perf_counter()
    for r in requests:
        if time.monotonic() >= deadline:
            break
        if pace_ms:
            time.sleep(pace_ms / 1e3)
        t = time.perf_counter()
        try:
            rec = pipeline.recommend([Request(**r)], on_stage=on_stage)[0]
            ok, why = len(rec.item_ids) == r["k"], f"{len(rec.item_ids)} items for k={r['k']}"
        except Exception as err:  # noqa: BLE001
            ok, why = False, f"{type(err).__name__}: {err}"
        ms = (time.perf_counter() - t) * 1e3
        if ok:
            phase.latencies_ms.append(ms)
            phase.known.append(rec.route == "known_user")
        else:
            phase.failures += 1
            phase.errors.append(why[:300]) if len(phase.errors) < 5 else None
    phase.wall_s = time.perf_counter() - start
    phase.ranker_ms = ranker_ms
    n = max(phase.requests, 1)
    phase.server_ms = {k: v / n for k, v in sorted(totals.items())}
    phase.server_ms["stage:total"] = float(np.mean(phase.latencies_ms or [np.nan]))
    return phase


# --- report --------------------------------------------------------------------------------------

def markdown(rows: list[dict], title: str) -> str:
    """The results table, a server-side time table, and the settings line."""
    base = {r["setting"]: r["p50_ms"] for r in rows if r["setting"].startswith("in-process")}
    torch_p50, ort_p50 = base.get("in-process PyTorch", np.nan), base.get("in-process onnxruntime", np.nan)
    out = [f"### {title}", "",
           "| setting | concurrency | requests | failures | p50 ms | p95 ms | p99 ms | p50 known / cold ms "
           "| RPS | p50 / in-process PyTorch p50 | p50 / in-process ORT p50 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['setting']} | {r['concurrency']} | {r['requests']} | {r['failures']} "
                   f"| {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} "
                   f"| {r['p50_known_ms']:.2f} / {r['p50_cold_ms']:.2f} | {r['rps']:.1f} "
                   f"| {r['p50_ms'] / torch_p50:.2f} | {r['p50_ms'] / ort_p50:.2f} |")
    keys = [k for k in ("stage:user_tower", "stage:retrieval", "stage:features", "stage:ranker", "stage:rules",
                        "stage:total", "recommend:queue", "recommend:compute", "user_tower:queue",
                        "user_tower:compute", "ranker:queue", "ranker:compute")
            if any(k in r["server_ms"] for r in rows)]
    out += ["", "Mean ms per request where the time goes (Triton rows: server side, from `recsys_stage_seconds` "
            "and Triton's per-model statistics; in-process rows: the same pipeline steps timed in the "
            "benchmark). user_tower includes building its inputs from the store; `recommend:compute` is the whole model execution.", "",
            "| setting | concurrency | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for r in rows:
        cells = [f"{r['server_ms'][k]:.2f}" if k in r["server_ms"] else "" for k in keys]
        out.append(f"| {r['setting']} | {r['concurrency']} | " + " | ".join(cells) + " |")
    ratio = ratios(rows)
    if ratio:
        out += ["", "Ratios that survive machine noise (same run, same machine state):", ""]
        out += [f"- {k}: {v:.2f}" for k, v in ratio.items()]
    return "\n".join(out) + "\n"


def ratios(rows: list[dict]) -> dict[str, float]:
    """Triton c=1 p50 / in-process ORT p50, in-process ORT p50 / its ranker stage's p50, each stage's
    share of the in-process ORT time, and requests/s and p95 of the highest concurrency against c=1."""
    triton = {r["concurrency"]: r for r in rows if r["setting"] == "triton gRPC"}
    ort = next((r for r in rows if r["setting"] == "in-process onnxruntime"), None)
    out: dict[str, float] = {}
    if ort is not None:
        if 1 in triton:
            out["Triton p50 / in-process ORT p50 (c=1)"] = triton[1]["p50_ms"] / ort["p50_ms"]
        out["in-process ORT p50 / ranker-alone p50"] = ort["p50_ms"] / ort["ranker_p50_ms"]
        total = sum(v for k, v in ort["server_ms"].items() if k.startswith("stage:") and k != "stage:total")
        for k, v in ort["server_ms"].items():
            if k.startswith("stage:") and k != "stage:total" and total:
                out[f"share of in-process time: {k[6:]}"] = v / total
    floor = next((r for r in rows if r["setting"] == "floor: echo, answer"), None)
    if floor is not None and 1 in triton:
        out["floor p50 (echo, answer) ms"] = floor["p50_ms"]
        named = next((r for r in rows if r["setting"] == "floor: echo, 8 named outputs"), None)
        if named is not None:
            out["floor p50 8 named outputs / answer"] = named["p50_ms"] / floor["p50_ms"]
        if ort is not None:
            out["(Triton p50 - floor p50) / in-process ORT p50 (c=1)"] = (triton[1]["p50_ms"] - floor["p50_ms"]) / ort["p50_ms"]
    paced = next((r for r in rows if r["setting"].startswith("in-process onnxruntime, paced")), None)
    if paced is not None and ort is not None:
        out["in-process ORT p50 paced / back to back"] = paced["p50_ms"] / ort["p50_ms"]
        if 1 in triton:
            out["Triton p50 / paced in-process ORT p50 (c=1)"] = triton[1]["p50_ms"] / paced["p50_ms"]
    if 1 in triton and len(triton) > 1:
        top = max(triton)
        out[f"requests/s c={top} / c=1"] = triton[top]["rps"] / triton[1]["rps"]
        out[f"p95 c={top} / c=1"] = triton[top]["p95_ms"] / triton[1]["p95_ms"]
    return out


def set_instances(config: Path, n: int) -> None:
    """Set the ``instance_group`` count of a model's config.pbtxt."""
    if n < 1:
        raise SystemExit(f"--instances {n}: give at least 1")
    text, hits = re.subn(r"count: \d+ kind: KIND_CPU", f"count: {n} kind: KIND_CPU", config.read_text())
    if hits != 1:
        raise SystemExit(f"{config}: expected one `count: N kind: KIND_CPU` instance group, found {hits}")
    config.write_text(text)
    log.info("%s: %d instance(s)", config, n)


def export_repository(run_dir: Path, repository: Path | None) -> tuple[Path, bool]:
    """The run's Triton repository: ``repository`` (exported into it if it does not hold this run),
    or a new temp directory. Returns (path, whether it is a temp dir to remove)."""
    from export.config import run_config
    from export.repository import export_if_needed

    temp = repository is None
    repo = Path(tempfile.mkdtemp(prefix="bench-load-repo-")) if temp else repository.resolve()
    cfg = run_config(run_dir, [f"export.repository={repo}", "export.flavour=wheel"])
    try:
        return export_if_needed(cfg, run_dir), temp
    except BaseException:
        if temp:
            shutil.rmtree(repo, ignore_errors=True)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run-dir", type=Path, required=True, help="trained run (holds artifacts/)")
    p.add_argument("--repository", type=Path, default=None,
                   help="Triton model repository to use; exported into when it does not hold this run's "
                        "export (default: a temp dir, removed afterwards)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results",
                   help="where load_<name>.{md,json} go (default: bench/results/, git-ignored)")
    p.add_argument("--name", default=None, help="result file suffix (default: the run directory's name)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="levels (default: 1 4 16)")
    p.add_argument("--requests", type=int, default=1000, help="requests per level at most (default: 1000)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most (default: 30)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up requests, not measured (default: 50)")
    p.add_argument("--unknown-share", type=float, default=0.1,
                   help="share of requests with an unknown user id, i.e. cold start (default: 0.1)")
    p.add_argument("--k", type=int, default=10, help="list length per request (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request sample (default: 0)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per gRPC call (default: 10)")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for the server (default: 180)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads for the in-process pipeline (default: 1)")
    p.add_argument("--skip-onnx", action="store_true", help="no in-process onnxruntime run")
    p.add_argument("--instances", type=int, default=None,
                   help="recommend instances: rewrites instance_group count in the repository's "
                        "recommend/config.pbtxt (default: as it is, 2)")
    p.add_argument("--floor", action="store_true",
                   help="also measure an echo model with recommend's config (no pipeline): the python "
                        "backend's and gRPC's own cost, with the answer output and with the named outputs")
    p.add_argument("--pace-ms", type=float, default=0.0,
                   help="also run the in-process onnxruntime pipeline idling this long before each request, "
                        "as a served instance idles between calls (on these VMs a core that idled a few ms "
                        "runs the next request ~1.4x slower; docs/serving.md). Default 0: not run")
    p.add_argument("--p95-target-ms", type=float, default=None,
                   help="target for the Triton p95 at concurrency 1; exit 1 when missed")
    args = p.parse_args(argv)
    if args.requests < 1 or args.seconds <= 0 or not 0 <= args.unknown_share <= 1 or min(args.concurrency) < 1 \
            or args.pace_ms < 0:
        p.error("--requests >= 1, --seconds > 0, --unknown-share in [0, 1], --concurrency >= 1 and --pace-ms >= 0 "
                "are required")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    from serving.triton_server import TritonServer

    run_dir = args.run_dir.resolve()
    art = RunArtifacts(run_dir).check()
    name = args.name or run_dir.name
    requests = make_requests(art, args.requests + args.warmup, args.unknown_share, args.k, args.seed)
    warm, measured = requests[:args.warmup], requests[args.warmup:]
    loadavg_start = os.getloadavg()
    repo, temp = export_repository(run_dir, args.repository)
    if args.instances is not None:
        set_instances(repo / "recommend" / "config.pbtxt", args.instances)
    phases: list[Phase] = []
    server = TritonServer(repo)
    try:
        started = time.monotonic()
        server.start().wait_ready(args.ready_timeout)
        log.info("tritonserver (PID %s) ready in %.1f s on %s", server.pid, time.monotonic() - started, server.grpc_url)
        # Warm-up: sequential, then one burst at the highest concurrency (threads, channels, stubs).
        triton_phase(server.grpc_url, warm, 1, args.seconds, args.timeout)
        triton_phase(server.grpc_url, warm, max(args.concurrency), args.seconds, args.timeout)
        for c in args.concurrency:
            before = server_counters(server.grpc_url, server.metrics_url)
            phase = triton_phase(server.grpc_url, measured, c, args.seconds, args.timeout)
            phase.server_ms = per_request(before, server_counters(server.grpc_url, server.metrics_url),
                                          phase.requests)
            log.info("triton c=%d: %d requests, %d failed, p50 %.2f ms, p95 %.2f ms", c, phase.requests,
                     phase.failures, phase.percentile(50), phase.percentile(95))
            phases.append(phase)
    finally:
        server.stop()
        log.info("tritonserver stopped (log %s)", server.log_path)
    if args.floor:
        phases += floor_phases(args, repo, measured[:max(p.requests for p in phases)])
    try:
        inprocess(args, art, repo, measured[:max(p.requests for p in phases)], phases)
    finally:
        if temp:
            shutil.rmtree(repo, ignore_errors=True)
    return report(args, run_dir, art, repo, name, loadavg_start, phases)


def inprocess(args, art: RunArtifacts, repo: Path, same: list[dict], phases: list[Phase]) -> None:
    """The in-process phases (appended to ``phases``) on the requests the Triton levels sent."""
    # In process, after the server is gone (it would share the 2 cores otherwise).
    torch.set_num_threads(args.torch_threads)
    phases.append(inprocess_phase("in-process PyTorch", art.load_pipeline(), same, args.seconds, args.warmup))
    if not args.skip_onnx:
        from inference.models import OnnxCallable
        from inference.spec import load_specs

        specs = load_specs(repo / "recommend" / "1" / "specs.json")
        ort_pipe = art.load_pipeline(
            user_encoder=OnnxCallable(repo / "user_tower" / "1" / "model.onnx", specs["user_tower"]),
            rankers={"ranker": OnnxCallable(repo / "ranker" / "1" / "model.onnx", specs["ranker"])})
        phases.append(inprocess_phase("in-process onnxruntime", ort_pipe, same, args.seconds, args.warmup))
        if args.pace_ms:
            phases.append(inprocess_phase(f"in-process onnxruntime, paced {args.pace_ms:g} ms", ort_pipe, same,
                                          args.seconds, args.warmup, args.pace_ms))
    for p in phases[len(args.concurrency) + 2 * args.floor:]:
        log.info("%s: %d requests, p50 %.2f ms, p95 %.2f ms", p.setting, p.requests, p.percentile(50),
                 p.percentile(95))


def report(args, run_dir: Path, art: RunArtifacts, repo: Path, name: str, loadavg_start, phases: list[Phase]) -> int:
    """Print and write the tables; returns the exit status (1: a failure or a missed p95 target)."""
    rows = [p.summary() for p in phases]
    settings = {"run_dir": str(run_dir), "repository": str(repo), "command": shlex.join(sys.argv),
                "n_items": len(art.item_ids()), "index": art.index_settings(), "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
                "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                "cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": args.torch_threads,
                **{k: v for k, v in vars(args).items() if k not in ("run_dir", "repository", "out_dir")}}
    c1 = next((r for r in rows if r["setting"] == "triton gRPC" and r["concurrency"] == 1), None)
    failures = sum(r["failures"] for r in rows if r["setting"] == "triton gRPC")
    verdict = {"failures": failures, "p95_c1_ms": c1["p95_ms"] if c1 else None, "p95_target_ms": args.p95_target_ms,
               "ratios": ratios(rows),
               "met": failures == 0 and (args.p95_target_ms is None or (c1 is not None and c1["p95_ms"]
                                                                          <= args.p95_target_ms))}
    index = settings["index"] or {}
    index_text = " ".join(f"{k}={v}" for k, v in index.items() if k in ("factory", "nprobe", "ef_search") and v)
    title = (f"{name}: {settings['n_items']:,} items, index {index_text or '?'}, k={args.k}, "
             f"{args.unknown_share:.0%} unknown users, "
             f"OMP/OpenBLAS threads {settings['thread_env']['OMP_NUM_THREADS'] or 'default'}"
             f"/{settings['thread_env']['OPENBLAS_NUM_THREADS'] or 'default'}")
    text = (markdown(rows, title) + f"\nload average at start {loadavg_start[0]:.1f}, at end "
            f"{settings['loadavg_end'][0]:.1f} ({settings['cpus']} CPUs); verdict: {verdict}\n")
    print("\n" + text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"load_{name}.md").write_text(text)
    (args.out_dir / f"load_{name}.json").write_text(json.dumps(
        {"settings": settings, "verdict": verdict, "rows": rows,
         "latencies_ms": {f"{p.setting}@{p.concurrency}": [round(x, 3) for x in p.latencies_ms] for p in phases}},
        indent=1, default=str))
    return 0 if verdict["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
