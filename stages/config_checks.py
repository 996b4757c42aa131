"""The composed run config's numbers, checked before any stage runs.

Hydra checks the config's shape (an unknown key or group fails at composition), not its values: a
``retrieval.temperature=-1`` trained a useless model for minutes, a ``trainer.max_epochs=abc`` failed
deep inside Lightning after the baselines, an ``index.nprobe=abc`` only once the towers were trained.
:func:`check_values` reads each knob below (absent keys and ``null`` are skipped: a config group may
leave one out) and raises one :class:`features.schema.DataError` naming every bad value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from evaluation.metrics import SELECTABLE_METRICS
from features.schema import DataError


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


KINDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "count": ("a whole number >= 1", lambda v: _whole(v) and v >= 1),
    "count0": ("a whole number >= 0", lambda v: _whole(v) and v >= 0),
    "epochs": ("a whole number >= 1 (or -1: no limit, early stopping decides)", lambda v: _whole(v) and (v >= 1 or v == -1)),
    "positive": ("a number > 0", lambda v: _real(v) and v > 0),
    "nonneg": ("a number >= 0", lambda v: _real(v) and v >= 0),
    "dropout": ("a number in [0, 1)", lambda v: _real(v) and 0 <= v < 1),
    "share": ("a number in [0, 1]", lambda v: _real(v) and 0 <= v <= 1),
    "part": ("a number in (0, 1): evaluation and early stopping read that part", lambda v: _real(v) and 0 < v < 1),
    "ks": ("a non-empty list of whole numbers >= 1, e.g. [10, 20]",
           lambda v: isinstance(v, list) and len(v) > 0 and all(_whole(k) and k >= 1 for k in v)),
    "layers": ("a list of whole numbers >= 1 (layer widths), e.g. [64]",
               lambda v: isinstance(v, list) and all(_whole(k) and k >= 1 for k in v)),
}

CHECKS: dict[str, str] = {
    **dict.fromkeys((
        "retrieval.model.emb_dim", "retrieval.model.out_dim", "retrieval.history_len", "retrieval.batch_size",
        "retrieval.val_users", "retrieval.eval_batch_size", "index.nprobe", "index.ef_search", "index.train_size",
        "ranking.model.emb_dim", "ranking.model.group_dim", "ranking.cooc.k_neighbors", "ranking.cooc.ease_max_items",
        "ranking.max_epochs", "ranking.lists_per_batch", "distill.model.emb_dim", "distill.model.group_dim",
        "distill.max_epochs", "distill.lists_per_batch", "pipeline.n_candidates",
        "pipeline.max_k", "rules.k", "eval.batch_size", "baselines.itemknn.model.k_neighbors", "export.opset",
        "export.parity_rows", "export.instances", "export.ort_threads"), "count"),
    "trainer.max_epochs": "epochs",
    **dict.fromkeys((
        "retrieval.uniform_negatives", "retrieval.early_stopping.patience", "ranking.patience", "distill.patience",
        "ranking.recent_days", "eval.cold_users", "seed"), "count0"),
    **dict.fromkeys(("eval.ks", "retrieval.eval_ks", "retrieval.val_ks"), "ks"),
    **dict.fromkeys(("retrieval.model.hidden", "ranking.model.hidden", "distill.model.hidden"), "layers"),
    **dict.fromkeys(("split.test_share", "split.valid_share"), "part"),
    **dict.fromkeys((
        "retrieval.temperature", "retrieval.optimizer.lr", "ranking.optimizer.lr", "distill.optimizer.lr",
        "distill.temperature", "baselines.ease.model.l2", "ranking.cooc.ease_l2"), "positive"),
    **dict.fromkeys((
        "retrieval.optimizer.weight_decay", "ranking.optimizer.weight_decay", "distill.optimizer.weight_decay",
        "ranking.cooc.shrink", "baselines.itemknn.model.shrink", "trainer.gradient_clip_val",
        "distill.score_weight", "distill.kl_weight", "distill.label_weight", "ranking.prior_pop_weight",
        "export.parity_atol", "distill.gate.min_retained"), "nonneg"),  # a gate above 1: the student must beat the teacher
    **dict.fromkeys((
        "retrieval.model.dropout", "retrieval.model.item_id_dropout", "retrieval.model.user_id_dropout",
        "retrieval.model.history_dropout", "ranking.model.dropout", "distill.model.dropout", "ranking.val_share"),
        "dropout"),
    **dict.fromkeys((
        "pipeline.cooc_share", "pipeline.cold_popular_share", "export.int8.min_top10_overlap", "ranking.cold_share",
        "split.cold_item_share"), "share"),
}


def check_values(cfg: DictConfig) -> None:
    """Raise DataError naming every knob of :data:`CHECKS` whose value is out of its range or of the
    wrong type (e.g. ``retrieval.temperature=-1``: a number > 0)."""
    bad = []
    for key, kind in CHECKS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        what, ok = KINDS[kind]
        if not ok(value):
            bad.append(f"{key}={value!r} must be {what}")
    test, valid = OmegaConf.select(cfg, "split.test_share"), OmegaConf.select(cfg, "split.valid_share")
    if _real(test) and _real(valid) and test + valid >= 1:
        bad.append(f"split.test_share + split.valid_share = {test + valid:g} must be below 1 (something must be left "
                   "to train on)")
    bad += _names(cfg)
    if bad:
        raise DataError("config values out of range: " + "; ".join(bad) + ". Fix them on the command line "
                        "(key=value) or in configs/.")


def _names(cfg: DictConfig) -> list[str]:
    """Settings that name something: a history mode, the metric early stopping or model selection reads
    (each failed with a traceback, the monitor only after an epoch), the refit mode, the export's flavour,
    inference and default ranker (each failed only after training)."""
    from retrieval.data import HISTORY_MODES  # here: it imports torch

    from export.repository import RANKERS, int8_name
    from export.triton_config import FLAVOURS
    from inference.models import INFERENCE

    bad = []
    mode = OmegaConf.select(cfg, "retrieval.history_mode")
    if mode is not None and mode not in HISTORY_MODES:
        bad.append(f"retrieval.history_mode={mode!r} must be one of {', '.join(HISTORY_MODES)}")
    # settings the last stages read, checked here too: a bad export.flavour stopped the run after training
    rankers = [*RANKERS, *(int8_name(n) for n in RANKERS)]
    for key, known in (("retrieval.refit.mode", ("none", "scratch")), ("export.flavour", FLAVOURS),
                       ("export.recommend_inference", INFERENCE), ("export.ranker", rankers)):
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in known:
            bad.append(f"{key}={value!r} must be one of {', '.join(known)}")
    val_ks = OmegaConf.select(cfg, "retrieval.val_ks")
    monitor = OmegaConf.select(cfg, "retrieval.early_stopping.monitor")
    if monitor is not None and isinstance(val_ks, ListConfig):
        known = [f"val/{m}@{k}" for k in val_ks for m in ("recall", "ndcg")]
        if monitor not in known:
            bad.append(f"retrieval.early_stopping.monitor={monitor!r} must be a metric validation logs: one of "
                       f"{', '.join(known)} (retrieval.val_ks)")
    ks, metric = OmegaConf.select(cfg, "eval.ks"), OmegaConf.select(cfg, "eval.select_metric")
    if metric is not None and isinstance(ks, ListConfig):
        if metric not in {f"{name}@{k}" for k in ks for name in SELECTABLE_METRICS}:
            bad.append(f"eval.select_metric={metric!r} must be one of {', '.join(SELECTABLE_METRICS)} @ one of eval.ks "
                       f"{list(ks)} (e.g. ndcg@{next((k for k in ks if _whole(k) and k >= 1), 10)})")
    return bad
