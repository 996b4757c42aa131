"""What a ranker costs: FLOPs of its Linear layers and PyTorch latency (distillation report, bench)."""

from __future__ import annotations

import time

import numpy as np
import torch


def count_flops(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> int:
    """Multiply-adds x2 of every Linear layer in one forward pass over ``inputs`` (lookups excluded)."""
    flops = []

    def hook(mod, args, out):
        flops.append(2 * args[0].shape[:-1].numel() * mod.in_features * mod.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()({k: torch.as_tensor(v) for k, v in inputs.items()})
    for h in handles:
        h.remove()
    return int(sum(flops))


def torch_latency_ms(model: torch.nn.Module, inputs: dict[str, np.ndarray], repeats: int = 30) -> float:
    """Median wall time of one forward pass (PyTorch, CPU threads as configured)."""
    x = {k: torch.as_tensor(v) for k, v in inputs.items()}
    times = []
    with torch.no_grad():
        model.eval()(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))
