"""How fast the synthetic generator builds (and validates) a dataset, and its peak memory.

Usage:
    .venv/bin/python bench/synthetic_speed.py --users 200000 --items 1000000 \
        --interactions 10000000 --seed 0 --out bench/results.jsonl

Prints a markdown table; with ``--out`` also appends the row as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

from features.synthetic import generate_synthetic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, required=True, help="rows of the users table")
    p.add_argument("--items", type=int, required=True, help="rows of the items table")
    p.add_argument("--interactions", type=int, required=True, help="rows of the interactions table")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--out", type=Path, default=None, help="JSON-lines file the result is appended to")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Generate once, time it end to end (Dataset validation included), report and optionally save."""
    args = parse_args(argv)
    start = time.perf_counter()
    ds = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=args.seed)
    seconds = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    row = {
        "benchmark": "synthetic_speed",
        "users": args.users,
        "items": args.items,
        "interactions": len(ds.interactions),
        "seed": args.seed,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "interactions_per_s": round(len(ds.interactions) / seconds),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print("| users | items | interactions | seconds | peak RSS MB | interactions/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {row['users']:,} | {row['items']:,} | {row['interactions']:,} | {row['seconds']:.1f} "
        f"| {row['peak_rss_mb']:,.0f} | {row['interactions_per_s']:,} |"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
