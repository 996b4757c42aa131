"""Served visibility of catalog changes: upsert an item, then ask for its category; block it, ask again.

    python -m bench.catalog_visibility REPOSITORY [--rounds 30]

Starts the wheel's tritonserver on an exported repository (its event log in a temporary folder,
removed afterwards), then per round: upsert one new item of a genre the run never saw (its
category is "<unknown>"), ask a cold user for that category (the item must be there), block it,
ask again (it must be gone). Prints p50 / p95 / max in ms of the upsert call, of upsert -> the
answer holding it, and of block -> the answer without it. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from serving.client import RecommendClient
from serving.event_log import ENV
from serving.triton_server import TritonServer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repository", type=Path, help="an exported Triton repository (python -m export ...)")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="catalog_visibility_"))
    os.environ[ENV] = str(work / "log")  # the python stubs inherit it
    upsert, visible, blocked = [], [], []
    try:
        with TritonServer(args.repository, log_path=work / "triton.log") as server, \
                RecommendClient(server.grpc_url) as client:
            client.recommend("warm-up", 5)
            for i in range(args.rounds):
                start = time.perf_counter()
                assert client.upsert_items([{"item_id": f"vis-{i}", "genres": f"genre-{i}", "price": 5}]) == ["ok"]
                acked = time.perf_counter()
                answer = client.recommend(f"visitor-{i}", 5, include_categories=["<unknown>"])
                assert f"vis-{i}" in answer.item_ids, answer.item_ids
                upsert.append((acked - start) * 1000)
                visible.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                assert client.block([f"vis-{i}"]) == ["ok"]
                assert f"vis-{i}" not in client.recommend(f"other-{i}", 5, include_categories=["<unknown>"]).item_ids
                blocked.append((time.perf_counter() - start) * 1000)
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(work, ignore_errors=True)
    print("| step | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|")
    for name, v in (("upsert_items call (1 item)", upsert), ("upsert -> answer holding it", visible),
                    ("block -> answer without it", blocked)):
        print(f"| {name} | {np.percentile(v, 50):.1f} | {np.percentile(v, 95):.1f} | {max(v):.1f} |")


if __name__ == "__main__":
    main()
