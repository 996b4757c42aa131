"""Served answer times after one burst of live events: what a large `send_events` call costs the
answers that follow it, on a supervised server (its liveness probe fails after 2 s and reloads the
model, which replays the log: the failure this bound exists to prevent).

    python -m bench.event_burst REPOSITORY [--events 100000] [--answers 15]

Starts the wheel's tritonserver under ``serving.supervisor.Supervisor`` on an exported repository
(its event log in a temporary folder, removed afterwards), warms it with 20 answers, sends one
`send_events` call of ``--events`` clicks by ``--events / 2`` new users on the run's items (one call:
the server takes up to 100,000), then times ``--answers`` answers back to back. Prints each answer's
time in seconds, the largest, and the supervisor's probe failures and reloads during the run.
Everything on 127.0.0.1; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import RunArtifacts
from serving.client import RecommendClient
from serving.event_log import ENV
from serving.supervisor import Supervisor
from serving.triton_server import TritonServer

MAX_PER_CALL = 100_000  # the events model's bound per call


def burst(items: np.ndarray, n: int, at: float, prefix: str) -> pd.DataFrame:
    """``n`` clicks by ``n // 2`` new users (two each) on items drawn from ``items`` at time ``at``."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({"event_id": [f"{prefix}-{i}" for i in range(n)],
                         "user_id": [f"{prefix}-user-{i % max(1, n // 2)}" for i in range(n)],
                         "item_id": items[rng.integers(0, len(items), n)], "timestamp": at + np.arange(n) % 1000,
                         "type": "click"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repository", type=Path, help="an exported Triton repository (python -m export ...)")
    ap.add_argument("--events", type=int, default=MAX_PER_CALL, help=f"events in the call (1..{MAX_PER_CALL})")
    ap.add_argument("--answers", type=int, default=15, help="answers timed after it")
    args = ap.parse_args(argv)
    if not 1 <= args.events <= MAX_PER_CALL or args.answers < 1:
        ap.error(f"--events must be 1..{MAX_PER_CALL} and --answers at least 1")
    art = RunArtifacts(args.repository / "recommend" / "1" / "artifacts")
    store = art.load_store()
    items = np.asarray(store.items.ids, dtype=object)
    known = [str(u) for u in store.users.ids[:5]]
    now = float(store.last_ts.max())
    work = Path(tempfile.mkdtemp(prefix="event_burst_"))
    os.environ[ENV] = str(work / "log")  # the python stubs inherit it
    try:
        server = TritonServer(args.repository, log_path=work / "triton.log")
        with Supervisor(server) as supervisor, RecommendClient(server.grpc_url, timeout=60) as client:
            for i in range(20):
                client.recommend(known[i % len(known)], 10, timestamp=now)
            probes, reloads = supervisor.stats.probe_failures, supervisor.stats.reloads
            t = time.perf_counter()
            statuses = client.send_events(burst(items, args.events, now, "burst"), batch_size=MAX_PER_CALL)
            sent = time.perf_counter() - t
            times = []
            for i in range(args.answers):
                t = time.perf_counter()
                client.recommend(known[i % len(known)], 10, timestamp=now)
                times.append(time.perf_counter() - t)
            time.sleep(2 * supervisor.interval)  # a probe that was due during the last answers
            print(f"send_events: {args.events} events in {sent:.2f} s, {sum(s == 'ok' for s in statuses)} ok")
            print("answers (s): " + " ".join(f"{x:.3f}" for x in times))
            print(f"largest {max(times):.3f} s, median {float(np.median(times)):.3f} s; probe failures "
                  f"{supervisor.stats.probe_failures - probes}, reloads {supervisor.stats.reloads - reloads}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
