"""Two-process data-parallel training on CPU (gloo), the way a user runs it: ``python train.py trainer=ddp``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY_DATA
from retrieval.module import TwoTowerModule


def _run_train(args: list[str], cwd, timeout: float) -> subprocess.CompletedProcess:
    """``python train.py args`` in its own process group; the whole group is stopped on a timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank-1 process it started
        out, _ = proc.communicate()
        pytest.fail(f"train.py did not finish in {timeout}s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.mark.slow
def test_two_process_cpu_ddp_trains_evaluates_and_writes_once(tmp_path):
    run = tmp_path / "run"
    res = _run_train(["stage=retrieval", *TINY_DATA, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      "progress=false", f"hydra.run.dir={run}", f"paths.log_dir={tmp_path}/logs"], tmp_path, 420)
    assert res.returncode == 0, res.stdout[-4000:]
    # Rank 1 announced its exit after the fit; rank 0 wrote the whole run.
    assert "process 1 done" in res.stdout and "DDP fit over 2 processes done" in res.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("two_tower/valid/recall@50", "two_tower/test/recall@50", "two_tower_refit/test/recall@50"):
        assert 0.0 < metrics[key] <= 1.0, key
    # Validation over every validation user (gathered from both processes) was logged each epoch.
    val_rows = [line for line in (run / "csv").rglob("metrics.csv").__next__().read_text().splitlines()[1:]
                if line.split(",")[0]]
    assert val_rows
    best = run / "checkpoints" / "retrieval" / "best.ckpt"
    module = TwoTowerModule.load_from_checkpoint(best, map_location="cpu")
    state = torch.load(run / "artifacts" / "two_tower.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(module.model.state_dict()[k], v) for k, v in state.items())
    assert not list(run.rglob("hybrid-recommender"))  # no stray Lightning checkpoint folder
