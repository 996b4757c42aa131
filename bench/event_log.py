"""Throughput and latency of the durable event log (``events.log.EventLog``).

What the serving path pays per request is one ``append_*`` call (one transaction, one commit).
For each setting this appends unique rows in a loop for ``--seconds`` seconds into a fresh log
under ``--dir`` and times every call:

- events, batch 1 and batch 100, ``durability="full"`` (an fsync of the WAL per commit) and
  ``"normal"`` (no fsync at commit);
- impressions of 50 items, batch 1, full (the list served to one request);
- impressions of 10 items, batch 1, normal, fresh ids (what ``recommend`` writes before each answer:
  ``IMPRESSION_DURABILITY`` normal, ``new_ids=True``);
- events, batch 1, full and normal, with 16 live segments (the id check probes every live
  segment; ``normal`` shows that CPU cost without the fsync's noise).

Usage (from the repository root):
    .venv/bin/python -m bench.event_log --dir /tmp/event_log_bench --seconds 10

Prints a markdown table (appends/s, rows/s, p50 / p95 / p99 ms per call) and the machine state;
``--json`` also writes the rows. The logs it writes are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

from events.log import MIN_SEGMENT_BYTES, EventLog, log_stats

ITEMS_PER_IMPRESSION = 50
PREFILL_SEGMENTS = 16


def _filesystem(path: Path) -> str:
    """The filesystem type under ``path`` (fsync cost depends on it), from /proc/mounts."""
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mount, fstype, *_ = line.split()
                if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def _rows(kind: str, prefix: str, start: int, n: int, now: float, items: int = ITEMS_PER_IMPRESSION) -> list[dict]:
    if kind == "events":
        return [{"event_id": f"{prefix}-{i}", "user_id": f"u{i % 1000}", "item_id": f"i{i % 5000}",
                 "timestamp": now, "type": "click"} for i in range(start, start + n)]
    return [{"request_id": f"{prefix}-{i}", "user_id": f"u{i % 1000}",
             "items": [f"i{(i + p) % 5000}" for p in range(items)],
             "scores": [1.0 / (p + 1) for p in range(items)],
             "reasons": ["collaborative"] * items, "route": "known", "ranker": "ranker",
             "model_version": "1", "timestamp": now} for i in range(start, start + n)]


def _prefill(directory: Path) -> None:
    """PREFILL_SEGMENTS small segments, so the measured appends probe that many for their ids."""
    with EventLog(directory, max_segment_bytes=MIN_SEGMENT_BYTES, durability="normal") as log:
        i = 0
        while log.stats()["segments"] < PREFILL_SEGMENTS:
            log.append_events(_rows("events", "prefill", i, 100, time.time()))
            i += 100


def run_setting(directory: Path, kind: str, batch: int, durability: str, seconds: float,
                prefill: bool = False, items: int = ITEMS_PER_IMPRESSION, new_ids: bool = False) -> dict:
    """Append batches of unique rows for ``seconds``; latency of every call (``items`` per impression;
    ``new_ids``: impressions appended as ``recommend`` does, without the id search)."""
    if prefill:
        _prefill(directory)
    latencies, i = [], 0
    with EventLog(directory, durability=durability) as log:
        if kind == "events":
            append = log.append_events
        else:
            def append(rows):
                return log.append_impressions(rows, new_ids=new_ids)
        for w in range(20):  # warm-up: connections, page cache
            append(_rows(kind, "warmup", w * batch, batch, time.time(), items))
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            rows = _rows(kind, "bench", i, batch, time.time(), items)
            t = time.perf_counter()
            stored = append(rows)
            latencies.append(time.perf_counter() - t)
            assert all(stored), "a unique row was reported as a duplicate"
            i += batch
        wall = time.perf_counter() - start
        segments = log.stats()["segments"]
    ms = np.asarray(latencies) * 1e3
    return {"kind": kind, "items": items, "new_ids": new_ids, "batch": batch, "durability": durability,
            "live_segments": segments,
            "calls": len(latencies), "rows": i, "seconds": round(wall, 2),
            "appends_per_s": len(latencies) / wall, "rows_per_s": i / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def table(results: list[dict]) -> str:
    lines = ["| rows | batch | durability | live segments | appends/s | rows/s | p50 ms | p95 ms | p99 ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        what = "events" if r["kind"] == "events" else (f"impressions ({r['items']} items"
                                                       + (", fresh ids)" if r["new_ids"] else ")"))
        lines.append(f"| {what} | {r['batch']} | {r['durability']} | {r['live_segments']} | "
                     f"{r['appends_per_s']:,.0f} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.3f} | "
                     f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} |")
    return "\n".join(lines)


SETTINGS = [  # (name, kind, batch, durability, prefill, items per impression, new_ids)
    ("events-full-b1", "events", 1, "full", False, 0, False),
    ("events-full-b100", "events", 100, "full", False, 0, False),
    ("events-normal-b1", "events", 1, "normal", False, 0, False),
    ("events-normal-b100", "events", 100, "normal", False, 0, False),
    ("impressions-full-b1", "impressions", 1, "full", False, ITEMS_PER_IMPRESSION, False),
    ("impressions-served", "impressions", 1, "normal", False, 10, True),
    ("events-full-b1-16seg", "events", 1, "full", True, 0, False),
    ("events-normal-b1-16seg", "events", 1, "normal", True, 0, False),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.event_log", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, type=Path,
                    help="a folder for the benchmark's logs (one sub-folder per setting)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of appends per setting (default 5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result rows here")
    ap.add_argument("--only", nargs="+", choices=[s[0] for s in SETTINGS], default=None,
                    help="run these settings only (default: all, in this order)")
    ap.add_argument("--keep", action="store_true", help="keep the logs written under --dir")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    args.dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"# event log bench: {os.cpu_count()} cores, load average {load[0]:.2f} at start, "
          f"{_filesystem(args.dir)} at {args.dir}, SQLite {sqlite3.sqlite_version}, "
          f"Python {platform.python_version()}, {args.seconds:g} s per setting", flush=True)
    results = []
    for name, kind, batch, durability, prefill, items, new_ids in SETTINGS:
        if args.only and name not in args.only:
            continue
        directory = args.dir / f"event_log_bench-{name}"
        shutil.rmtree(directory, ignore_errors=True)
        results.append(run_setting(directory, kind, batch, durability, args.seconds, prefill, items, new_ids))
        results[-1]["bytes"] = log_stats(directory)["bytes"]
        print(f"{name}: {results[-1]['appends_per_s']:,.0f} appends/s, p50 {results[-1]['p50_ms']:.3f} ms",
              flush=True)
        if not args.keep:
            shutil.rmtree(directory)
    print()
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"load_average": load, "filesystem": _filesystem(args.dir),
                                         "sqlite": sqlite3.sqlite_version, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
