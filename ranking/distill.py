"""Offline distillation of the ranker into a smaller student, with a quality gate.

The student (a :class:`~ranking.model.LateFusionRanker` with narrower layers and optionally fewer
signal groups) learns the teacher's scores on the teacher's training lists: score matching (MSE
of per-list centred scores) plus a listwise KL term between the softmaxed lists at a temperature,
and optionally the true labels' listwise loss. It is kept only if it retains the configured share
of the teacher's NDCG@10 on the held-out lists.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from ranking.model import LateFusionRanker, init_prior
from ranking.trainer import (RankerModule, fit_lists, held_out_ndcg, listwise_loss, score_lists, set_group_baselines,
                             split_lists, subset_lists, train_rows)

log = logging.getLogger(__name__)


class DistillGateError(RuntimeError):
    """The student lost more quality than allowed; the message carries the figures."""


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, score_weight: float, kl_weight: float, label_weight: float) -> torch.Tensor:
    """Score matching + listwise KL (+ labels).

    Args:
        student, teacher: (U, C) scores; valid: (U, C) bool; labels: (U, C) 0/1 or None.
        temperature: softens both lists before the KL term (scaled by T^2, Hinton et al.).
    """
    v = valid.float()
    n = v.sum(1, keepdim=True).clamp_min(1.0)
    # Scores are only defined up to a per-list shift for ranking: match them centred per list.
    s_c = student - (student * v).sum(1, keepdim=True) / n
    t_c = teacher - (teacher * v).sum(1, keepdim=True) / n
    mse = (((s_c - t_c) ** 2) * v).sum() / v.sum().clamp_min(1.0)
    mask = ~valid
    log_p_s = F.log_softmax((student / temperature).masked_fill(mask, -1e9), dim=1)
    p_t = F.softmax((teacher / temperature).masked_fill(mask, -1e9), dim=1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - log_p_s)).masked_fill(mask, 0.0).sum(1).mean() * temperature**2
    loss = score_weight * mse + kl_weight * kl
    if labels is not None and label_weight > 0:
        loss = loss + label_weight * listwise_loss(student, labels, valid)
    return loss


class DistillModule(RankerModule):
    """The ranker's Lightning wrapper with the distillation loss (validation stays list NDCG@10)."""

    def __init__(self, student: LateFusionRanker, optimizer, cfg: DictConfig):
        super().__init__(student, optimizer)
        self.cfg = cfg

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        c = self.cfg
        loss = distillation_loss(self._scores(batch), batch["teacher"], batch["valid"], batch["labels"],
                                 c.temperature, c.score_weight, c.kl_weight, c.label_weight)
        self.log("distill/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss


def distill(teacher: LateFusionRanker, student: LateFusionRanker, inputs: dict[str, np.ndarray], labels: np.ndarray,
            valid: np.ndarray, cfg: DictConfig, ranker_cfg: DictConfig, trainer_cfg: DictConfig, logger, out_dir: Path,
            seed: int, progress: bool, groups: np.ndarray | None = None) -> dict:
    """Train ``student`` on ``teacher``'s scores; raise :class:`DistillGateError` below the gate.

    Uses the same held-out lists as the teacher (same ``val_share``, seed and ``groups``), which
    neither model was fit on.
    """
    L.seed_everything(seed, workers=True)
    teacher_scores = score_lists(teacher, inputs, labels.shape)
    train_idx, val_idx = split_lists(labels, ranker_cfg.val_share, seed, groups)
    init_prior(student, inputs, train_rows(valid, train_idx), ranker_cfg.prior_pop_weight)
    module = DistillModule(student, instantiate(cfg.optimizer), cfg)
    stats = fit_lists(module, subset_lists(inputs, labels, valid, train_idx, teacher_scores),
                      subset_lists(inputs, labels, valid, val_idx, teacher_scores), cfg, trainer_cfg, logger,
                      out_dir / "checkpoints" / "student", progress, ranker_cfg)
    set_group_baselines(module.model, inputs, valid)
    student_scores = score_lists(module.model, inputs, labels.shape)
    t_ndcg = held_out_ndcg(teacher_scores, labels, valid, val_idx)
    s_ndcg = held_out_ndcg(student_scores, labels, valid, val_idx)
    stats.update({"teacher_val_ndcg@10": t_ndcg, "student_val_ndcg@10": s_ndcg,
                  "retained": s_ndcg / t_ndcg if t_ndcg > 0 else float("nan")})
    log.info("student distilled: %s", stats)
    if not s_ndcg >= cfg.gate.min_retained * t_ndcg:
        raise DistillGateError(
            f"student keeps {s_ndcg:.4f} / {t_ndcg:.4f} = {stats['retained']:.1%} of the teacher's held-out NDCG@10, "
            f"below distill.gate.min_retained={cfg.gate.min_retained:.0%}; it was not written. Widen the student "
            f"(distill.model.*), add groups back (distill.model.groups) or train longer (distill.max_epochs).")
    return stats
