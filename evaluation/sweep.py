"""A Hydra callback that writes one table of a multirun's jobs when the sweep ends.

Configured in configs/train.yaml (``hydra.callbacks.sweep_summary``). Reads every job's
``metrics.json`` and ``.hydra/overrides.yaml`` under the sweep folder and writes
``sweep_summary.md`` and ``sweep_summary.csv`` there, best ``optimized_metric`` first.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def summarise_sweep(sweep_dir: Path, metric: str | None, columns: list[str]) -> list[dict]:
    """One row per finished job under ``sweep_dir``: job number, overrides, the chosen metrics.

    Args:
        sweep_dir: the multirun's folder (one subfolder per job).
        metric: the key to sort by (descending); None keeps job order.
        columns: ``metrics.json`` keys to show besides ``metric``.
    """
    rows, overrides_of = [], {}
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = metrics_file.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides_of[job.name] = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.exists() else []
        metrics = json.loads(metrics_file.read_text())
        row = {"job": job.name, "overrides": ""}
        for key in ([metric] if metric else []) + [c for c in columns if c != metric]:
            row[key] = metrics.get(key)
        rows.append(row)
    # Only what differs between jobs (the shared command line is the same for all of them).
    shared = set.intersection(*(set(o) for o in overrides_of.values())) if overrides_of else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in overrides_of[row["job"]] if o not in shared)
    if metric:
        rows.sort(key=lambda r: float("-inf") if r.get(metric) is None else r[metric], reverse=True)
    return rows


def write_summary(sweep_dir: Path, rows: list[dict]) -> Path:
    """``sweep_summary.md`` (a markdown table) and ``sweep_summary.csv``; returns the markdown path."""
    if not rows:
        return sweep_dir / "sweep_summary.md"
    keys = list(rows[0])
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    path = sweep_dir / "sweep_summary.md"
    path.write_text(f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n" + "\n".join(lines) + "\n")
    return path


class SweepSummary(Callback):
    """Writes the sweep's summary table at the end of a multirun.

    Args:
        columns: ``metrics.json`` keys shown for every job (besides ``optimized_metric``).
    """

    def __init__(self, columns: list[str] | None = None):
        self.columns = list(columns or [])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarise_sweep(sweep_dir, config.get("optimized_metric"), self.columns)
        path = write_summary(sweep_dir, rows)
        log.info("sweep summary (%d jobs): %s", len(rows), path)
