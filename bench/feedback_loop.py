"""The feedback loop on MovieLens-100K: retrain from the event log, with and without exposure negatives.

    OMP_NUM_THREADS=1 python -m bench.feedback_loop    # ~17 min on the shared 2-core box (4 trainings)
    python -m bench.feedback_loop --seed 7 --work-dir outputs/feedback_loop_s7   # another seed
    python -m bench.feedback_loop --rescore             # score the saved runs again (15 s)

1. **Three time periods** (global cuts by time): history H (the oldest interactions), the logged
   period S (the next ``--stream-share``) and the held-out period T (the latest ``--holdout-share``).
2. **Run A** is trained and deployed on H (``train.py stage=deploy``).
3. **A realistic log**: S is replayed through A's served pipeline in time order, as
   :mod:`bench.replay` does: before each (user, timestamp) group of S, that user is asked for 10
   items and the answer is logged as an impression (``events.log.EventLog``); then the group's
   ratings are logged as events (``type=rating``) and applied to the live state
   (:class:`pipeline.online.OnlineState`).
4. **Runs B and C** are retrained from H plus the log (``train.py events=<log>``): B without
   impression negatives, C with them (``ranking.impression_negatives.enabled=true``). Same seed,
   same data: they differ only in the ranker's training loss.
5. **Scored on T** (never seen by any run): each user of T is asked once for 10 items at their first
   T timestamp, through the in-process served pipeline (``load_pipeline``: the code ``recommend``
   runs); the truth is all their T items. NDCG@10, Recall@10, HR@10 for A frozen, A with S applied
   live (no retrain: what serving gives without the loop), B and C.

Writes ``feedback_loop.md`` / ``.json`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.feedback_loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.feedback_loop", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "feedback_loop",
                   help="runs and the event log go here (default: outputs/feedback_loop; replaced)")
    p.add_argument("--stream-share", type=float, default=0.10, help="share of interactions logged (default: 0.10)")
    p.add_argument("--holdout-share", type=float, default=0.05, help="latest share held out (default: 0.05)")
    p.add_argument("--k", type=int, default=10, help="list length (default: 10)")
    p.add_argument("--max-epochs", type=int, default=4, help="epochs of the towers and the ranker (default: 4)")
    p.add_argument("--weights", type=float, nargs="+", default=[1.0, 4.0],
                   help="impression-negative weights to try (one run C each; default: 1 4)")
    p.add_argument("--window-s", type=float, default=86400.0, help="click window after an impression (default: 1 day)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--rescore", action="store_true",
                   help="score the runs of an earlier invocation again (same --work-dir / --out-dir), no training")
    args = p.parse_args(argv)
    if not (0 < args.stream_share < 0.5 and 0 < args.holdout_share < 0.5):
        p.error("--stream-share and --holdout-share must be in (0, 0.5)")
    return args


def config(run_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.log_dir={run_dir}/logs",
                                           f"paths.output_dir={run_dir}", "logger=none", *overrides])


def periods(interactions: pd.DataFrame, stream: float, holdout: float):
    """(history, logged, held-out): global time cuts."""
    ts = interactions["timestamp"].to_numpy()
    t1, t2 = np.quantile(ts, 1.0 - stream - holdout), np.quantile(ts, 1.0 - holdout)
    df = interactions.assign(user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str))
    h, s, t = df[ts < t1], df[(ts >= t1) & (ts < t2)], df[ts >= t2]
    return (h.reset_index(drop=True), s.sort_values(["timestamp", "user_id", "item_id"], kind="stable", ignore_index=True),
            t.reset_index(drop=True))


def train_run(run_dir: Path, dataset, args, overrides: list[str]) -> float:
    from train import train

    cfg = config(run_dir, ["stage=deploy", "retrieval.refit.mode=none", f"trainer.max_epochs={args.max_epochs}",
                           f"ranking.max_epochs={args.max_epochs}", f"seed={args.seed}", *overrides])
    with open_dict(cfg):
        cfg.progress = args.progress
    t = time.time()
    train(cfg, dataset=dataset)
    return round(time.time() - t, 1)


def ndcg(items: list[str], truth: set[str], k: int) -> float:
    gains = sum(1.0 / math.log2(r + 2) for r, i in enumerate(items[:k]) if i in truth)
    return gains / sum(1.0 / math.log2(r + 2) for r in range(min(len(truth), k)))


def log_stream(run_dir: Path, stream: pd.DataFrame, log_dir: Path, k: int, progress: bool) -> dict:
    """Replay the logged period through run A live; impressions and events into the log."""
    from events.log import EventLog
    from pipeline.artifacts import load_pipeline
    from pipeline.online import OnlineState
    from pipeline.pipeline import Request

    pipe = load_pipeline(run_dir)
    online = OnlineState(pipe)
    events, impressions = EventLog(log_dir / "events", durability="normal"), EventLog(log_dir / "impressions",
                                                                                     durability="normal")
    shown = clicked = 0
    groups = list(stream.groupby(["timestamp", "user_id"], sort=True))
    for n, ((ts, user), group) in enumerate(tqdm(groups, desc="log", disable=not progress)):
        rec = pipe.recommend([Request(user, k, int(ts))])[0]
        impressions.append_impressions([{"request_id": f"r{n}", "user_id": user, "items": rec.item_ids,
                                         "scores": rec.scores, "reasons": rec.reasons, "route": rec.route,
                                         "ranker": "ranker", "model_version": "A", "timestamp": float(ts)}])
        events.append_events([{"event_id": f"e{n}-{j}", "user_id": user, "item_id": i, "timestamp": float(ts),
                               "type": "rating", "weight": float(w)}
                              for j, (i, w) in enumerate(zip(group["item_id"], group["weight"]))])
        online.apply(group[["user_id", "item_id", "timestamp"]])
        shown += len(rec.item_ids)
        clicked += len(set(rec.item_ids) & set(group["item_id"]))
    events.close()
    impressions.close()
    return {"requests": len(groups), "events": int(len(stream)), "shown": shown, "shown_and_rated_at_once": clicked}


def score(pipe, holdout: pd.DataFrame, k: int, online_rows: pd.DataFrame | None = None) -> dict:
    """NDCG / Recall / HR @k of one request per held-out user (at their first held-out time)."""
    from pipeline.online import OnlineState
    from pipeline.pipeline import Request

    if online_rows is not None:
        OnlineState(pipe).apply(online_rows[["user_id", "item_id", "timestamp"]])
    rows = []
    for user, part in holdout.groupby("user_id", sort=True):
        truth = set(part["item_id"])
        rec = pipe.recommend([Request(user, k, int(part["timestamp"].min()))])[0]
        hits = len(truth & set(rec.item_ids[:k]))
        rows.append((user, ndcg(rec.item_ids, truth, k), hits / len(truth), float(hits > 0), rec.route))
    r = pd.DataFrame(rows, columns=["user", "ndcg", "recall", "hr", "route"])
    return {"users": len(r), f"ndcg@{k}": round(float(r["ndcg"].mean()), 4),
            f"recall@{k}": round(float(r["recall"].mean()), 4), f"hr@{k}": round(float(r["hr"].mean()), 4),
            "routes": r["route"].value_counts().to_dict(), "per_user_ndcg": r["ndcg"].round(6).tolist()}


def paired(runs: dict, base: str, k: int) -> None:
    """Each run's NDCG@k minus ``base``'s on the same users, with the standard error of the mean difference."""
    b = np.asarray(runs[base]["per_user_ndcg"])
    for r in runs.values():
        d = np.asarray(r["per_user_ndcg"]) - b
        r[f"ndcg@{k}_minus_B"] = round(float(d.mean()), 4)
        r["se"] = round(float(d.std(ddof=1) / np.sqrt(len(d))), 4)


def markdown(out: dict, k: int) -> str:
    s = out["setup"]
    lines = ["# Feedback loop: retrain from the event log (MovieLens-100K)", "",
             f"History {s['history']:,} interactions; logged period {s['logged']:,} ratings over {s['logged_days']} days "
             f"({out['log']['requests']:,} served requests logged as impressions, {out['log']['shown']:,} items shown, "
             f"{out['log']['shown_and_rated_at_once']:,} of them rated in the same group); held out "
             f"{s['holdout']:,} interactions of {s['holdout_users']} users. {s['max_epochs']} epochs, refit off, "
             f"seed {s['seed']}; click window {s['window_s']:.0f} s.", "",
             f"| run | NDCG@{k} | Recall@{k} | HR@{k} | NDCG@{k} - B (paired SE) | train s |",
             "|---|---|---|---|---|---|"]
    for name, r in out["runs"].items():
        lines.append(f"| {name} | {r[f'ndcg@{k}']} | {r[f'recall@{k}']} | {r[f'hr@{k}']} | "
                     f"{r[f'ndcg@{k}_minus_B']:+.4f} ({r['se']:.4f}) | {r.get('train_s', '')} |")
    lines += ["", "Log merge of the retrained runs: " + json.dumps(out["merge"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from features.prepare import load_dataset
    from features.schema import Dataset
    from pipeline.artifacts import RunArtifacts, load_pipeline

    ds = load_dataset(config(args.work_dir / "A", []).data)
    history, stream, holdout = periods(ds.interactions, args.stream_share, args.holdout_share)
    if args.rescore:
        return rescore(args, stream, holdout)
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    hist_ds = Dataset(ds.name, history, ds.items, ds.users, ds.meta)
    log_dir = args.work_dir / "event_log"
    runs: dict[str, dict] = {}

    train_s = train_run(args.work_dir / "A", hist_ds, args, [])
    runs["A: history only, frozen"] = score(load_pipeline(args.work_dir / "A"), holdout, args.k)
    runs["A: history only, frozen"]["train_s"] = train_s
    runs["A + logged events applied live (no retrain)"] = score(load_pipeline(args.work_dir / "A"), holdout, args.k,
                                                               stream)
    logged = log_stream(args.work_dir / "A", stream, log_dir, args.k, args.progress)

    variants = {"B: retrained from the log, no impression negatives": []}
    for w in args.weights:
        variants[f"C: retrained from the log, impression negatives weight {w:g}"] = [
            "ranking.impression_negatives.enabled=true", f"ranking.impression_negatives.weight={w}",
            f"ranking.impression_negatives.window_s={args.window_s}"]
    merge = {}
    for n, (name, overrides) in enumerate(variants.items()):
        run_dir = args.work_dir / f"run{n}"
        train_s = train_run(run_dir, hist_ds, args, [f"events={log_dir}", *overrides])
        runs[name] = {**score(load_pipeline(run_dir), holdout, args.k), "train_s": train_s}
        merge[name] = RunArtifacts(run_dir).manifest()["event_log"]["read"]
        log.info("%s: %s", name, runs[name])
    paired(runs, next(iter(variants)), args.k)
    out = {"setup": {"history": len(history), "logged": len(stream), "holdout": len(holdout),
                     "holdout_users": int(holdout["user_id"].nunique()),
                     "logged_days": round((stream["timestamp"].max() - stream["timestamp"].min()) / 86400, 1),
                     "max_epochs": args.max_epochs, "seed": args.seed, "window_s": args.window_s},
           "log": logged, "runs": runs, "merge": merge}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write(args, out)
    return 0


def rescore(args, stream: pd.DataFrame, holdout: pd.DataFrame) -> int:
    from pipeline.artifacts import load_pipeline

    out = json.loads((args.out_dir / "feedback_loop.json").read_text())
    for n, name in enumerate(out["runs"]):
        if name.startswith("A: "):
            run_dir, rows = args.work_dir / "A", None
        elif name.startswith("A + "):
            run_dir, rows = args.work_dir / "A", stream
        else:
            run_dir, rows = args.work_dir / f"run{n - 2}", None
        out["runs"][name] = {**score(load_pipeline(run_dir), holdout, args.k, rows),
                             "train_s": out["runs"][name].get("train_s", "")}
    paired(out["runs"], next(n for n in out["runs"] if n.startswith("B: ")), args.k)
    write(args, out)
    return 0


def write(args, out: dict) -> None:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "feedback_loop.json").write_text(json.dumps(out, indent=1))
    text = markdown(out, args.k)
    (args.out_dir / "feedback_loop.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
