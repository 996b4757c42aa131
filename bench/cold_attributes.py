"""Do a new user's attributes say what they will interact with? Popularity among similar users vs global.

A cold user (no id, no history) is answered by popularity: the ranker's cold route keeps that prior
unless its learned residual beats it on held-out lists, and on MovieLens-100K it does not (README,
"Still weak"). This measures the question underneath, with no model: every test user of the split
answered cold by

- ``global``: popularity over train + valid;
- ``<attribute>``: popularity among the other train + valid users who share the user's value of that
  attribute (numeric ones in ``--bands`` quantile bands), mixed with ``--global-weight`` x global
  popularity (both as shares of their interactions);
- ``all``: the sum of the attribute shares, plus the same global weight.

Each row is NDCG@10 (RecBole's definition, ``evaluation.metrics.ranking_metrics``) and its paired
difference from ``global`` with a standard error.

Usage (from the repository root; Hydra overrides of ``configs/train.yaml`` select the data):
    .venv/bin/python -m bench.cold_attributes
    .venv/bin/python -m bench.cold_attributes split=random_user
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from hydra import compose, initialize_config_dir

from evaluation.metrics import ranking_metrics
from features.prepare import Prepared, prepare

ROOT = Path(__file__).resolve().parents[1]
K = 10


def attribute_groups(data: Prepared, bands: int) -> dict[str, np.ndarray]:
    """Per user attribute (the users table's feature columns but the id), each user's group code
    (-1 unknown); numeric columns cut into ``bands`` quantile bands."""
    table = data.dataset.users.set_index("user_id").reindex(data.users.ids)
    out = {}
    for spec in data.features.specs["user"]:
        if spec.source == "user_id" or spec.source in out or spec.source not in table:
            continue
        col = table[spec.source]
        if spec.kind == "numeric":
            x = pd.to_numeric(col, errors="coerce")
            codes = pd.qcut(x, bands, labels=False, duplicates="drop")
        else:
            codes = pd.Series(pd.factorize(col.astype("string"), use_na_sentinel=True)[0], index=col.index)
            codes = codes.where(col.notna())
        out[spec.source] = codes.fillna(-1).to_numpy(dtype=np.int64)
    return out


def group_counts(seen: sp.csr_matrix, codes: np.ndarray) -> np.ndarray:
    """(G, N) each group's interaction counts over items (users with code -1 in none)."""
    known = codes >= 0
    member = sp.csr_matrix((np.ones(int(known.sum())), (codes[known], np.flatnonzero(known))),
                           shape=(int(codes.max()) + 1, seen.shape[0]))
    return np.asarray((member @ seen).todense(), dtype=np.float64)


def cold_scores(seen: sp.csr_matrix, users: np.ndarray, groups: dict[str, np.ndarray],
                global_weight: float) -> dict[str, np.ndarray]:
    """(U, N) scores per strategy for ``users`` answered cold (dense: a benchmark for small catalogs).
    A user's own interactions are left out of their group's counts: a cold request does not have them."""
    pop = np.asarray(seen.sum(axis=0), dtype=np.float64).ravel()
    share = pop / max(pop.sum(), 1.0)
    out = {"global": np.tile(share, (len(users), 1))}
    own = np.asarray(seen[users].todense(), dtype=np.float64)  # (U, N)
    total = np.zeros((len(users), seen.shape[1]))
    for name, codes in groups.items():
        if not (codes >= 0).any():
            continue
        g = codes[users]
        raw = group_counts(seen, codes)[np.maximum(g, 0)] - own  # (U, N) the other users of the group
        mine = np.where(g[:, None] >= 0, raw / np.maximum(raw.sum(axis=1, keepdims=True), 1.0), 0.0)
        out[name] = mine + global_weight * share
        total += mine
    if len(out) > 1:
        out["all"] = total + global_weight * share
    return out


def top_k(scores: np.ndarray) -> np.ndarray:
    """(U, K) best items per row; ties by lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def run(overrides: list[str], bands: int, global_weight: float) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(ROOT / "configs"),
                                                                      version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={tmp}", "logger=none",
                                          *overrides])
        data = prepare(cfg)
    seen = (data.train + data.valid).tocsr()
    users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    truth = data.test[users]
    scores = cold_scores(seen, users, attribute_groups(data, bands), global_weight)
    ndcg = {name: ranking_metrics(top_k(s), truth, [K], per_user=True)[f"ndcg@{K}"] for name, s in scores.items()}
    rows = []
    for name, v in ndcg.items():
        d = v - ndcg["global"]
        rows.append({"strategy": name, "users": len(v), f"ndcg@{K}": v.mean(), "minus global": d.mean(),
                     "se": d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cold_attributes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="configs/train.yaml overrides, e.g. split=random_user")
    ap.add_argument("--bands", type=int, default=5, help="quantile bands of a numeric attribute (default 5)")
    ap.add_argument("--global-weight", type=float, default=0.5,
                    help="weight of global popularity mixed into an attribute's (default 0.5)")
    args = ap.parse_args(argv)
    if args.bands < 1 or not args.global_weight >= 0:
        ap.error("--bands must be >= 1 and --global-weight >= 0")
    table = run(args.overrides, args.bands, args.global_weight)
    print(markdown(table))
    return 0


def markdown(table: pd.DataFrame) -> str:
    """The result rows as a markdown table (numbers to 4 decimals)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
