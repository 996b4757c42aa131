"""Multi-process (DDP) training helpers: gather validation rows, hand post-training work to rank zero.

Lightning's DDP starts one process per device (``trainer=ddp``); every process runs ``train.py``
from the top. Only the two-tower fit is data parallel: once it ends, the other processes leave and
global rank zero evaluates, refits, trains the ranker and writes the run alone (on one device).
"""

from __future__ import annotations

import logging
import os
import sys

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


def is_global_zero() -> bool:
    """True in the process that owns the run's files (always, outside a multi-process launch)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def gather_rows(module: L.LightningModule, users: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every process's (user, row) pairs, one per user, sorted by user; unchanged in one process.

    Args:
        module: the LightningModule (its ``all_gather`` does the collective).
        users: (n,) user indices this process scored.
        rows: (n, K) their top-K item indices.
    """
    if module.trainer is None or module.trainer.world_size <= 1:
        return users, rows
    all_users = module.all_gather(torch.as_tensor(users, device=module.device)).reshape(-1).cpu().numpy()  # (W * n,)
    all_rows = module.all_gather(torch.as_tensor(rows, device=module.device)).reshape(-1, rows.shape[1]).cpu().numpy()  # (W * n, K)
    uniq, first = np.unique(all_users, return_index=True)
    return uniq, all_rows[first]


def finish_distributed(trainer: L.Trainer) -> None:
    """After a multi-process fit: close the process group; every process but global rank zero exits.

    The checkpoint callback has written the best model from rank zero, so nothing is lost.
    """
    if trainer.world_size <= 1:
        return
    trainer.strategy.barrier("two_tower_fit_done")
    rank = trainer.global_rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if rank != 0:
        log.info("process %d done: its share of the two-tower fit is over; rank 0 writes the run", rank)
        sys.exit(0)
    log.info("DDP fit over %d processes done; the rest of the run continues in this process", trainer.world_size)


def single_process(trainer_cfg, distributed: bool) -> dict:
    """Trainer overrides that keep a fit in this process unless it is the data-parallel one."""
    if distributed or (trainer_cfg.get("strategy") in (None, "auto") and trainer_cfg.get("devices", 1) == 1
                       and trainer_cfg.get("num_nodes", 1) == 1):
        return {}
    return {"strategy": "auto", "devices": 1, "num_nodes": 1}
