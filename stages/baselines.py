"""The ``baselines`` stage: tune on validation, refit on train+valid, evaluate on test."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from evaluation.evaluate import evaluate_scorer, select_by_validation
from evaluation.metrics import item_popularity
from evaluation.report import add_section, save_lists, update_metrics
from features.prepare import Prepared

log = logging.getLogger(__name__)


def evaluate_model(score_fn, data: Prepared, part: str, ks: list[int], batch_size: int, progress: bool, **kw):
    """Full-ranking metrics of ``score_fn`` on ``part`` (valid or test) of the prepared data."""
    truth = data.valid if part == "valid" else data.test
    return evaluate_scorer(
        score_fn,
        np.arange(len(data.users), dtype=np.int64),
        data.history(part),
        truth,
        ks,
        batch_size=batch_size,
        item_vectors=data.item_vectors(),
        item_popularity=item_popularity(data.train),
        progress=progress,
        **kw,
    )


def tuned_factory(spec: DictConfig, data: Prepared, eval_cfg: DictConfig):
    """A baseline's factory and its hyperparameter chosen on ``data``'s validation split (fit on train).

    Returns:
        ``factory(value) -> model``, the chosen value (None when the baseline is not tuned), and
        {value: validation metric}.
    """
    def factory(value=None):
        return instantiate(spec.model, **({spec.tune.param: value} if spec.tune and value is not None else {}))

    if not spec.tune:
        return factory, None, {}
    best, table = select_by_validation(factory, list(spec.tune.grid), data.train, data.valid,
                                       metric=eval_cfg.select_metric, ks=list(eval_cfg.ks))
    return factory, best, table


def run_baselines(data: Prepared, baselines: DictConfig, eval_cfg: DictConfig, out_dir: Path, progress: bool) -> dict:
    """Fit, tune and evaluate every configured baseline; write rows into metrics.json."""
    ks = list(eval_cfg.ks)
    notes = []
    results = {}
    for name, spec in baselines.items():
        factory, best, table = tuned_factory(spec, data, eval_cfg)
        if spec.tune:
            notes.append(
                f"- {name}: {spec.tune.param} = {best} chosen on valid {eval_cfg.select_metric} "
                + "(" + ", ".join(f"{k}: {v:.4f}" for k, v in table.items()) + ")"
            )
        model = factory(best).fit(data.train)
        valid = evaluate_model(model.score, data, "valid", ks, eval_cfg.batch_size, progress=False)
        update_metrics(out_dir, name, "valid", valid)
        model = factory(best).fit(data.history("test"))
        test, topk, users = evaluate_model(model.score, data, "test", ks, eval_cfg.batch_size, progress=progress,
                                           return_topk=True)
        update_metrics(out_dir, name, "test", test)
        save_lists(out_dir, name, users, topk)
        log.info("%s test ndcg@10=%.4f recall@10=%.4f", name, test.get("ndcg@10", float("nan")), test.get("recall@10", float("nan")))
        results[name] = test
    add_section(
        out_dir,
        "Baselines",
        "Tuned on validation (fit on train), then refit on train+valid and evaluated on test with "
        "train+valid items excluded (full ranking over all items).\n\n" + "\n".join(notes),
    )
    return results
