"""Two-tower training batches built on the device, from tables that live there.

:class:`retrieval.data.TrainExamples` builds each batch on the CPU in numpy (one process, inside
the DataLoader); on a GPU that step, not the towers, bounds the samples per second. This class
holds the same tables as tensors on the device (histories, user and item feature tables, each
example's context codes) and builds the very same batch with tensor gathers, so a GPU trains on
large batches without waiting for the CPU. Tested equal to ``TrainExamples.collate`` on the CPU.
``retrieval.batches_on_device: true`` trains with them (one device; see docs/gpu.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from features.encoders import context_from_timestamp
from retrieval.data import TrainExamples


class DeviceExamples:
    """The training examples of a :class:`TrainExamples` as device tensors.

    Args:
        examples: the CPU examples (data, histories, history length and mode).
        device: where the tables live and batches are built.
    """

    def __init__(self, examples: TrainExamples, device: torch.device | str):
        self.device = torch.device(device)
        data, h = examples.data, examples.h

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a)).to(self.device)

        self.L, self.mode = examples.L, examples.mode
        self.users, self.pos = put(examples.users), put(examples.pos)  # (nnz,) each
        self.offsets, self.codes, self.items = put(h.offsets), put(h.codes), put(h.items)
        self.user_table = {n: put(v) for n, v in data.user_table.items()}
        self.item_table = {n: put(v) for n, v in data.item_table.items()}
        # Context codes depend only on each example's timestamp: computed once, not per batch.
        self.context = {s.name: put(context_from_timestamp(h.timestamps, s.source)) for s in data.features.specs["context"]}
        self.steps = torch.arange(self.L, device=self.device)  # (L,)

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, rows: torch.Tensor) -> dict[str, object]:
        """The batch of example indices ``rows`` (B,), equal to ``TrainExamples.collate(rows)``."""
        r = rows.to(self.device, torch.int64)
        u, p = self.users[r], self.pos[r]  # (B,)
        start = self.offsets[u]
        if self.mode == "causal":
            idx = (start + p - self.L)[:, None] + self.steps[None, :]  # (B, L) the L items before the target
            valid = idx >= start[:, None]
        else:
            end = self.offsets[u + 1]
            idx = (end - self.L)[:, None] + self.steps[None, :]  # (B, L) the user's last L items ...
            valid = (idx >= start[:, None]) & (idx != (start + p)[:, None])  # ... minus the target
        history = torch.where(valid, self.codes[idx.clamp(0, len(self.codes) - 1)], 0)
        target = self.items[r]
        user = {n: v[u] for n, v in self.user_table.items()}
        user.update({n: v[r] for n, v in self.context.items()})
        user["history"] = history
        return {"user": user, "item": {n: v[target] for n, v in self.item_table.items()}, "item_index": target}

    def epoch(self, batch_size: int, generator: torch.Generator | None = None):
        """Shuffled full batches of one epoch (the last partial batch is dropped, as in training)."""
        order = torch.randperm(len(self), device=self.device, generator=generator)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield self.batch(order[s : s + batch_size])


class DeviceLoader:
    """An epoch iterable of device-built batches that Lightning takes as a train dataloader.

    One device only (no sharding across DDP ranks). Each epoch reshuffles with ``seed + epoch``.
    """

    def __init__(self, examples: DeviceExamples, batch_size: int, seed: int):
        self.examples, self.seed, self.epoch = examples, seed, 0
        self.batch_size = min(batch_size, len(examples))  # a tiny dataset still gives one batch

    def __len__(self) -> int:
        return len(self.examples) // self.batch_size

    def __iter__(self):
        g = torch.Generator(device=self.examples.device).manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return self.examples.epoch(self.batch_size, g)


def train_loader(examples: TrainExamples, batch_size: int, on_device: bool, trainer, seed: int):
    """The two-tower training batches: a CPU DataLoader, or (``retrieval.batches_on_device``)
    batches built on the trainer's device from tables held there."""
    if not on_device:
        return DataLoader(examples, batch_size=batch_size, shuffle=True, collate_fn=examples.collate,
                          drop_last=len(examples) > batch_size, num_workers=0)
    if trainer.world_size > 1:
        raise ValueError(f"retrieval.batches_on_device=true builds batches on one device, but the trainer runs "
                         f"{trainer.world_size} processes; set retrieval.batches_on_device=false for DDP")
    return DeviceLoader(DeviceExamples(examples, trainer.strategy.root_device), batch_size, seed)
