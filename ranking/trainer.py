"""Train the late-fusion ranker on retrieval candidates (hard negatives) with a listwise loss.

Training lists come from a time window the retrieval model never saw: the validation split,
answered by the retrieval model trained on the train split only, with features computed from
train history. A share of those lists is held out for early stopping.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ranking.model import LateFusionRanker, choose_route_scales, init_prior
from retrieval.trainer import make_trainer

log = logging.getLogger(__name__)


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of each list against its positives (uniform target over them).

    Args:
        scores: (U, C) ranker scores.
        labels: (U, C) 1 for positives.
        valid: (U, C) False where the slot holds no candidate.
        weights: (U, C) how many times each candidate counts in the softmax's denominator (1 for
            all when None); an exposure negative counts ``1 + ranking.impression_negatives.weight``.
    """
    if weights is not None:
        scores = scores + torch.log(weights)
    logits = scores.masked_fill(~valid, -1e9)
    logp = torch.log_softmax(logits, dim=1)
    pos = labels * valid
    n = pos.sum(1)
    keep = n > 0
    return -((logp * pos).sum(1)[keep] / n[keep]).mean()


def list_ndcg(scores: torch.Tensor, labels: torch.Tensor, k: int, per_list: bool = False) -> torch.Tensor:
    """Mean NDCG@k of re-ranking each list (positives only count if among the candidates);
    ``per_list``: one value per list that has a positive instead of the mean."""
    order = scores.argsort(dim=1, descending=True)[:, :k]
    gains = labels.gather(1, order)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=torch.float32))
    dcg = (gains * disc).sum(1)
    ideal = (labels.sort(dim=1, descending=True).values[:, :k] * disc).sum(1)
    keep = ideal > 0
    values = dcg[keep] / ideal[keep]
    return values if per_list else values.mean()


class CandidateLists(torch.utils.data.Dataset):
    """U lists of C candidates, stored flat (U*C rows); a batch is a set of whole lists."""

    def __init__(self, inputs: dict[str, np.ndarray], labels: np.ndarray, valid: np.ndarray,
                 teacher: np.ndarray | None = None, weights: np.ndarray | None = None):
        self.inputs = {k: torch.as_tensor(v) for k, v in inputs.items()}
        self.labels = torch.as_tensor(labels, dtype=torch.float32)  # (U, C)
        self.valid = torch.as_tensor(valid)  # (U, C)
        self.teacher = None if teacher is None else torch.as_tensor(teacher, dtype=torch.float32)  # (U, C)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)  # (U, C)
        self.c = labels.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, lists: list[int]) -> dict:
        u = torch.as_tensor(lists)
        rows = (u[:, None] * self.c + torch.arange(self.c)[None]).reshape(-1)
        batch = {"x": {k: v[rows] for k, v in self.inputs.items()}, "labels": self.labels[u], "valid": self.valid[u]}
        if self.teacher is not None:
            batch["teacher"] = self.teacher[u]
        if self.weights is not None:
            batch["weights"] = self.weights[u]
        return batch


class RankerModule(L.LightningModule):
    """Lightning wrapper: listwise loss, list NDCG@10 for validation, optimizer from config."""

    def __init__(self, model: LateFusionRanker, optimizer):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer

    def _scores(self, batch: dict) -> torch.Tensor:
        s, _ = self.model(batch["x"])
        return s.reshape(batch["labels"].shape)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = listwise_loss(self._scores(batch), batch["labels"], batch["valid"], batch.get("weights"))
        self.log("ranker/train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        s = self._scores(batch).masked_fill(~batch["valid"], -1e9)
        self.log("ranker/val_ndcg@10", list_ndcg(s, batch["labels"], 10), prog_bar=True, batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.parameters())


@torch.no_grad()
def set_group_baselines(model: LateFusionRanker, inputs: dict[str, np.ndarray], valid: np.ndarray, max_rows: int = 50_000) -> None:
    """Store each group's average vector over (a sample of) training rows: the contribution reference."""
    rows = np.flatnonzero(valid.ravel())[:max_rows]
    model.eval()
    h = model.group_vectors({k: torch.as_tensor(v[rows]) for k, v in inputs.items()})  # (R, G, H)
    model.baseline.copy_(h.mean(0))


def negative_weights(items: np.ndarray, labels: np.ndarray, exposed_rows: sp.csr_matrix, weight: float) -> np.ndarray:
    """(U, C) softmax weight of each candidate: ``1 + weight`` where the item was shown to the list's
    user and not acted on (``exposed_rows``: one row per list, exposure negatives), 1 elsewhere;
    a positive of the list is never a negative."""
    rows = np.repeat(np.arange(len(items)), items.shape[1])
    shown = np.asarray(exposed_rows[rows, np.clip(items.ravel(), 0, None)]).reshape(items.shape) > 0
    shown &= (items >= 0) & ~np.asarray(labels, dtype=bool)
    return np.where(shown, 1.0 + weight, 1.0).astype(np.float32)


def labels_for(items: np.ndarray, truth_rows: sp.csr_matrix) -> np.ndarray:
    """(U, C) 1 where the candidate is one of the user's held-out items."""
    rows = np.repeat(np.arange(len(items)), items.shape[1])
    return (np.asarray(truth_rows[rows, np.clip(items.ravel(), 0, None)]).reshape(items.shape) > 0) & (items >= 0)


def split_lists(labels: np.ndarray, val_share: float, seed: int,
                groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lists with a positive, shuffled by seed into (train, held-out) index arrays (both sorted).

    ``groups`` (U,): lists of one group (e.g. a user's list and its cold-start copy, which share
    their positives) land on the same side, so held-out lists never echo a training list.
    """
    lists = np.flatnonzero(labels.any(axis=1))
    groups = lists if groups is None else np.asarray(groups)[lists]
    keys = np.unique(groups)
    np.random.default_rng(seed).shuffle(keys)
    n_val = max(1, int(len(keys) * val_share))
    held = np.isin(groups, keys[:n_val])
    return np.sort(lists[~held]), np.sort(lists[held])


def train_rows(valid: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Flat row numbers of the real candidates of lists ``idx``."""
    c = valid.shape[1]
    rows = (idx[:, None] * c + np.arange(c)[None]).ravel()
    return rows[valid[idx].ravel()]


def subset_lists(inputs: dict[str, np.ndarray], labels: np.ndarray, valid: np.ndarray, idx: np.ndarray,
                 teacher: np.ndarray | None = None, weights: np.ndarray | None = None) -> CandidateLists:
    c = labels.shape[1]
    rows = (idx[:, None] * c + np.arange(c)[None]).ravel()
    return CandidateLists({k: v[rows] for k, v in inputs.items()}, labels[idx], valid[idx],
                          None if teacher is None else teacher[idx], None if weights is None else weights[idx])


@torch.no_grad()
def score_lists(model: LateFusionRanker, inputs: dict, shape: tuple[int, int], batch_rows: int = 65536) -> np.ndarray:
    """A ranker's scores over flat list inputs (numpy or tensors), reshaped to (U, C)."""
    model.eval()
    n = shape[0] * shape[1]
    out = [model({k: torch.as_tensor(v[s : s + batch_rows]) for k, v in inputs.items()})[0].numpy()
           for s in range(0, n, batch_rows)]
    return np.concatenate(out).reshape(shape)


def held_out_ndcg(scores: np.ndarray, labels, valid, idx: np.ndarray | None = None, per_list: bool = False):
    """Mean list NDCG@10 of ``scores`` (U, C) over the lists ``idx`` (all when None); ``per_list``:
    the (n,) values of the lists with a positive instead."""
    idx = np.arange(len(scores)) if idx is None else idx
    s = torch.as_tensor(scores[idx]).masked_fill(~torch.as_tensor(np.asarray(valid)[idx]), -1e9)
    out = list_ndcg(s, torch.as_tensor(np.asarray(labels)[idx], dtype=torch.float32), 10, per_list)
    return out.numpy() if per_list else float(out)


def fit_lists(module: L.LightningModule, train_ds: CandidateLists, val_ds: CandidateLists, cfg: DictConfig,
              trainer_cfg: DictConfig, logger, ckpt_dir: Path, progress: bool, residual: DictConfig) -> dict:
    """Lightning fit with early stopping / best checkpoint on held-out lists' NDCG@10, then each
    route's residual weight chosen on the same held-out lists (see :mod:`ranking.model`) from
    ``residual.residual_weights`` at ``residual.residual_z`` standard errors (the ranking config)."""
    labels, valid = val_ds.labels.numpy(), val_ds.valid.numpy()
    shape = tuple(labels.shape)
    prior = held_out_ndcg(score_lists(module.model, val_ds.inputs, shape), labels, valid)  # untrained: the prior
    module.model.train()  # Lightning keeps the mode it finds
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), monitor="ranker/val_ndcg@10", mode="max", save_top_k=1,
                           save_last=True, filename="best")
    callbacks = [EarlyStopping(monitor="ranker/val_ndcg@10", mode="max", patience=cfg.patience), ckpt]
    trainer = make_trainer(trainer_cfg, logger, callbacks, ckpt_dir.parent.parent, progress, max_epochs=cfg.max_epochs)
    t0 = time.time()
    trainer.fit(module,
                DataLoader(train_ds, batch_size=cfg.lists_per_batch, shuffle=True, collate_fn=train_ds.collate),
                DataLoader(val_ds, batch_size=cfg.lists_per_batch, collate_fn=val_ds.collate))
    seconds = time.time() - t0
    if ckpt.best_model_path:
        module.load_state_dict(torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"])
    scales = choose_route_scales(module.model, val_ds.inputs, labels, valid,
                                 lambda s, idx: held_out_ndcg(s, labels[idx], valid[idx], per_list=True),
                                 z=residual.residual_z, grid=tuple(residual.residual_weights))
    final = held_out_ndcg(score_lists(module.model, val_ds.inputs, shape), labels, valid)
    log.info("held-out NDCG@10: prior only %.4f, trained %.4f (residual weight per route %s)", prior, final, scales)
    return {"fit_seconds": seconds, "epochs": trainer.current_epoch, "train_lists": len(train_ds),
            "val_lists": len(val_ds), "prior_val_ndcg@10": prior, "route_scale": scales, "best_val_ndcg@10": final}


def fit_ranker(model: LateFusionRanker, inputs: dict[str, np.ndarray], labels: np.ndarray, valid: np.ndarray,
               cfg: DictConfig, trainer_cfg: DictConfig, logger, out_dir: Path, seed: int, progress: bool,
               groups: np.ndarray | None = None, weights: np.ndarray | None = None) -> dict:
    """Fit on lists with at least one positive; early-stop on held-out lists' NDCG@10 (split by ``groups``).

    ``weights`` (U, C): softmax weights of the training loss (exposure negatives, :func:`negative_weights`);
    early stopping and the residual weights are chosen on the unweighted held-out lists.
    """
    L.seed_everything(seed, workers=True)
    train_idx, val_idx = split_lists(labels, cfg.val_share, seed, groups)
    init_prior(model, inputs, train_rows(valid, train_idx), cfg.prior_pop_weight)
    module = RankerModule(model, instantiate(cfg.optimizer))
    stats = fit_lists(module, subset_lists(inputs, labels, valid, train_idx, weights=weights),
                      subset_lists(inputs, labels, valid, val_idx),
                      cfg, trainer_cfg, logger, out_dir / "checkpoints" / "ranker", progress, cfg)
    set_group_baselines(module.model, inputs, valid)
    has_pos = labels.any(axis=1)
    stats["positives_per_list"] = float(labels[has_pos].sum(1).mean()) if has_pos.any() else 0.0
    stats["exposure_negatives"] = int((weights[has_pos] > 1).sum()) if weights is not None else 0
    log.info("ranker trained: %s", stats)
    return stats
