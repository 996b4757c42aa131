"""Fit the two-tower model with Lightning: data loaders, callbacks, logger, checkpoints, resume."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from features.prepare import Prepared
from retrieval.distributed import finish_distributed, single_process
from retrieval.data import Histories, TrainExamples, item_inputs, user_inputs
from retrieval.device_batches import train_loader
from retrieval.hparams import tower_config
from retrieval.module import RetrievalValidation, TwoTowerModule
from retrieval.towers import TwoTower, build_two_tower

log = logging.getLogger(__name__)


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 mixed precision on a GPU that supports it, full fp32 on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_trainer(trainer_cfg: DictConfig, logger, callbacks: list, out_dir: Path, progress: bool,
                 distributed: bool = False, **overrides) -> L.Trainer:
    """Instantiate ``configs/trainer`` with the run's logger, callbacks and output dir.

    Only the two-tower fit (``distributed=True``) runs data parallel under ``trainer=ddp``; every
    other fit runs in one process on one device (see :mod:`retrieval.distributed`).
    """
    overrides = {**single_process(trainer_cfg, distributed), **overrides}
    return instantiate(
        trainer_cfg,
        precision=resolve_precision(trainer_cfg.precision),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=str(out_dir),
        enable_progress_bar=progress,
        enable_model_summary=False,
        **overrides,
    )


def request_times(first: Histories, fallback: Histories, users: np.ndarray) -> np.ndarray:
    """Offline request time of each user: their first held-out interaction, else their last known."""
    start = first.offsets[users]
    has = first.offsets[users + 1] > start
    ts = np.where(has, first.timestamps[np.clip(start, 0, max(len(first.timestamps) - 1, 0))] if len(first.timestamps) else 0, -1)
    return np.where(has, ts, fallback.last_timestamp(users))


def fit_two_tower(data: Prepared, cfg: DictConfig, trainer_cfg: DictConfig, logger, out_dir: Path, seed: int,
                  progress: bool, refit_epochs: int | None = None) -> tuple[TwoTower, dict]:
    """Train the towers and return (model, stats).

    Without ``refit_epochs``: train on the train split, early-stop on validation recall and keep
    the best checkpoint. With it: train from scratch on train+valid for exactly that many epochs
    (the protocol the baselines follow for the test split: select on valid, refit on train+valid).
    """
    L.seed_everything(seed, workers=True)
    refit = refit_epochs is not None
    frame = pd.concat([data.split.train, data.split.valid], ignore_index=True) if refit else data.split.train
    train_h = Histories.build(data, frame)
    valid_h = Histories.build(data, data.split.valid)
    model = build_two_tower(data.features, data.n_items, **cfg.model)
    examples = TrainExamples(data, train_h, cfg.history_len, cfg.history_mode)
    pop = np.asarray((data.history("test") if refit else data.train).sum(axis=0)).ravel() + 1.0
    item_log_q = torch.as_tensor(np.log(cfg.batch_size * pop / pop.sum()), dtype=torch.float32)
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)  # stored in the checkpoint
    towers = tower_config(data.features, OmegaConf.to_container(cfg.model, resolve=True))
    if refit:
        module = TwoTowerModule(model, optimizer, cfg.temperature, cfg.logq_correction, cfg.uniform_negatives,
                                item_log_q, item_inputs(data), towers=towers, n_items=data.n_items)
        # No checkpoint: the refit's weights are used right away (and would land in the logger's folder).
        trainer = make_trainer(trainer_cfg, logger, [], out_dir, progress, max_epochs=refit_epochs,
                               limit_val_batches=0, enable_checkpointing=False)
        loader = train_loader(examples, cfg.batch_size, cfg.batches_on_device, trainer, seed)
        t0 = time.time()
        trainer.fit(module, loader)
        seconds = time.time() - t0
        stats = {"fit_seconds": seconds, "epochs": refit_epochs,
                 "samples_per_second": len(examples) * refit_epochs / max(seconds, 1e-9)}
        log.info("two-tower refit on train+valid: %s", stats)
        return module.model.cpu().eval(), stats

    # Validation users: those with validation items (a seeded sample on big datasets).
    vusers = np.flatnonzero(np.diff(data.valid.indptr) > 0)
    if len(vusers) > cfg.val_users:
        vusers = np.sort(np.random.default_rng(seed).choice(vusers, cfg.val_users, replace=False))
    vtimes = request_times(valid_h, train_h, np.arange(len(data.users)))
    validation = RetrievalValidation(
        vusers,
        lambda u: user_inputs(data, u, train_h.recent(u, cfg.history_len), vtimes[u]),
        data.train, data.valid, list(cfg.val_ks),
    )
    val_loader = DataLoader(torch.as_tensor(vusers), batch_size=cfg.eval_batch_size)

    module = TwoTowerModule(model, optimizer, cfg.temperature, cfg.logq_correction,
                            cfg.uniform_negatives, item_log_q, item_inputs(data), validation, cfg.eval_batch_size,
                            towers=towers, n_items=data.n_items)
    ckpt_dir = out_dir / "checkpoints" / "retrieval"
    monitor = cfg.early_stopping.monitor
    callbacks = [
        EarlyStopping(monitor=monitor, mode="max", patience=cfg.early_stopping.patience),
        ModelCheckpoint(dirpath=str(ckpt_dir), monitor=monitor, mode="max", save_top_k=1, save_last=True,
                        filename="best"),
    ]
    trainer = make_trainer(trainer_cfg, logger, callbacks, out_dir, progress, distributed=True)
    loader = train_loader(examples, cfg.batch_size, cfg.batches_on_device, trainer, seed)
    t0 = time.time()
    trainer.fit(module, loader, val_loader, ckpt_path=cfg.resume_from)
    seconds = time.time() - t0
    finish_distributed(trainer)  # under DDP only global rank zero goes on
    best = callbacks[1].best_model_path
    best_epoch = trainer.current_epoch - 1
    if best:
        ckpt = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(ckpt["state_dict"], strict=False)
        best_epoch = int(ckpt["epoch"])
    model = module.model.cpu().eval()
    epochs = trainer.current_epoch
    # A resumed run trains only the epochs after its checkpoint in this process's seconds.
    start_epoch = int(torch.load(cfg.resume_from, map_location="cpu", weights_only=False)["epoch"]) + 1 \
        if cfg.resume_from else 0
    stats = {
        "fit_seconds": seconds,
        "epochs": epochs,
        "best_epochs": best_epoch + 1,
        "samples_per_second": len(examples) * max(epochs - start_epoch, 1) / max(seconds, 1e-9),
        "best_checkpoint": best,
        f"best_{monitor}": float(callbacks[1].best_model_score or float("nan")),
    }
    log.info("two-tower trained: %s", stats)
    return model, stats
