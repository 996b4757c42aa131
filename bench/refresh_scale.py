"""How long `recsys-refresh` takes on a large catalog: 10M interactions over 1M items by default.

    python -m bench.refresh_scale --interactions 10000000 --items 1000000 --users 200000 --new 100000

A deployed run's served state (feature store, ranker features, the interactions it saw) is built
over all but the newest ``--new`` interactions of a synthetic dataset (the generator of
``data=synthetic``; the experiment ``synthetic_1m``'s settings: cosine co-occurrence instead of
EASE at this catalog size), with random unit item embeddings standing in for the item tower's
(refresh never reads the models). Then :func:`pipeline.refresh.refresh` adds the newest rows in
place, exactly as the command does, and is timed: read the run's interactions, clean the new rows,
update the per-user state with the new rows (the co-occurrence tables are kept: 1% new rows is
under the 5% rebuild share; ``--rebuild`` times the full rebuild instead), save. Prints a markdown table;
``--out`` appends the row as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from features.prepare import prepare
from features.synthetic import generate_synthetic
from pipeline.artifacts import RunArtifacts
from pipeline.refresh import build_served_state, refresh, save_served_state
from stages.deploy import all_interactions

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", type=int, default=10_000_000, help="interactions in the run before the refresh")
    p.add_argument("--items", type=int, default=1_000_000, help="catalog size")
    p.add_argument("--users", type=int, default=200_000, help="users table size")
    p.add_argument("--new", type=int, default=100_000, help="newest interactions held back and added by the refresh")
    p.add_argument("--dim", type=int, default=64, help="item embedding width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None, help="where the run is built (default: a temporary dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON-lines file the result is appended to")
    p.add_argument("--rebuild", action="store_true",
                   help="time the full rebuild (co-occurrence tables included) instead of the default refresh")
    args = p.parse_args(argv)
    if not 0 < args.new < args.interactions:
        p.error(f"--new={args.new} must be in 1..--interactions-1 ({args.interactions - 1})")
    return args


def build_run(args: argparse.Namespace, run_dir: Path):
    """A deployed run over all but the newest ``args.new`` interactions; returns those newest rows."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={run_dir}",
                                          f"paths.log_dir={run_dir.parent}/logs", "experiment=synthetic_1m", "logger=none",
                                          f"data.loader.n_users={args.users}", f"data.loader.n_items={args.items}",
                                          f"data.loader.n_interactions={args.interactions + args.new}",
                                          f"seed={args.seed}"])
    t = time.perf_counter()
    data = prepare(cfg, generate_synthetic(n_users=args.users, n_items=args.items,
                                           n_interactions=args.interactions + args.new, seed=args.seed))
    history = all_interactions(data)
    order = np.argsort(history["timestamp"].to_numpy(), kind="stable")
    newest = history.iloc[order[-args.new:]].reset_index(drop=True)
    base = history.drop(index=history.index[order[-args.new:]]).reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    emb = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    art = RunArtifacts(run_dir)
    art.start(cfg, "synthetic")
    with art.writing("item_embeddings") as path:
        np.save(path, emb)
    ranking = OmegaConf.to_container(cfg.ranking, resolve=True)
    store, features = build_served_state(data, base, emb, ranking, int(cfg.retrieval.history_len), 0.0)
    save_served_state(art, store, features, base, deployed=True, ease_content_weight=0.0)
    art.finish()
    print(f"built the deployed run ({len(base):,} interactions) in {time.perf_counter() - t:.1f} s", flush=True)
    # The refresh gets the rows as a client would send them: plain strings and integers.
    return newest[["user_id", "item_id", "timestamp"]].astype({"user_id": str, "item_id": str})


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        run_dir = Path(tmp) / "run"
        new = build_run(args, run_dir)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        report = refresh(run_dir, new, rebuild=True if args.rebuild else None)
        seconds = time.perf_counter() - start
    row = {"interactions": args.interactions, "items": args.items, "users": args.users, "new": args.new,
           "accepted": report["accepted"], "new_users": report["new_users"], "late": report["late"],
           "tables_rebuilt": report["tables_rebuilt"], "refresh_s": round(seconds, 2),
           "peak_rss_gb": round(max(rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) / 1024, 2),
           "cores": len(__import__("os").sched_getaffinity(0)), "machine": platform.machine()}
    print("| interactions | items | new rows | accepted | tables rebuilt | refresh (s) | peak RSS (GB) | cores |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {row['interactions']:,} | {row['items']:,} | {row['new']:,} | {row['accepted']:,} | {row['tables_rebuilt']} "
          f"| {row['refresh_s']} | {row['peak_rss_gb']} | {row['cores']} |")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
