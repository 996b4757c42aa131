"""End-to-end demo: export (if needed) -> start Triton -> real gRPC requests -> stop.

``python -m serving.demo --run-dir outputs/<run>`` (default: the newest complete run in
outputs/). Sends a known user, an unknown user (cold start), a request with filters and a
malformed one, prints the answers and the product metrics, then stops the server.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

from export.config import run_config, workspace_root
from export.repository import export_if_needed
from pipeline.artifacts import RunArtifacts
from serving.cli import format_answer
from serving.client import RecommendClient
from serving.metric_buffer import FLUSH_S
from serving.triton_server import TritonServer

def latest_run(*outputs: Path) -> Path:
    """The newest run directory under any of ``outputs`` with a complete set of pipeline artifacts."""
    runs = sorted({p.parent.parent.resolve() for out in outputs for p in out.glob("*/artifacts/manifest.json")
                   if _servable(p.parent)}, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no trained run under {' or '.join(map(str, dict.fromkeys(outputs)))}; "
                                "run `python train.py` first or pass --run-dir")
    return runs[-1]


def _servable(art_dir: Path) -> bool:
    try:
        RunArtifacts(art_dir).check()
        return True
    except FileNotFoundError:
        return False


def demo_requests(art: RunArtifacts) -> list[tuple[str, dict]]:
    """(title, request kwargs) for a known user, an unknown one, a filtered request and a bad one."""
    store, settings = art.load_store(), art.load_settings()
    known = store.users.ids[int(np.argmax(np.diff(store.seen.indptr) > 0))]
    now = int(store.last_ts.max())  # the end of the data, not today
    encoder = store.features.encoders["item"].get(settings.category_feature) if settings.category_feature else None
    vocab = encoder.state.get("vocab", []) if encoder is not None else []
    filters = {"exclude_categories": [str(vocab[0])]} if vocab else {}
    return [
        (f"known user {known}", {"user_id": known, "k": 10, "timestamp": now}),
        ("unknown user (cold start)", {"user_id": "new-user-0001", "k": 10, "timestamp": now}),
        (f"known user {known}, filters {filters}", {"user_id": known, "k": 5, "timestamp": now, **filters}),
        ("malformed: k=0", {"user_id": known, "k": 0}),
    ]


def product_metrics(url: str) -> str:
    """The recsys_* counters (no histogram buckets) from the Prometheus endpoint."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return "\n".join(line for line in text.splitlines()
                     if line.startswith("recsys_") and "_bucket" not in line)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    p = argparse.ArgumentParser(prog="recsys-demo", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=None,
                   help="trained run (default: the newest under ./outputs/, or under the source checkout's "
                        "outputs/ for an editable install)")
    p.add_argument("overrides", nargs="*", help="export overrides, e.g. export.repository=/tmp/repo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        run_dir = (args.run_dir or latest_run(Path.cwd() / "outputs", workspace_root() / "outputs")).resolve()
        RunArtifacts(run_dir).check()
        cfg = run_config(run_dir, args.overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.export.flavour != "wheel":
        print("error: the demo runs the nvidia-pytriton wheel's server; use export.flavour=wheel", file=sys.stderr)
        return 2
    def interrupt(signum, _frame):  # a second Ctrl-C must not abandon a half-stopped server
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        return _demo(cfg, run_dir)
    except KeyboardInterrupt:  # Ctrl-C: the export is swapped in whole or not at all; the server is stopped
        print("interrupted: the demo stopped (tritonserver stopped if it had started)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)


def _demo(cfg, run_dir: Path) -> int:
    print(f"export of {run_dir} -> {cfg.export.repository}", flush=True)
    repo = export_if_needed(cfg, run_dir)
    started = time.monotonic()
    with TritonServer(repo) as server:
        print(f"tritonserver ready in {time.monotonic() - started:.1f} s: grpc {server.grpc_url}, "
              f"metrics {server.metrics_url}, models {', '.join(server.ready_models())}\n", flush=True)
        with RecommendClient(server.grpc_url) as client:
            for title, request in demo_requests(RunArtifacts(repo / "recommend" / "1" / "artifacts")):
                print(f"== {title}")
                try:
                    t = time.perf_counter()
                    answer = client.recommend(**request)
                    print(format_answer(answer), f"\n({(time.perf_counter() - t) * 1e3:.1f} ms)\n")
                except InferenceServerException as err:
                    print(f"rejected: {err.status()}: {err.message()}\n")
        time.sleep(FLUSH_S + 0.5)  # recommend sends its recsys_* metrics once a second
        print("== product metrics\n" + product_metrics(server.metrics_url))
    print("tritonserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
