"""Replay the end of MovieLens-100K as a live stream: what live events are worth, and what they cost.

    python -m bench.replay                       # builds the run on the data before the cut (~3 min)
    python -m bench.replay --run-dir DIR         # reuse a run built by an earlier replay (DIR/run)
    python -m bench.replay --skip-triton         # the in-process quality replay only
    python -m bench.replay --run-dir DIR --visibility-only   # event-to-answer visibility only: one server,
                                                 # two sharing a log, two sharing Redis (no quality replay)

1. **Cut.** One global time cut: the latest ``--stream-share`` of the interactions (by time) are
   the stream; everything before it is the history. The product is trained and deployed on the
   history only (``train.py stage=deploy``, hyperparameters chosen on an inner split of it).
2. **Quality, in process.** The stream is replayed in time order, one (user, timestamp) group of
   events at a time: *before* a group, that user is asked for their next 10 items at the group's
   time, by two copies of the deployed pipeline: *frozen* (the state at deploy) and *live* (every
   earlier stream event applied through :class:`pipeline.online.OnlineState`, the code the served
   ``recommend`` model runs); the group's items are the truth. Then the group is applied to the
   live copy. NDCG@10 and HR@10 of both on the same requests, by route, and the events applied
   per second in process.
3. **Served, over gRPC** (unless ``--skip-triton``): the run is exported and served by the real
   Triton server with a durable event log; see :mod:`bench.replay_served` for what is measured.

Writes ``replay.md`` / ``replay.json`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.replay")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "replay",
                   help="where the history run is built (default: outputs/replay)")
    p.add_argument("--run-dir", type=Path, default=None, help="reuse this history run (skip training)")
    p.add_argument("--stream-share", type=float, default=0.05,
                   help="latest share of the interactions replayed as the stream (default: 0.05)")
    p.add_argument("--k", type=int, default=10, help="list length (default: 10)")
    p.add_argument("--max-groups", type=int, default=None, help="replay at most this many request groups")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results", help="where replay.md/json go")
    p.add_argument("--skip-triton", action="store_true", help="in-process quality replay only")
    p.add_argument("--visibility-only", action="store_true",
                   help="served event-to-answer visibility only (one server, two sharing the log directory, two "
                        "sharing Redis; redis-server must be installed: make redis-install); no quality replay")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides of the history run's training (e.g. trainer.max_epochs=2 for a quick "
                        "visibility measurement: serving cost does not depend on the epoch count)")
    args = p.parse_args(argv)
    if not 0 < args.stream_share < 0.5:
        p.error(f"--stream-share={args.stream_share} must be in (0, 0.5)")
    return args


def config(work_dir: Path, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.log_dir={work_dir}/logs",
                                           f"paths.output_dir={work_dir}/run", "logger=none", *overrides])


def cut(interactions: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, stream): one global time cut leaving the latest ``share`` of rows to the stream."""
    t = float(np.quantile(interactions["timestamp"].to_numpy(), 1.0 - share))
    later = interactions["timestamp"] >= t
    stream = interactions[later].sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    return interactions[~later].reset_index(drop=True), stream.reset_index(drop=True)


def build_history_run(args) -> tuple[Path, pd.DataFrame]:
    """Train and deploy on the history; returns the run directory and the stream."""
    from features.prepare import load_dataset
    from features.schema import Dataset
    from train import train

    cfg = config(args.work_dir, ["stage=deploy", "retrieval.refit.mode=none", *getattr(args, "overrides", [])])
    ds = load_dataset(cfg.data)
    history, stream = cut(ds.interactions, args.stream_share)
    run_dir = args.run_dir or Path(cfg.paths.output_dir)
    if args.run_dir is None:
        with open_dict(cfg):
            cfg.progress = args.progress
        train(cfg, dataset=Dataset(ds.name, history, ds.items, ds.users, ds.meta))
    return run_dir, stream


def ndcg(items: list[str], truth: set[str], k: int) -> float:
    gains = sum(1.0 / math.log2(r + 2) for r, i in enumerate(items[:k]) if i in truth)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(truth), k)))
    return gains / ideal


def replay_quality(run_dir: Path, stream: pd.DataFrame, k: int, max_groups: int | None, progress: bool) -> dict:
    """Frozen vs live answers before each (user, timestamp) group of the stream."""
    from pipeline.artifacts import load_pipeline
    from pipeline.online import OnlineState
    from pipeline.pipeline import Request

    frozen, live = load_pipeline(run_dir), load_pipeline(run_dir)  # exposure caps: each its own, as replicas
    online = OnlineState(live)
    stream = stream.assign(user_id=stream["user_id"].astype(str), item_id=stream["item_id"].astype(str))
    groups = list(stream.groupby(["timestamp", "user_id"], sort=True))[:max_groups]
    rows, apply_s = [], 0.0
    for (ts, user), group in tqdm(groups, desc="replay", disable=not progress):
        truth = set(group["item_id"])
        request = [Request(user, k, int(ts))]
        f, lv = frozen.recommend(request)[0], live.recommend(request)[0]
        rows.append({"route_frozen": f.route, "route_live": lv.route,
                     "ndcg_frozen": ndcg(f.item_ids, truth, k), "ndcg_live": ndcg(lv.item_ids, truth, k),
                     "hit_frozen": float(bool(truth & set(f.item_ids))), "hit_live": float(bool(truth & set(lv.item_ids)))})
        start = time.perf_counter()
        online.apply(group[["user_id", "item_id", "timestamp"]])
        apply_s += time.perf_counter() - start
    r = pd.DataFrame(rows)
    known = set(frozen.store.users.ids[frozen.store.last_ts >= 0].tolist())
    out = {"requests": len(r), "events": int(sum(len(g) for _, g in groups)),
           "stream_days": round((stream["timestamp"].max() - stream["timestamp"].min()) / 86400, 1),
           "users": int(stream["user_id"].nunique()),
           "users_new_in_stream": len(set(stream["user_id"]) - known),
           "ndcg@10_frozen": round(float(r["ndcg_frozen"].mean()), 4), "ndcg@10_live": round(float(r["ndcg_live"].mean()), 4),
           "hr@10_frozen": round(float(r["hit_frozen"].mean()), 4), "hr@10_live": round(float(r["hit_live"].mean()), 4),
           "events_per_s_in_process": round(sum(len(g) for _, g in groups) / max(apply_s, 1e-9), 1),
           "by_route": {}}
    out["live_over_frozen"] = round(out["ndcg@10_live"] / max(out["ndcg@10_frozen"], 1e-12), 3)
    for route, part in r.groupby("route_frozen"):
        out["by_route"][route] = {"requests": len(part), "ndcg@10_frozen": round(float(part["ndcg_frozen"].mean()), 4),
                                  "ndcg@10_live": round(float(part["ndcg_live"].mean()), 4)}
    return out


def markdown(q: dict, served: dict | None) -> str:
    lines = ["# Replay: the end of MovieLens-100K as a live stream", "",
             f"{q['events']:,} events over {q['stream_days']} days ({q['users']} users, {q['users_new_in_stream']} of "
             f"them unknown at deploy), {q['requests']:,} requests (one before each user's group of events).", "",
             "| state | NDCG@10 | HR@10 |", "|---|---|---|",
             f"| frozen at deploy | {q['ndcg@10_frozen']} | {q['hr@10_frozen']} |",
             f"| with live events | {q['ndcg@10_live']} | {q['hr@10_live']} |", "",
             f"live / frozen NDCG@10: **{q['live_over_frozen']}x**; events applied in process: "
             f"{q['events_per_s_in_process']:,}/s.", "", "| route at deploy | requests | NDCG@10 frozen | NDCG@10 live |",
             "|---|---|---|---|"]
    lines += [f"| {r} | {v['requests']} | {v['ndcg@10_frozen']} | {v['ndcg@10_live']} |" for r, v in q["by_route"].items()]
    if served:
        lines += ["", "## Served (Triton, gRPC)", "", "```", json.dumps(served, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_dir, stream = build_history_run(args)
    if args.visibility_only:
        from bench.replay_served import measure_served

        served = measure_served(run_dir, stream, args.k, visibility_only=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "replay_visibility.json").write_text(json.dumps(served, indent=1))
        print(json.dumps(served, indent=1))
        return 0
    quality = replay_quality(run_dir, stream, args.k, args.max_groups, args.progress)
    served = None
    if not args.skip_triton:
        from bench.replay_served import measure_served

        served = measure_served(run_dir, stream, args.k)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "replay.json").write_text(json.dumps({"quality": quality, "served": served}, indent=1))
    (args.out_dir / "replay.md").write_text(markdown(quality, served))
    print(markdown(quality, served))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
