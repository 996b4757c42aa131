"""Hydra entry point: ``python train.py [stage=<stage>] [overrides]``.

Stages: baselines | retrieval | ranking | distill | deploy | export | all, and backtest (on request). ``train(cfg)`` is plain and typed so tests call it directly.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from evaluation.plots import write_plots
from evaluation.report import add_section, read_metrics, write_report
from evaluation.tracking import configure_tracking, finish_tracking, selection_metric
from features.feedback import load_feedback
from features.prepare import load_dataset, prepare
from features.schema import Dataset, DataError
from pipeline.artifacts import RunArtifacts
from ranking.distill import DistillGateError
from stages.backtest import run_backtest
from stages.baselines import run_baselines
from stages.config_checks import check_values
from stages.deploy import run_deploy
from stages.distill import run_distill
from stages.export import run_export
from stages.ranking import run_ranking
from stages.retrieval import run_retrieval
from retrieval.distributed import is_global_zero

log = logging.getLogger("train")
STAGES = ("baselines", "retrieval", "ranking", "distill", "deploy", "export")
# Run only when asked: the backtest trains the whole product once per protocol.
EXTRA_STAGES = ("backtest",)
# What each stage needs to have run first in the same invocation.
NEEDS = {"baselines": [], "retrieval": [], "ranking": ["retrieval"], "distill": ["retrieval", "ranking"],
         "deploy": ["retrieval", "ranking"], "export": ["retrieval", "ranking"], "backtest": []}


def _stages(stage: str) -> list[str]:
    if stage == "all":
        return list(STAGES)
    if stage not in STAGES + EXTRA_STAGES:
        raise DataError(f"unknown stage {stage!r}; known: {', '.join(STAGES + EXTRA_STAGES)}, all.")
    return NEEDS[stage] + [stage]


def make_loggers(cfg: DictConfig) -> list:
    """Instantiate every configured logger (``configs/logger``); an empty list means none."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    for lg in loggers:
        log.info("logger: %s", type(lg).__name__)
    return loggers


def train(cfg: DictConfig, dataset: Dataset | None = None) -> dict[str, float]:
    """Run the configured stage(s); returns the run's metrics (also in ``<output_dir>/metrics.json``).

    ``dataset``: the tables to use instead of loading ``cfg.data`` (the backtest's data before its cut).
    """
    stages = _stages(cfg.stage)
    check_values(cfg)  # a bad number fails here, not minutes into a stage
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("output dir: %s", out_dir)
    t0 = time.time()
    art = RunArtifacts(out_dir)
    if is_global_zero():  # under DDP the other processes only train the towers, then stop
        art.start(cfg, cfg.data.name)  # status "running" until the end: a killed run stays visibly incomplete
    try:
        return _run(cfg, dataset, stages, art, out_dir, t0)
    except BaseException as err:  # a failed run says so (and why) in its manifest; the error goes on
        if is_global_zero():
            try:
                art.fail(err)
            except Exception:  # noqa: BLE001 - e.g. a full disk: the run's own error is the one to see
                log.exception("could not record the failure in the run's manifest")
        raise


def _run(cfg: DictConfig, dataset: Dataset | None, stages: list[str], art: RunArtifacts, out_dir: Path,
         t0: float) -> dict[str, float]:
    """:func:`train` once its run has started: the data, then each stage."""
    feedback = None
    if cfg.get("events"):
        feedback = merge_event_log(cfg, dataset, art)
        dataset = feedback.dataset
    data = prepare(cfg, dataset)
    cutoffs = [("eval.ks", cfg.eval.ks)] + ([("retrieval.eval_ks", cfg.retrieval.get("eval_ks") or []),
                                             ("retrieval.val_ks", cfg.retrieval.get("val_ks") or [])]
                                            if "retrieval" in stages else [])
    for key, ks in cutoffs:
        if ks and max(ks) > data.n_items:
            raise DataError(f"the catalog has {data.n_items} items, fewer than the largest cut-off of {key}="
                            f"{list(ks)}; set {key} to cut-offs <= {data.n_items} (e.g. {key}=[10]).")
    if feedback is not None:
        data.exposure_negatives = feedback.negatives
    titles = data.titles()
    if titles is not None and is_global_zero():
        with art.writing("item_titles") as path:
            path.write_text(json.dumps(titles))
    log.info("data prepared in %.1fs", time.time() - t0)
    configure_tracking(cfg)
    loggers = make_loggers(cfg)
    retrieval = ranking = None
    for stage in stages:
        t = time.time()
        if stage == "baselines":
            run_baselines(data, cfg.baselines, cfg.eval, out_dir, cfg.progress)
        elif stage == "retrieval":
            retrieval = run_retrieval(data, cfg, out_dir, loggers, cfg.progress)
        elif stage == "ranking":
            ranking = run_ranking(data, cfg, retrieval, out_dir, loggers, cfg.progress)
        elif stage == "distill":
            try:
                run_distill(data, cfg, ranking, out_dir, loggers, cfg.progress)
            except DistillGateError as e:
                if cfg.stage == "distill":
                    raise
                # Within `all` the run goes on and serves the teacher only; the report says why.
                log.error("distillation gate failed, no student exported: %s", e)
                add_section(out_dir, "Distillation", f"**Gate failed, no student was written:** {e}")
        elif stage == "backtest":
            run_backtest(cfg, out_dir, train)
        elif stage == "deploy":
            run_deploy(data, cfg, retrieval, ranking, out_dir, loggers, cfg.progress)
        elif stage == "export":
            run_export(cfg, out_dir)
        log.info("stage %s done in %.1fs", stage, time.time() - t)
    header = (
        f"Dataset: {data.dataset.summary()}. Split: {data.split.name} {data.split.sizes()}.\n\n"
        f"Command: `python train.py {' '.join(cfg.get('overrides', []) or [])}`"
    )
    plots = write_plots(out_dir, data.test)
    if plots:
        add_section(out_dir, "Plots", "\n\n".join(f"![{p.stem}]({p.name})" for p in plots))
    path = write_report(out_dir, f"Run report: {cfg.data.name}", header)
    log.info("report: %s", path)
    finish_tracking(cfg, out_dir, loggers, read_metrics(out_dir))
    art.finish()
    return read_metrics(out_dir)


def merge_event_log(cfg: DictConfig, dataset: Dataset | None, art: RunArtifacts):
    """``events=<log>``: the configured data with the log's interactions merged in (and its exposure
    negatives when ``ranking.impression_negatives`` is on); the log position read up to goes into
    the manifest (``event_log``), and from there into the deployed store's entry (stages/deploy.py)."""
    if "backtest" in _stages(cfg.stage):
        raise DataError("events=<log> cannot be combined with stage=backtest yet: the backtest cuts the data by time "
                        "and the log's events would leak past its cut; run the backtest without events=.")
    neg = cfg.ranking.get("impression_negatives")
    feedback = load_feedback(dataset if dataset is not None else load_dataset(cfg.data), cfg.events,
                             list(cfg.feedback.interaction_types), float(cfg.feedback.default_weight),
                             float(neg.window_s) if neg and neg.enabled else None)
    if is_global_zero():
        art.note("event_log", {"path": str(cfg.events), "cursor": feedback.cursor.as_dict(), "read": feedback.report})
    return feedback


def main() -> float | None:
    """``python train.py [key=value ...]`` / ``recsys-train``: the Hydra entry point, after the checks
    Hydra's own composition would fail without a hint."""
    missing = _missing_plugin(sys.argv[1:])
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        raise SystemExit(2)
    return _hydra_main()


def _missing_plugin(argv: list[str]) -> str | None:
    """The install hint for an ``hparams_search=...`` whose Optuna sweeper is not installed (Hydra says only
    "Could not find 'hydra/sweeper/optuna'"); None otherwise."""
    import importlib.util

    if not any(a.lstrip("+").startswith("hparams_search=") for a in argv):
        return None
    if importlib.util.find_spec("hydra_plugins") is not None and \
            importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        return None
    return ("hparams_search needs the Optuna sweeper, which is not installed: pip install -e '.[cpu,dev,sweep]' "
            "(configs/hparams_search/optuna.yaml), then run the same command")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    OmegaConf.set_struct(cfg, False)
    cfg.overrides = list(HydraConfig.get().overrides.task)
    try:
        metrics = train(cfg)
    except Exception as err:  # noqa: BLE001 - bad data or settings: the message names the fix, no traceback
        message = _user_error(err)
        if message is None:
            raise
        log.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    print(_summary_table(metrics))
    return selection_metric(cfg, metrics)  # what a Hydra sweeper (Optuna) optimises


def _user_error(err: BaseException) -> str | None:
    """The message of a mistake in the data or the settings (a DataError, also when Hydra's instantiate
    wrapped it; a required setting left unset), for one line without a traceback; None for anything else."""
    from omegaconf.errors import MissingMandatoryValue

    seen, visited = err, set()
    while seen is not None and id(seen) not in visited:  # what the error was raised from (Hydra wraps)
        visited.add(id(seen))
        if isinstance(seen, DataError):
            return str(seen)
        if isinstance(seen, MissingMandatoryValue):
            key = getattr(seen, "full_key", None) or "a required setting"
            return (f"{key} is not set; give it on the command line (e.g. data=custom "
                    "data.loader.interactions=events.parquet: README, 'Data')")
        # an explicit cause, or the error being handled unless `from None` hid it; never a bug raised while
        # a DataError was handled (that one keeps its traceback)
        seen = seen.__cause__ if seen.__cause__ is not None or seen.__suppress_context__ else None
    return None


def _summary_table(metrics: dict[str, float]) -> str:
    from evaluation.report import metrics_table

    return "\n" + metrics_table(metrics, "test", ["ndcg@10", "recall@10", "recall@20", "hr@10", "coverage@10"])


if __name__ == "__main__":
    main()
