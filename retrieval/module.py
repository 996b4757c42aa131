"""Lightning wrapper of the two-tower model: loss, negatives, optimizer and validation metrics.

The towers themselves stay plain modules (:mod:`retrieval.towers`); only they are exported.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch

from hydra.utils import instantiate

from evaluation.metrics import ranking_metrics
from inference.topk import topk_excluding
from retrieval.loss import sampled_softmax_loss
from retrieval.distributed import gather_rows
from retrieval.hparams import tower_features
from retrieval.towers import TwoTower, build_two_tower


MAX_SCORES = 20_000_000  # dense (user, item) scores held at once during validation


class RetrievalValidation:
    """What validation needs: user inputs per batch of users, items to exclude, the truth."""

    def __init__(self, users: np.ndarray, make_inputs: Callable[[np.ndarray], dict], exclude: sp.csr_matrix,
                 truth: sp.csr_matrix, ks: list[int]):
        self.users, self.make_inputs, self.exclude, self.truth, self.ks = users, make_inputs, exclude, truth, ks


class TwoTowerModule(L.LightningModule):
    """Trains :class:`TwoTower` with in-batch sampled softmax (+ optional uniform negatives)."""

    def __init__(self, model: TwoTower | None = None, optimizer: Callable | dict | None = None, temperature: float | None = None,
                 logq_correction: bool | None = None, uniform_negatives: int | None = None, item_log_q: torch.Tensor | None = None,
                 catalog: dict[str, torch.Tensor] | None = None, validation: RetrievalValidation | None = None,
                 eval_batch_size: int = 1024, towers: dict | None = None, n_items: int | None = None):
        """Every argument comes from configs/retrieval (no defaults here); the ``None`` defaults only let
        ``load_from_checkpoint`` pass the stored hyperparameters by name.

        Args:
            model: the towers; None rebuilds them from ``towers`` (what ``load_from_checkpoint`` does).
            optimizer: a ``retrieval.optimizer`` config dict (``_target_``, ``_partial_``) or a factory
                ``params -> Optimizer``; only a dict is stored in the checkpoint.
            towers: :func:`retrieval.hparams.tower_config` of the model, stored as a hyperparameter.
            n_items: catalog size (sizes ``item_log_q`` when the module is rebuilt from a checkpoint).
        """
        super().__init__()
        # Everything but tensors, data and objects goes into the checkpoint's hyperparameters.
        self.save_hyperparameters(ignore=["model", "item_log_q", "catalog", "validation"]
                                  + ([] if isinstance(optimizer, dict) or optimizer is None else ["optimizer"]))
        if model is None:
            if towers is None:
                raise ValueError("TwoTowerModule needs model= or towers= (retrieval.hparams.tower_config); "
                                 "a checkpoint written before towers were stored cannot rebuild its model.")
            model = build_two_tower(tower_features(towers), 0, **towers["model"])
        self.model = model
        self.optimizer_factory = optimizer
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.uniform_negatives = uniform_negatives
        if item_log_q is None:
            item_log_q = torch.zeros(n_items or 0)
        self.register_buffer("item_log_q", item_log_q, persistent=False)  # (N,)
        self.catalog = catalog or {}  # every item's encoded features, (N, ...) tensors
        self.validation = validation
        self.eval_batch_size = eval_batch_size
        self._item_emb: torch.Tensor | None = None
        self._topk: list[np.ndarray] = []
        self._users: list[np.ndarray] = []

    def item_embeddings(self, batch_size: int = 8192) -> torch.Tensor:
        """All catalog items through the item tower (eval mode). -> (N, D)"""
        n = len(next(iter(self.catalog.values())))
        out = []
        for s in range(0, n, batch_size):
            out.append(self.model.item_tower({k: v[s : s + batch_size].to(self.device) for k, v in self.catalog.items()}))
        return torch.cat(out)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        user = self.model.user_tower(batch["user"])  # (B, D)
        item = self.model.item_tower(batch["item"])  # (B, D)
        idx = batch["item_index"]
        log_q = self.item_log_q[idx] if self.logq_correction else None
        neg = neg_idx = neg_log_q = None
        if self.uniform_negatives > 0:
            n = self.item_log_q.shape[0]
            neg_idx = torch.randint(0, n, (self.uniform_negatives,), device=self.device)
            neg = self.model.item_tower({k: v[neg_idx.cpu()].to(self.device) for k, v in self.catalog.items()})
            # uniform proposal: q = M / N for every item, on the same scale as the in-batch B * p_j
            neg_log_q = torch.full((self.uniform_negatives,), float(np.log(self.uniform_negatives / n)), device=self.device)
        loss = sampled_softmax_loss(user, item, idx, self.temperature, log_q, neg, neg_idx, neg_log_q)
        self.log("train/loss", loss, prog_bar=True, batch_size=user.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._item_emb = self.item_embeddings()
        self._topk, self._users = [], []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        users = batch.cpu().numpy()
        x = {k: v.to(self.device) for k, v in self.validation.make_inputs(users).items()}
        queries = self.model.user_tower(x)  # (B, D)
        # Score at most ~20M (user, item) pairs at a time: a 1M-item catalog would otherwise need a
        # dense (eval_batch_size, N) matrix of ~4 GB per 1000 users.
        step = max(1, MAX_SCORES // self._item_emb.shape[0])
        for s in range(0, len(users), step):
            scores = (queries[s : s + step] @ self._item_emb.T).float().cpu().numpy()  # (b, N)
            self._topk.append(topk_excluding(scores, self.validation.exclude[users[s : s + step]],
                                             max(self.validation.ks)))
        self._users.append(users)

    def on_validation_epoch_end(self) -> None:
        if not self._topk:
            return
        # Under DDP each process scored its share of the users (a DistributedSampler, padded with
        # repeats): gather every process's rows, keep one per user, score them all on every process
        # so early stopping and checkpoints decide the same everywhere.
        users, topk = gather_rows(self, np.concatenate(self._users), np.concatenate(self._topk))
        m = ranking_metrics(topk, self.validation.truth[users], self.validation.ks)
        for k in self.validation.ks:
            self.log(f"val/recall@{k}", m[f"recall@{k}"], prog_bar=k == max(self.validation.ks))
            self.log(f"val/ndcg@{k}", m[f"ndcg@{k}"])
        self._item_emb = None

    def configure_optimizers(self):
        if isinstance(self.optimizer_factory, dict):
            return instantiate(self.optimizer_factory, params=self.parameters(), _partial_=False)
        return self.optimizer_factory(params=self.parameters())
