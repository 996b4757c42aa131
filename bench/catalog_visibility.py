"""Served visibility of catalog changes: upsert an item, then ask for its category; block it, ask again.

    python -m bench.catalog_visibility REPOSITORY

Starts the wheel's tritonserver on the exported repository (its event log in a temporary folder),
30 rounds of: upsert one new item of a genre the run never saw (category "<unknown>"), ask a cold
user for that category (the item must be there), block it, ask again (it must be gone). Prints
p50 / p95 / max in ms of the upsert call, upsert -> answer holding it, block -> answer without it.
"""

import sys
import os, time, tempfile, numpy as np
from pathlib import Path
from serving.event_log import ENV
from serving.triton_server import TritonServer
from serving.client import RecommendClient
d = Path(tempfile.mkdtemp())
os.environ[ENV] = str(d / "log")
repo = Path(sys.argv[1])
up, vis, blk = [], [], []
with TritonServer(repo, log_path=d / "triton.log") as server, RecommendClient(server.grpc_url) as c:
    c.recommend("warm", 5)
    for i in range(30):
        s = time.perf_counter()
        assert c.upsert_items([{"item_id": f"vis-{i}", "genres": f"genre-{i}", "price": 5}]) == ["ok"]
        a = time.perf_counter()
        ans = c.recommend(f"v{i}", 5, include_categories=["<unknown>"])
        e = time.perf_counter()
        assert f"vis-{i}" in ans.item_ids, ans.item_ids
        up.append((a - s) * 1000); vis.append((e - s) * 1000)
        s = time.perf_counter(); assert c.block([f"vis-{i}"]) == ["ok"]
        ans = c.recommend(f"w{i}", 5, include_categories=["<unknown>"]); e = time.perf_counter()
        assert f"vis-{i}" not in ans.item_ids
        blk.append((e - s) * 1000)
print("| step | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|")
for name, v in (("upsert_items call (1 item)", up), ("upsert -> answer holding it", vis), ("block -> answer without it", blk)):
    print(f"| {name} | {np.percentile(v,50):.1f} | {np.percentile(v,95):.1f} | {max(v):.1f} |")
