"""The measurements of ``bench/gpu_check.py``, one function per part (each returns a JSON-able dict).

Every part runs the project's own code: the towers' Lightning module and batches, the exact torch
index, the exported ONNX rankers, the pipeline that ``recommend`` serves. On a machine without
CUDA the same functions run on the CPU at tiny sizes (``--cpu-rehearsal``), so they cannot rot.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from retrieval.exact import ExactIndex
from retrieval.index import IndexConfig, build_index, search

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = ["tests/test_gpu.py"]  # every test module with `gpu`-marked tests (others need tritonclient)
TIMESTAMP = 1_700_600_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings_ms(fn, repeats: int, warmup: int, device: torch.device) -> dict:
    """Median / p95 / mean ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = np.empty(repeats)
    for r in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        t[r] = (time.perf_counter() - start) * 1e3
    return {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)), "mean_ms": float(t.mean()),
            "repeats": repeats}


def peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ---------------------------------------------------------------- pytest -m gpu


def pytest_gpu(work: Path, timeout_s: float) -> dict:
    """``pytest -m gpu`` in a child process; counts from its JUnit XML, skip reasons included."""
    xml = work / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *GPU_TESTS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    skips = sorted({s.get("message", "") for s in suite.iter("skipped")})
    out = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
           "returncode": proc.returncode, "skip_reasons": skips, "tail": proc.stdout[-1500:]}
    if proc.returncode not in (0, 5):  # 5: everything deselected
        raise RuntimeError(f"pytest -m gpu failed (exit {proc.returncode}): {proc.stdout[-800:]}{proc.stderr[-400:]}")
    if torch.cuda.is_available() and out["passed"] == 0:
        raise RuntimeError(f"CUDA is visible but no gpu test passed: {out}")
    return out


# ---------------------------------------------------------------- exact retrieval


def exact_retrieval(n_items: int, dim: int, k: int, repeats: dict[int, int], device: torch.device) -> dict:
    """Queries/s of exact top-k over ``n_items`` at batch 1 and 256: torch on ``device``, torch on
    the CPU and FAISS Flat on the CPU (when importable) in the same sitting, and their agreement."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n_items, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # (N, D) unit rows, like the towers' output
    queries = rng.standard_normal((max(repeats), dim), dtype=np.float32)
    backends = {f"torch_{device.type}": ExactIndex(emb, device)}
    if device.type != "cpu":
        backends["torch_cpu"] = ExactIndex(emb, "cpu")
    if importlib.util.find_spec("faiss") is not None:
        import faiss

        backends["faiss_flat_cpu"] = build_index(emb, IndexConfig(factory="Flat", use_gpu=False))
        threads = faiss.omp_get_max_threads()
    else:
        threads = None
    out: dict = {"items": n_items, "dim": dim, "k": k, "faiss_threads": threads, "torch_threads": torch.get_num_threads()}
    answers = {}
    for name, index in backends.items():
        dev = index.device if isinstance(index, ExactIndex) else torch.device("cpu")
        for batch, n in repeats.items():
            # Repeats of the slow CPU backends are cut to 1/10 (at least 2): the ratio is what matters.
            n = n if name == f"torch_{device.type}" and device.type == "cuda" else max(2, n // 10)
            t = timings_ms(lambda: search(index, queries[:batch], k), n, warmup=1, device=dev)
            out[f"{name}/batch{batch}"] = {**t, "queries_per_s": batch / (t["median_ms"] / 1e3)}
        answers[name] = search(index, queries[: max(repeats)], k)[1]
    ref = answers.get("faiss_flat_cpu", answers.get("torch_cpu", next(iter(answers.values()))))
    out["agreement_with_reference"] = {n: float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids, ref)]))
                                       for n, ids in answers.items()}
    big = max(repeats)
    fast = out[f"torch_{device.type}/batch{big}"]["queries_per_s"]
    for base in ("faiss_flat_cpu", "torch_cpu"):
        if f"{base}/batch{big}" in out and base != f"torch_{device.type}":
            out[f"speedup_vs_{base}@{big}"] = fast / out[f"{base}/batch{big}"]["queries_per_s"]
    return out


# ---------------------------------------------------------------- rankers


def rankers(art: Path, repo: Path, candidates: int, repeats: int, device: torch.device) -> dict:
    """Teacher and student over ``candidates`` real rows: torch on ``device`` vs onnxruntime on the CPU."""
    from export.repository import ranker_lists
    from inference.models import TorchModel, onnx_session, run_onnx
    from inference.spec import load_specs
    from pipeline.artifacts import RANKERS, RunArtifacts

    art = RunArtifacts(art)
    specs = load_specs(repo / "recommend/1/specs.json")
    n_candidates = art.load_settings().n_candidates
    inputs, _ = ranker_lists(art, -(-candidates // n_candidates))
    rows = {k: v[:candidates] for k, v in inputs.items()}
    store = art.load_store()
    out: dict = {"candidates": int(len(next(iter(rows.values()))))}
    for name in RANKERS:
        if not art.has(name):
            out[name] = {"missing": f"{art.path(name)} (the run has no {name})"}
            continue
        module = art.load_ranker(name, store)
        x = {n: rows[n] for n in module.input_names}
        model = TorchModel(module, device)
        row = {f"torch_{device.type}": timings_ms(lambda: model(x), repeats, 10, device)}
        path = repo / name / "1" / "model.onnx"
        for threads in sorted({1, os.cpu_count() or 1}):
            session = onnx_session(path, threads)
            row[f"ort_cpu_{threads}thr"] = timings_ms(lambda: run_onnx(session, specs[name], x), repeats, 10,
                                                      torch.device("cpu"))
        scores = np.asarray(model(x)[0]).ravel()
        row["max_abs_diff_torch_vs_ort"] = float(np.abs(scores - np.asarray(run_onnx(session, specs[name], x)[0]).ravel()).max())
        out[name] = row
    return out


# ---------------------------------------------------------------- the in-process pipeline


def pipeline(art: Path, repo: Path, requests: int, device: torch.device) -> dict:
    """``recommend``'s code path without the server, concurrency 1: ONNX on CPU (the served
    in-process default), torch on CPU, and on a GPU: the ONNX models on the CPU with the exact index
    on the GPU, and torch on ``device`` with the exact index there."""
    from inference.models import OnnxCallable, TorchModel
    from inference.spec import load_specs
    from pipeline.artifacts import RunArtifacts
    from pipeline.pipeline import Request

    art = RunArtifacts(art)
    specs = load_specs(repo / "recommend/1/specs.json")
    store = art.load_store()
    emb = art.load_item_embeddings()
    users = [str(u) for u in art.user_ids()[::7][:50]]
    reqs = [Request(users[i % len(users)], 10, TIMESTAMP + 60 * i) for i in range(requests)]
    variants = {
        "onnx_cpu": ("cpu", lambda: (OnnxCallable(repo / "user_tower/1/model.onnx", specs["user_tower"], 1),
                                     OnnxCallable(repo / "ranker/1/model.onnx", specs["ranker"], 1))),
        "torch_cpu": ("cpu", lambda: (None, None)),
    }
    if device.type != "cpu":
        # what `recommend` runs in process on a GPU machine without onnxruntime's CUDA provider:
        # the ONNX models on the CPU, the exact index on the GPU
        variants[f"onnx_cpu_index_{device.type}"] = (device.type, variants["onnx_cpu"][1])
        variants[f"torch_{device.type}"] = (device.type, lambda: (
            TorchModel(art.load_towers(store).user_tower, device),
            TorchModel(art.load_ranker("ranker", store), device)))
    out: dict = {"requests": requests, "catalog_items": int(len(emb))}
    answers = {}
    for name, (dev, models) in variants.items():
        user_encoder, ranker = models()
        p = art.load_pipeline(user_encoder=user_encoder, rankers=None if ranker is None else {"ranker": ranker})
        p.retriever.index = ExactIndex(emb, dev)  # the exact index on the variant's device
        for r in reqs[:5]:  # warm-up: allocator, kernels, first-call caches (fresh exposure state below)
            p.recommend([r])
        p = art.load_pipeline(user_encoder=user_encoder, rankers=None if ranker is None else {"ranker": ranker})
        p.retriever.index = ExactIndex(emb, dev)
        times, lists = [], []
        for r in reqs:
            start = time.perf_counter()
            lists.append(p.recommend([r])[0].item_ids)
            times.append((time.perf_counter() - start) * 1e3)
        out[name] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                     "requests_per_s": 1e3 / float(np.mean(times))}
        answers[name] = lists
    ref = answers["onnx_cpu"]
    out["same_top10_as_onnx_cpu"] = {n: float(np.mean([a == b for a, b in zip(lists, ref)])) for n, lists in answers.items()}
    if f"torch_{device.type}" in out and device.type != "cpu":
        out["gpu_vs_onnx_cpu_p50"] = out["onnx_cpu"]["p50_ms"] / out[f"torch_{device.type}"]["p50_ms"]
        out["gpu_index_vs_onnx_cpu_p50"] = out["onnx_cpu"]["p50_ms"] / out[f"onnx_cpu_index_{device.type}"]["p50_ms"]
    return out


# ---------------------------------------------------------------- two-tower training throughput


def _module(data, rcfg, batch_size: int):
    from hydra.utils import instantiate

    from retrieval.data import item_inputs
    from retrieval.module import TwoTowerModule
    from retrieval.towers import build_two_tower

    torch.manual_seed(0)
    model = build_two_tower(data.features, data.n_items, **rcfg.model)
    pop = np.asarray(data.train.sum(axis=0)).ravel() + 1.0
    log_q = torch.as_tensor(np.log(batch_size * pop / pop.sum()), dtype=torch.float32)
    return TwoTowerModule(model, instantiate(rcfg.optimizer), rcfg.temperature, rcfg.logq_correction,
                          rcfg.uniform_negatives, log_q, item_inputs(data))


def train_lightning(data, rcfg, examples, batch_size: int, steps: int, warmup: int, device: torch.device,
                    work: Path, on_device: bool) -> dict:
    """The product's training path: Lightning, bf16-mixed on a GPU, batches from
    ``retrieval.device_batches.train_loader`` (a CPU DataLoader, or built on the device)."""
    import lightning as L

    from retrieval.device_batches import train_loader
    from retrieval.trainer import resolve_precision

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module):
            sync(device)
            self.end = time.perf_counter()

    clock, precision = Clock(), resolve_precision("auto")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                        max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock], default_root_dir=str(work))
    trainer.fit(_module(data, rcfg, batch_size), train_loader(examples, batch_size, on_device, trainer, 0))
    seconds = clock.end - clock.start
    return {"batch_size": batch_size, "precision": precision, "timed_steps": steps - warmup,
            "samples_per_s": (steps - warmup) * batch_size / seconds, "peak_gpu_mb": peak_memory_mb(device)}


def train_device_batches(data, rcfg, examples, batch_size: int, steps: int, warmup: int,
                         device: torch.device, loss: str = "product", profile_steps: int = 0) -> dict:
    """The same module and loss on batches built on the device (retrieval/device_batches.py),
    bf16 autocast on a GPU as Lightning's bf16-mixed does: what the towers themselves can do.

    ``loss``: ``product`` (``retrieval.loss.sampled_softmax_loss``) or ``reference``
    (``dense_reference_loss``, every step over (B, B) values: the loss before it was reworked).
    ``profile_steps`` > 0: after the timed steps, that many more under ``torch.profiler``; the
    result then lists the kernels (or CPU ops) that took the most time per step."""
    from unittest import mock

    from retrieval import loss as losses
    from retrieval.device_batches import DeviceExamples

    if loss not in ("product", "reference"):
        raise ValueError(f"loss={loss!r}; known: product, reference")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dev = DeviceExamples(examples, device)
    module = _module(data, rcfg, batch_size).to(device).train()
    optimizer = module.configure_optimizers()
    order = torch.randperm(len(dev), device=device, generator=torch.Generator(device=device).manual_seed(0))
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    losses_seen = []

    def step(i: int) -> None:
        s = (i * batch_size) % max(len(dev) - batch_size, 1)
        batch = dev.batch(order[s : s + batch_size])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = module.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        losses_seen.append(value.detach())

    def reference(user, item, idx, temperature, log_q=None, *extra):
        if any(e is not None for e in extra):
            raise ValueError("the reference loss has no extra negatives; run it with retrieval.uniform_negatives=0")
        return losses.dense_reference_loss(user, item, idx, temperature, log_q)

    top = []
    with warnings.catch_warnings(), mock.patch("retrieval.module.sampled_softmax_loss",
                                               reference if loss == "reference" else losses.sampled_softmax_loss):
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
        for i in range(steps):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            step(i)
        sync(device)
        seconds = time.perf_counter() - start
        if profile_steps:
            top = _profile(lambda: [step(steps + i) for i in range(profile_steps)], profile_steps, device)
    values = [float(v) for v in losses_seen]
    if not np.isfinite(values).all():
        raise RuntimeError(f"non-finite training loss at batch size {batch_size}: {values}")
    out = {"batch_size": batch_size, "loss": loss, "precision": "bf16-autocast" if bf16 else "fp32",
           "timed_steps": steps - warmup, "samples_per_s": (steps - warmup) * batch_size / seconds,
           "ms_per_step": 1e3 * seconds / (steps - warmup), "peak_gpu_mb": peak_memory_mb(device),
           "first_loss": values[0], "last_loss": values[steps - 1]}
    if top:
        out["profile_top"] = top
    return out


def _profile(fn, steps: int, device: torch.device, n: int = 12) -> list[dict]:
    """The ``n`` kernels (CPU ops on a CPU) with the most self time while ``fn`` runs ``steps``
    training steps: name, ms per step, share of the profiled device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in rows) or 1.0
    rows.sort(key=lambda e: -getattr(e, attr))
    return [{"name": e.key[:120], "ms_per_step": getattr(e, attr) / 1e3 / steps,
             "share": getattr(e, attr) / total, "calls_per_step": e.count / steps} for e in rows[:n]]
