"""The ``backtest`` stage: evaluate the way the product serves (the number to optimise).

For each protocol (``eval.backtest.protocols``), the data is cut into *before* and *after*
(per user: each user's latest 20%; global: one time cut; random: a per-user random 20%). The whole
product is then built from *before* only, exactly as for a deployment: hyperparameters chosen on an
inner split of *before*, the served state deployed on all of *before* (``stage=deploy``). The users
active *after* the cut are answered through the served pipeline (:meth:`Pipeline.recommend`, the
code of the batch command and of Triton's ``recommend``) at their first *after* timestamp, and
scored on what they did. MostPop / ItemKNN / EASE are tuned on the same inner validation split,
refit on all of *before* and scored on the same requests.

Rows: ``<model>/backtest_<protocol>/<metric>@k`` in metrics.json, a table in report.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from evaluation.evaluate import fill_short_lists, metrics_from_topk
from evaluation.metrics import item_popularity
from evaluation.report import add_section, metrics_table, update_metrics
from features.prepare import Prepared, first_times, load_dataset, prepare
from features.schema import Dataset
from pipeline.artifacts import RunArtifacts
from pipeline.pipeline import Request
from stages.baselines import evaluate_model, tuned_factory

log = logging.getLogger(__name__)
PROTOCOLS = ("temporal_user", "temporal_global", "random_user")


def outer_split_cfg(cfg: DictConfig, protocol: str) -> DictConfig:
    """The config whose split cuts the data into before (train) and after (test), no validation."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.backtest.protocols holds {protocol!r}; known: {', '.join(PROTOCOLS)}")
    share = float(cfg.eval.backtest.after_share)
    out = OmegaConf.merge(cfg, {"split": {"method": protocol, "test_share": share, "valid_share": 0.0,
                                          "ratios": [1.0 - share, 0.0, share], "cold_item_share": 0.0}})
    OmegaConf.set_struct(out, False)
    return out


def served_lists(run_dir: Path, outer: Prepared, users: np.ndarray, ts: np.ndarray, k: int,
                 batch_size: int = 256, progress: bool = False) -> tuple[np.ndarray, Counter]:
    """(U, k) catalog indices: the deployed pipeline's answers for ``users`` at ``ts``; requests by route."""
    pipe = RunArtifacts(run_dir).load_pipeline()
    ids = outer.users.ids
    rows, routes = [], Counter()
    for s in tqdm(range(0, len(users), batch_size), desc="backtest requests", disable=not progress):
        reqs = [Request(str(ids[u]), k, int(t)) for u, t in zip(users[s : s + batch_size], ts[s : s + batch_size])]
        for rec in pipe.recommend(reqs):
            routes[rec.route] += 1
            row = np.full(k, -1, dtype=np.int64)
            idx = outer.items.lookup(rec.item_ids)
            row[: len(idx)] = idx
            rows.append(row)
    return fill_short_lists(np.stack(rows), outer.train[users]), routes


def backtest_protocol(cfg: DictConfig, protocol: str, out_dir: Path, train_fn: Callable, dataset: Dataset) -> dict:
    """Build from *before*, answer *after*; returns {model: metrics}."""
    ocfg = outer_split_cfg(cfg, protocol)
    outer = prepare(ocfg, dataset)  # train = before, test = after
    before = pd.concat([outer.split.train, outer.split.valid], ignore_index=True)
    inner_dir = out_dir / f"backtest_{protocol}"
    icfg = OmegaConf.merge(cfg, {"stage": "deploy", "paths": {"output_dir": str(inner_dir)},
                                 "split": {"method": protocol}})
    with open_dict(icfg):
        icfg.retrieval.refit.mode = "none"  # the comparison-only refit is not served
    inner_data = Dataset(dataset.name, before, dataset.items, dataset.users, dataset.meta)
    train_fn(icfg, dataset=inner_data)  # chooses everything on an inner split of before, deploys on all of before
    ks = list(cfg.eval.ks)
    users = np.flatnonzero(np.diff(outer.test.indptr) > 0)
    ts = first_times(outer.split.test, outer)[users]
    truth, pop, vectors = outer.test[users], item_popularity(outer.train), outer.item_vectors()
    served, routes = served_lists(inner_dir, outer, users, ts, max(ks), progress=cfg.progress)
    lists = {"pipeline": served}
    inner = prepare(icfg, inner_data)  # the inner split the pipeline chose its settings on
    for name, spec in cfg.baselines.items():
        factory, best, _ = tuned_factory(spec, inner, cfg.eval)
        model = factory(best).fit(outer.history("test"))
        _, topk, u = evaluate_model(model.score, outer, "test", [max(ks)], cfg.eval.batch_size, progress=False,
                                    return_topk=True)
        lists[name] = topk[np.searchsorted(u, users)]
    out = {}
    for name, topk in lists.items():
        out[name] = metrics_from_topk(topk, truth, ks, pop, vectors)
        update_metrics(out_dir, name, f"backtest_{protocol}", out[name])
    # which path the served requests took: a user unseen before the cut is answered cold
    update_metrics(out_dir, "pipeline", f"backtest_{protocol}", {"cold_user_share": routes["cold_user"] / len(users)})
    log.info("backtest %s: %s", protocol, {n: round(m["ndcg@10"], 4) for n, m in out.items()})
    return out


def run_backtest(cfg: DictConfig, out_dir: Path, train_fn: Callable) -> dict[str, dict]:
    """Every configured protocol; a table per protocol in the report."""
    dataset = load_dataset(cfg.data)
    results, tables = {}, []
    for protocol in cfg.eval.backtest.protocols:
        results[protocol] = backtest_protocol(cfg, protocol, out_dir, train_fn, dataset)
        flat = {f"{m}/backtest_{protocol}/{k}": v for m, row in results[protocol].items() for k, v in row.items()}
        ease = results[protocol].get("ease", {}).get("ndcg@10")
        ratio = f" (pipeline / EASE NDCG@10 = {results[protocol]['pipeline']['ndcg@10'] / ease:.3f})" if ease else ""
        tables.append(f"**{protocol}**{ratio}\n\n" + metrics_table(flat, f"backtest_{protocol}",
                                                                    ["ndcg@10", "recall@10", "hr@10", "coverage@10"]))
    add_section(out_dir, "Backtest (as served)", (
        f"The product built from the data before a cut (the latest {cfg.eval.backtest.after_share:.0%} held out "
        "per protocol), deployed on all of it, answering the users active after the cut through the served "
        "pipeline; baselines tuned on the same inner validation split and refit on all data before the cut.\n\n"
        + "\n\n".join(tables)))
    return results
