"""Ranker cost: teacher vs distilled student vs their int8 twins, alone and through Triton.

For a run directory (``python train.py stage=distill`` writes ``ranker_student.pt``), the run is
exported (``export.repository.export_if_needed``, into ``--repository``), then for every exported ranker:

- onnxruntime latency of one call over 500 real candidates (the served lists of real users,
  :func:`export.repository.ranker_lists`), CPU, 1 and 2 intra-op threads: median and p95 of
  ``--repeats`` calls after a warm-up;
- PyTorch latency of the same call (``ranking.cost.torch_latency_ms``, fp32 rankers, 1 thread);
- FLOPs (``ranking.cost.count_flops`` on the PyTorch model; int8 twins do the same work) and
  parameters, and the size of ``model.onnx`` in bytes;
- end to end: ``recommend`` over gRPC naming each ranker, concurrency 1, ``--requests`` requests
  of real users at fixed timestamps: p50 / p95 ms, plus the mean ``ranker`` stage time from the
  server's ``recsys_stage_seconds`` histogram (BLS call included);
- where the teacher's time goes: onnxruntime's profiler, time per operator type (1 thread).

Usage (from the repository root):
    .venv/bin/python -m bench.ranker_latency --run-dir outputs/<run>
    .venv/bin/python -m bench.ranker_latency --run-dir <run> --requests 100 --no-triton

Prints a markdown table; writes ``ranker_latency.json`` and ``ranker_latency.md`` to ``--out-dir``
(default bench/results/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.config import run_config
from inference.models import onnx_session, run_onnx
from inference.spec import ModelSpec, load_specs
from export.repository import export_if_needed, ranker_lists
from pipeline.artifacts import RunArtifacts
from ranking.cost import count_flops, torch_latency_ms

log = logging.getLogger("bench.ranker_latency")
ROOT = Path(__file__).resolve().parents[1]
TIMESTAMP = 1_700_600_000


def timings_ms(fn, repeats: int, warmup: int) -> np.ndarray:
    """Wall times (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for r in range(repeats):
        start = time.perf_counter()
        fn()
        out[r] = (time.perf_counter() - start) * 1e3
    return out


def ort_latency(path: Path, spec: ModelSpec, rows: dict[str, np.ndarray], threads: int, repeats: int) -> dict:
    """Median / p95 ms of one onnxruntime call over ``rows``."""
    session = onnx_session(path, threads)
    t = timings_ms(lambda: run_onnx(session, spec, rows), repeats, warmup=max(10, repeats // 10))
    return {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95))}


def op_profile(path: Path, spec: ModelSpec, rows: dict[str, np.ndarray], repeats: int = 50) -> dict[str, float]:
    """Share of onnxruntime kernel time per operator type (1 thread), largest first."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(repeats):
            run_onnx(session, spec, rows)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1.0
    return {op: round(d / total, 3) for op, d in sorted(per_op.items(), key=lambda kv: -kv[1])}


def served_latency(repo: Path, rankers: list[str], users: list[str], requests: int) -> dict[str, dict]:
    """p50 / p95 ms of ``recommend`` naming each ranker (gRPC, concurrency 1) and the ranker stage mean."""
    from serving.client import RecommendClient
    from serving.triton_server import TritonServer

    out = {}
    with TritonServer(repo, log_path=Path(tempfile.gettempdir()) / "bench_ranker_latency_triton.log") as server:
        with RecommendClient(server.grpc_url, timeout=30.0) as client:
            for name in rankers:
                for u in users[:10]:  # warm-up (first BLS calls, allocator)
                    client.recommend(u, 10, TIMESTAMP, ranker=name)
                before = _stage(server.metrics_url)
                times = []
                for i in range(requests):
                    start = time.perf_counter()
                    answer = client.recommend(users[i % len(users)], 10, TIMESTAMP + 60 * i, ranker=name)
                    times.append((time.perf_counter() - start) * 1e3)
                    assert answer.ranker == name, (answer.ranker, name)
                after = _stage(server.metrics_url)
                out[name] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                             "requests": requests,
                             "ranker_stage_mean_ms": 1e3 * (after[0] - before[0]) / max(after[1] - before[1], 1)}
    return out


def _stage(url: str) -> tuple[float, float]:
    """(sum seconds, count) of the ranker stage histogram on the metrics page."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    get = [re.search(rf'^recsys_stage_seconds_{k}{{stage="ranker"}} (\S+)$', text, re.M) for k in ("sum", "count")]
    return float(get[0].group(1)), float(get[1].group(1))


def markdown(rows: list[dict], served: dict) -> str:
    head = ("| ranker | ORT 1 thr median ms | ORT 2 thr median ms | ORT 1 thr p95 ms | PyTorch ms | MFLOPs | params "
            "| .onnx KB | e2e p50 ms | e2e p95 ms | ranker stage ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def cell(value, fmt=".2f"):
        return "-" if value is None else format(value, fmt)

    for r in rows:
        s = served.get(r["ranker"], {})
        lines.append(f"| {r['ranker']} | {cell(r['ort_1_thread']['median_ms'], '.3f')} "
                     f"| {cell(r['ort_2_threads']['median_ms'], '.3f')} | {cell(r['ort_1_thread']['p95_ms'], '.3f')} "
                     f"| {cell(r['torch_ms'], '.3f')} | {r['flops'] / 1e6:.1f} | {r['params']:,} "
                     f"| {r['onnx_bytes'] / 1024:.0f} | {cell(s.get('p50_ms'))} | {cell(s.get('p95_ms'))} "
                     f"| {cell(s.get('ranker_stage_mean_ms'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ranker_latency", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, type=Path, help="a finished run (artifacts/, ideally with a student)")
    p.add_argument("--repository", type=Path, default=None,
                   help="where the run is exported (default: <run-dir>/triton_repo_bench)")
    p.add_argument("--candidates", type=int, default=500, help="rows per ranker call (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=300, help="timed onnxruntime calls per setting (default: %(default)s)")
    p.add_argument("--requests", type=int, default=200, help="recommend requests per ranker (default: %(default)s)")
    p.add_argument("--no-triton", action="store_true", help="skip the end-to-end Triton measurement")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")

    run = args.run_dir.resolve()
    repo = (args.repository or run / "triton_repo_bench").resolve()
    repo = export_if_needed(run_config(run, [f"export.repository={repo}"]), run)
    manifest = json.loads((repo / "export.json").read_text())
    art = RunArtifacts(manifest["artifacts"])
    specs = load_specs(repo / "recommend/1/specs.json")
    n_candidates = art.load_settings().n_candidates
    inputs, _ = ranker_lists(art, -(-args.candidates // n_candidates))  # whole served lists of real users
    rows_all = {k: v[: args.candidates] for k, v in inputs.items()}
    store = art.load_store()
    torch.set_num_threads(1)

    rows = []
    for name in manifest["rankers"]:
        base = name.removesuffix("_int8")
        module = art.load_ranker(base, store)
        x = {n: rows_all[n] for n in module.input_names}
        path = repo / name / "1" / "model.onnx"
        rows.append({"ranker": name, "ort_1_thread": ort_latency(path, specs[name], x, 1, args.repeats),
                     "ort_2_threads": ort_latency(path, specs[name], x, 2, args.repeats),
                     "torch_ms": None if name != base else torch_latency_ms(module, x, repeats=args.repeats // 3),
                     "flops": count_flops(module, x), "params": sum(q.numel() for q in module.parameters()),
                     "onnx_bytes": path.stat().st_size, "inputs": len(module.input_names),
                     "groups": list(module.groups)})
        log.info("%s: %s", name, rows[-1])
    profile = {n: op_profile(repo / n / "1" / "model.onnx", specs[n], {k: rows_all[k] for k in specs[n].input_names})
               for n in manifest["rankers"]}
    users = art.user_ids()[:: 7][:50]
    served = {} if args.no_triton else served_latency(repo, manifest["rankers"], users, args.requests)

    by = {r["ranker"]: r for r in rows}
    ratios = {f"{n}_vs_ranker_ort_1_thread": by["ranker"]["ort_1_thread"]["median_ms"] / by[n]["ort_1_thread"]["median_ms"]
              for n in by if n != "ranker"}
    table = markdown(rows, served)
    summary = "\n".join(f"- {k}: {v:.2f}x" for k, v in ratios.items())
    top_ops = ", ".join(f"{op} {share:.0%}" for op, share in list(profile["ranker"].items())[:6])
    text = (f"# Ranker latency, {args.candidates} real candidates (run {run})\n\n{table}\n\nSpeed-up over the teacher "
            f"(onnxruntime, 1 thread, median):\n{summary}\n\nTeacher kernel time by operator: {top_ops}\n")
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "ranker_latency.md").write_text(text)
    (args.out_dir / "ranker_latency.json").write_text(json.dumps({
        "run_dir": str(run), "repository": str(repo), "candidates": args.candidates, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__,
                    "torch": torch.__version__}, "int8_quality": manifest.get("int8", {}),
        "rankers": rows, "served": served, "speedup": ratios, "op_profile": profile}, indent=1))
    log.info("wrote %s", args.out_dir / "ranker_latency.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
