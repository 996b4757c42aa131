"""retrieval/device_batches.py: batches built from device tables equal the CPU collate, row for row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.data import Histories, TrainExamples
from retrieval.device_batches import DeviceExamples


def flat(batch: dict) -> dict[str, np.ndarray]:
    out = {"item_index": batch["item_index"].cpu().numpy()}
    for part in ("user", "item"):
        out.update({f"{part}/{k}": v.cpu().numpy() for k, v in batch[part].items()})
    return out


@pytest.mark.parametrize("mode", ["bag", "causal"])
def test_device_batch_equals_cpu_collate(tiny_prepared, mode):
    data = tiny_prepared
    examples = TrainExamples(data, Histories.build(data, data.split.train), 20, mode)
    device = DeviceExamples(examples, "cpu")
    assert len(device) == len(examples)
    rows = np.random.default_rng(0).choice(len(examples), 700, replace=False)
    want, got = flat(examples.collate(rows.tolist())), flat(device.batch(torch.as_tensor(rows)))
    assert want.keys() == got.keys() and {"user/history", "item/item_id"} <= set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got[k].dtype == want[k].dtype, k


def test_epoch_covers_each_example_once_in_full_batches(tiny_prepared):
    data = tiny_prepared
    examples = TrainExamples(data, Histories.build(data, data.split.train), 20, "bag")
    device = DeviceExamples(examples, "cpu")
    seen = [b["item_index"] for b in device.epoch(256, torch.Generator().manual_seed(0))]
    assert len(seen) == len(examples) // 256 and all(len(s) == 256 for s in seen)
    counts = np.bincount(torch.cat(seen).numpy(), minlength=data.n_items)
    assert counts.sum() == len(seen) * 256 and counts.max() <= np.bincount(examples.h.items).max()
