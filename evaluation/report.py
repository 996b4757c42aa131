"""The run's two result files: ``metrics.json`` (flat) and ``report.md`` (rendered from it).

Keys are ``<model>/<split>/<metric>@<k>`` (e.g. ``ease/test/ndcg@10``). Every stage merges its
rows in with :func:`update_metrics` and adds free text with :func:`add_section`; the report is
re-rendered from the files each time, so stages can run in any order and re-runs overwrite.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.json"
SECTIONS_FILE = "report_sections.json"
REPORT_FILE = "report.md"
_KEY = re.compile(r"^(?P<model>[^/]+)/(?P<split>[^/]+)/(?P<metric>[^/@]+)(@(?P<k>\d+))?$")
# Column order in tables; metrics not listed come after, alphabetically.
_ORDER = ["ndcg", "recall", "hr", "mrr", "map", "precision", "coverage", "diversity", "novelty", "gini"]
# The headline table of each split; every other metric is in the full table below it.
HEADLINE = ["ndcg@10", "recall@10", "recall@20", "hr@10", "mrr@10", "map@10", "coverage@10", "diversity@10", "novelty@10", "gini@10"]


def read_metrics(out_dir: str | Path) -> dict[str, float]:
    p = Path(out_dir) / METRICS_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def update_metrics(out_dir: str | Path, model: str, split: str, values: dict[str, float]) -> dict[str, float]:
    """Merge ``{metric@k: value}`` for one model and split into metrics.json; returns the whole dict."""
    if "/" in model or "/" in split:
        raise ValueError(f"model and split names may not contain '/': {model!r}, {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = read_metrics(out)
    metrics.update({f"{model}/{split}/{k}": float(v) for k, v in values.items()})
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics


def save_lists(out_dir: str | Path, model: str, users: np.ndarray, items: np.ndarray) -> None:
    """Keep a model's test top-K lists (``lists/<model>.npz``) for the report's plots."""
    d = Path(out_dir) / "lists"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / f"{model}.npz", users=users, items=items)


def load_lists(out_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every saved model's (users, items) test lists."""
    d = Path(out_dir) / "lists"
    return {p.stem: (z["users"], z["items"]) for p in sorted(d.glob("*.npz")) for z in [np.load(p)]}


def add_section(out_dir: str | Path, title: str, body: str) -> None:
    """Add or replace a free-text section (markdown) of the report."""
    p = Path(out_dir) / SECTIONS_FILE
    sections = json.loads(p.read_text()) if p.exists() else {}
    sections[title] = body
    p.write_text(json.dumps(sections, indent=1))


def _metric_sort(name: str) -> tuple:
    base, _, k = name.partition("@")
    rank = _ORDER.index(base) if base in _ORDER else len(_ORDER)
    return (rank, base, int(k) if k else 0)


def metrics_table(metrics: dict[str, float], split: str, columns: list[str] | None = None) -> str:
    """A markdown table of one split: a row per model, a column per metric."""
    rows: dict[str, dict[str, float]] = {}
    for key, v in metrics.items():
        m = _KEY.match(key)
        if m and m["split"] == split:
            name = m["metric"] + (f"@{m['k']}" if m["k"] else "")
            rows.setdefault(m["model"], {})[name] = v
    if not rows:
        return ""
    cols = columns or sorted({c for r in rows.values() for c in r}, key=_metric_sort)
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, vals in rows.items():
        cells = [f"{vals[c]:.4f}" if c in vals else "" for c in cols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, title: str, header: str = "") -> Path:
    """Render report.md from metrics.json and the added sections."""
    out = Path(out_dir)
    metrics = read_metrics(out)
    sp = out / SECTIONS_FILE
    sections = json.loads(sp.read_text()) if sp.exists() else {}
    parts = [f"# {title}", header]
    splits = sorted({m["split"] for k in metrics if (m := _KEY.match(k))}, key=lambda s: (s != "test", s))
    for split in splits:
        full = metrics_table(metrics, split)
        head = metrics_table(metrics, split, [c for c in HEADLINE if c in full])
        parts += [f"## {split}", head, f"<details><summary>all {split} metrics</summary>\n\n{full}\n\n</details>"]
    for name, body in sections.items():
        parts += [f"## {name}", body]
    path = out / REPORT_FILE
    path.write_text("\n\n".join(p for p in parts if p) + "\n")
    return path
