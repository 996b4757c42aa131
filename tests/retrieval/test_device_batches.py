"""retrieval/device_batches.py: batches built from device tables equal the CPU collate, row for row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.data import Histories, TrainExamples
from retrieval.device_batches import DeviceExamples, DeviceLoader, train_loader


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


def test_device_loader_yields_len_batches_each_epoch_reshuffled(tiny_prepared):
    data = tiny_prepared
    examples = DeviceExamples(TrainExamples(data, Histories.build(data, data.split.train), 20, "bag"), "cpu")
    loader = DeviceLoader(examples, 512, seed=0)
    first, second = list(loader), list(loader)
    assert len(first) == len(second) == len(loader) == len(examples) // 512
    assert not torch.equal(first[0]["item_index"], second[0]["item_index"])  # a new order each epoch
    assert len(list(DeviceLoader(examples, 10**9, seed=0))) == 1  # a batch larger than the data: one batch


def test_training_with_batches_on_device(tmp_path):
    from tests.conftest import TINY_DATA, compose_cfg
    from train import train

    m = train(compose_cfg(tmp_path, TINY_DATA + ["stage=retrieval", "trainer.max_epochs=1",
                                                "retrieval.batches_on_device=true"]))  # + the refit on train+valid
    assert m["two_tower/test/recall@50"] > 0 and m["two_tower_refit/test/recall@50"] > 0


def test_batches_on_device_refuses_ddp(tiny_prepared):
    import lightning as L

    data = tiny_prepared
    examples = TrainExamples(data, Histories.build(data, data.split.train), 20, "bag")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"runs 2 processes; set retrieval.batches_on_device=false for DDP"):
        train_loader(examples, 256, True, trainer, 0)
    assert len(train_loader(examples, 256, False, trainer, 0)) == len(examples) // 256  # the CPU DataLoader
