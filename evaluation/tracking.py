"""Experiment tracking with Weights & Biases: one run per job, holding everything the run produced.

``train.py`` calls :func:`configure_tracking` before the loggers are built and :func:`finish_tracking`
at the end of ``train()``. The W&B run then holds:

- the resolved Hydra config (``run.config`` and ``config.yaml`` in the run's files),
- the final metrics of ``metrics.json`` (``run.summary``) and one table of them (``metrics``),
- the report's plots (``report/<name>`` images) and ``report.md``,
- the run's artifacts as W&B artifacts: ``<run>-model`` (towers, FAISS index, feature store,
  rankers, student) and ``<run>-onnx`` (the exported ONNX models and Triton repository), when present.

Offline by default (``logger.wandb.offline=true``): the run lives under ``<output_dir>/wandb/`` and
``wandb sync`` uploads it later. In a Hydra multirun each job gets its own run, grouped by the sweep
(``group`` = the sweep folder's name), and ``wandb.finish()`` closes it before the next job starts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

MODEL_FILES = ("**/*",)  # everything under artifacts/: encoders, towers, index, store, rankers, student


def _wandb_logger(loggers: list):
    return next((lg for lg in loggers if type(lg).__name__ == "WandbLogger"), None)


def configure_tracking(cfg: DictConfig) -> None:
    """Give a multirun job its own W&B run name and the sweep as its group (no-op without W&B)."""
    wcfg = (cfg.get("logger") or {}).get("wandb")
    if wcfg is None:
        return
    import wandb

    if wandb.run is not None:  # left open by a job of this process that failed before finish_tracking
        log.warning("closing W&B run %s left open by an earlier job", wandb.run.id)
        wandb.finish(exit_code=1)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    with open_dict(cfg):
        if wcfg.get("group") is None:
            wcfg.group = Path(hc.sweep.dir).name
        if wcfg.get("name") is None:
            wcfg.name = f"{wcfg.group}-{hc.job.num}"


def _artifact(wandb, name: str, kind: str, root: Path, patterns: tuple[str, ...], metadata: dict):
    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    if not files:
        return None
    art = wandb.Artifact(name, type=kind, metadata=metadata)
    for path in files:
        # immutable: the run's files are not copied into W&B's staging area (they are final here).
        art.add_file(str(path), name=str(path.relative_to(root)), policy="immutable")
    return art


def finish_tracking(cfg: DictConfig, out_dir: Path, loggers: list, metrics: dict[str, float]) -> str | None:
    """Log config, metrics, tables, plots and artifacts to the run's W&B run, then close it.

    Args:
        cfg: the run's config (resolved here).
        out_dir: the run's output directory (``metrics.json``, ``report.md``, ``artifacts/``).
        loggers: the run's Lightning loggers; nothing happens without a ``WandbLogger``.
        metrics: the flat metrics of ``metrics.json``.

    Returns:
        The local directory of the W&B run, or None without W&B.
    """
    lg = _wandb_logger(loggers)
    if lg is None:
        return None
    import wandb

    run = lg.experiment  # creates the run if no training step has (e.g. stage=baselines)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run.config.update({"hydra": resolved}, allow_val_change=True)
    config_file = out_dir / "config.resolved.yaml"
    config_file.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    run.save(str(config_file), base_path=str(out_dir), policy="now")
    run.summary.update(metrics)
    rows = []
    for key, value in sorted(metrics.items()):
        model, split, metric = (key.split("/", 2) + ["", ""])[:3]
        rows.append([model, split, metric, float(value)])
    run.log({"metrics": wandb.Table(columns=["model", "split", "metric", "value"], data=rows)})
    images = {f"report/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}
    if images:
        run.log(images)
    for name in ("report.md", "metrics.json"):
        if (out_dir / name).exists():
            run.save(str(out_dir / name), base_path=str(out_dir), policy="now")
    meta = {"output_dir": str(out_dir), "stage": str(cfg.get("stage"))}
    art = _artifact(wandb, f"run-{run.id}-model", "model", out_dir / "artifacts", MODEL_FILES, meta)
    if art is not None:
        run.log_artifact(art)
    repo = cfg.export.repository if cfg.get("stage") in ("export", "all") and cfg.get("export") else None
    if repo and Path(repo).is_dir():
        onnx = _artifact(wandb, f"run-{run.id}-onnx", "onnx", Path(repo), ("*/1/*.onnx", "*/config.pbtxt", "*.json"),
                         meta)
        if onnx is not None:
            run.log_artifact(onnx)
    run_dir = run.dir
    wandb.finish()
    log.info("W&B run %s written to %s", run.id, run_dir)
    return run_dir


def selection_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of ``cfg.optimized_metric`` (a ``metrics.json`` key) for a sweeper; None when unset.

    Raises:
        KeyError: the key is not in this run's metrics (the message lists the validation keys).
    """
    key = cfg.get("optimized_metric")
    if not key:
        return None
    if key not in metrics:
        known = sorted(k for k in metrics if "/valid/" in k) or sorted(metrics)
        raise KeyError(f"optimized_metric={key!r} is not in this run's metrics.json; choose one of: "
                       f"{', '.join(known[:20])} (e.g. optimized_metric={known[0] if known else 'two_tower/valid/recall@100'})")
    return float(metrics[key])
