"""One prepared GPU check: everything the product claims about GPUs, measured in one call.

On a lent GPU machine (docs/gpu.md has the device tool command), ``bench/gpu_check.sh`` installs
the carried wheels and runs this module, which measures, each part isolated so a failure in one
does not stop the others, and stops starting parts past ``--deadline-s``:

- ``exact_retrieval``: exact top-k over 1M items (torch matmul + topk on the GPU) at batch 1 and
  256 vs torch and FAISS Flat on the CPU of the same sitting (FAISS when importable);
- ``pytest_gpu``: ``pytest -m gpu`` in a child process (real GPU tests, not skips);
- ``rankers``: teacher and student over 500 real candidates, torch on the GPU vs onnxruntime CPU;
- ``pipeline``: the in-process pipeline (``recommend``'s code without the server) at concurrency
  1: ONNX on CPU (served default), torch on CPU, torch + exact index on the GPU;
- ``train_throughput``: two-tower training on the synthetic generator at 10M interactions / 1M
  items, a fixed number of steps: the product's Lightning path (bf16-mixed) with CPU-built batches
  and with batches built on the device (``retrieval.batches_on_device``), and the same module in a
  bare loop (the towers' own ceiling); samples/s and peak GPU memory.

``rankers`` and ``pipeline`` share one small run (stage=distill + export, index=exact_torch) that
the check trains and exports first, unless ``--run-dir`` names a finished run (and
``--repository`` its export).

Usage:
    bench/gpu_check.sh                               # on the device (via the device tool), into $OUT
    .venv/bin/python -m bench.gpu_check --cpu-rehearsal --out /tmp/gpu_check   # tiny sizes, CPU
    .venv/bin/python -m bench.gpu_check --prepare-wheels                      # here: fill .whl/

Writes ``gpu_check.json`` (the only file) under ``--out`` after every part, and prints a short
table last; the shared run, logs and caches go to ``--work`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench import gpu_parts
from bench.gpu_wheels import prepare_wheels

log = logging.getLogger("bench.gpu_check")
ROOT = Path(__file__).resolve().parents[1]
PARTS = ("exact_retrieval", "pytest_gpu", "rankers", "pipeline", "train_throughput")


@dataclass(frozen=True)
class Sizes:
    """How big each part is; ``FULL`` on the device, ``REHEARSAL`` on a CPU in the test suite."""

    retrieval_items: int
    retrieval_dim: int
    retrieval_k: int
    retrieval_repeats: dict[int, int]  # batch -> timed searches on the GPU (CPU backends: a tenth)
    run_overrides: list[str]  # the small run shared by rankers and pipeline
    ranker_candidates: int
    ranker_repeats: int
    pipeline_requests: int
    train_data: list[str]  # synthetic data of the throughput part
    train_steps: int
    train_warmup: int
    lightning_batches: list[int]  # the product's default path: CPU DataLoader batches
    lightning_device_batches: list[int]  # the product with retrieval.batches_on_device=true
    device_batches: list[int]  # the same module in a bare loop: the towers' own ceiling
    reference_batches: list[int]  # the bare loop with the loss before its rework (every op over B x B)
    profile_steps: int  # the largest bare-loop batch: this many more steps under torch.profiler
    pytest_timeout_s: float
    deadline_s: float  # no part starts after this many seconds


RUN_BASE = ["stage=distill", "index=exact_torch", "logger=none", "retrieval.refit.mode=none",
            "distill.gate.min_retained=0", "export.int8.enabled=false", "progress=false"]
FULL = Sizes(
    retrieval_items=1_000_000, retrieval_dim=64, retrieval_k=200, retrieval_repeats={1: 200, 256: 50},
    run_overrides=RUN_BASE + ["data=synthetic", "trainer.max_epochs=3", "ranking.max_epochs=3",
                              "distill.max_epochs=3"],
    ranker_candidates=500, ranker_repeats=200, pipeline_requests=200,
    train_data=["data.loader.n_users=200000", "data.loader.n_items=1000000", "data.loader.n_interactions=10000000"],
    train_steps=60, train_warmup=10, lightning_batches=[512, 8192], lightning_device_batches=[8192, 32768],
    device_batches=[8192, 32768, 65536], reference_batches=[32768], profile_steps=3,
    pytest_timeout_s=150, deadline_s=440)
REHEARSAL = Sizes(
    retrieval_items=3000, retrieval_dim=16, retrieval_k=50, retrieval_repeats={1: 20, 256: 20},
    run_overrides=RUN_BASE + ["data=synthetic", "data.loader.n_users=300", "data.loader.n_items=400",
                              "data.loader.n_interactions=6000", "data.loader.n_categories=8", "trainer=cpu",
                              "trainer.max_epochs=1", "retrieval.batch_size=256", "retrieval.history_len=20",
                              "retrieval.eval_ks=[10,50]", "eval.ks=[10,20]", "ranking.max_epochs=1",
                              "eval.cold_users=50", "distill.max_epochs=1"],
    ranker_candidates=500, ranker_repeats=5, pipeline_requests=5,
    train_data=["data.loader.n_users=300", "data.loader.n_items=400", "data.loader.n_interactions=6000",
                "data.loader.n_categories=8", "retrieval.history_len=20"],
    train_steps=3, train_warmup=1, lightning_batches=[128], lightning_device_batches=[128], device_batches=[128],
    reference_batches=[128], profile_steps=1,
    pytest_timeout_s=120, deadline_s=600)


def compose(overrides: list[str], work: Path):
    """configs/train.yaml with ``overrides``; every output under ``work``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.log_dir={work}/logs",
                                                f"paths.output_dir={work}/run", f"export.repository={work}/triton_repo",
                                                *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.overrides = list(overrides)
    return cfg


@dataclass
class Check:
    """State of one check: sizes, device, where things go, and what each part returned."""

    sizes: Sizes
    device: torch.device
    out: Path
    work: Path
    run_dir: Path | None = None
    repo: Path | None = None
    run_error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    results: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def trained_run(self) -> tuple[Path, Path]:
        """(artifacts dir, exported repository) of the shared run, trained / exported on first use;
        a failure is kept and raised again, so the second part that needs the run does not retry."""
        if self.run_error is not None:
            raise RuntimeError(f"the shared run failed earlier: {self.run_error}")
        if self.repo is None:
            t0 = time.perf_counter()
            try:
                self.repo = self._make_run()
            except Exception as e:
                self.run_error = f"{type(e).__name__}: {e}"
                self.results["run"] = {"status": f"failed: {self.run_error}"[:500],
                                       "traceback": traceback.format_exc()[-3000:]}
                raise
            self.results["run"] = {"status": "ok", "seconds": time.perf_counter() - t0, "dir": str(self.run_dir),
                                   "repository": str(self.repo)}
        return self.run_dir / "artifacts", self.repo

    def _make_run(self) -> Path:
        from export.config import run_config
        from export.repository import export_if_needed, run_export

        if self.run_dir is not None:
            cfg = run_config(self.run_dir, [f"export.repository={self.work / 'triton_repo'}", "export.int8.enabled=false"])
            return export_if_needed(cfg, self.run_dir)
        from train import train

        cfg = compose(self.sizes.run_overrides, self.work)
        train(cfg)
        self.run_dir = Path(cfg.paths.output_dir)
        return run_export(cfg, self.run_dir)

    def save(self) -> Path:
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=1, default=str))
        return path


def part_train_throughput(c: Check) -> dict:
    from features.prepare import prepare
    from retrieval.data import Histories, TrainExamples

    s, t0 = c.sizes, time.perf_counter()
    cfg = compose(["data=synthetic", "logger=none", *s.train_data], c.work)
    data = prepare(cfg)
    examples = TrainExamples(data, Histories.build(data, data.split.train), cfg.retrieval.history_len,
                             cfg.retrieval.history_mode)
    out: dict = {"interactions": int(len(data.dataset.interactions)), "items": int(data.n_items),
                 "train_examples": len(examples), "data_seconds": time.perf_counter() - t0,
                 "model": OmegaConf.to_container(cfg.retrieval.model)}
    configs = [("lightning", b, gpu_parts.train_lightning, (c.work, False)) for b in s.lightning_batches]
    configs += [("lightning_on_device", b, gpu_parts.train_lightning, (c.work, True)) for b in s.lightning_device_batches]
    configs += [("device_batches", b, gpu_parts.train_device_batches,
                 ("product", s.profile_steps if b == max(s.device_batches) else 0)) for b in s.device_batches]
    configs += [("device_batches_reference_loss", b, gpu_parts.train_device_batches, ("reference", 0))
                for b in s.reference_batches]
    for path, b, fn, extra in configs:  # each batch size isolated: an out-of-memory loses only its row
        key = f"{path}/batch{b}"
        if c.elapsed() > s.deadline_s:
            out[key] = {"status": "not run: past the deadline"}
            continue
        try:
            out[key] = fn(data, cfg.retrieval, examples, b, s.train_steps, s.train_warmup, c.device, *extra)
        except Exception as e:  # noqa: BLE001 - the other batch sizes still run
            out[key] = {"status": f"failed: {type(e).__name__}: {e}"[:500]}
        finally:
            if c.device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def run_part(c: Check, name: str) -> None:
    """Run one part, recording its result or its error; never raises."""
    s = c.sizes
    if c.elapsed() > s.deadline_s:
        c.results[name] = {"status": "not run: past the deadline", "deadline_s": s.deadline_s}
        return
    t0 = time.perf_counter()
    try:
        if name == "exact_retrieval":
            r = gpu_parts.exact_retrieval(s.retrieval_items, s.retrieval_dim, s.retrieval_k, s.retrieval_repeats, c.device)
        elif name == "pytest_gpu":
            r = gpu_parts.pytest_gpu(c.work, s.pytest_timeout_s)
        elif name == "rankers":
            r = gpu_parts.rankers(*c.trained_run(), s.ranker_candidates, s.ranker_repeats, c.device)
        elif name == "pipeline":
            r = gpu_parts.pipeline(*c.trained_run(), s.pipeline_requests, c.device)
        else:
            r = part_train_throughput(c)
        c.results[name] = {"status": "ok", **r}
    except Exception as e:  # noqa: BLE001 - one part's failure must not stop the others
        log.error("part %s failed: %s", name, e)
        c.results[name] = {"status": f"failed: {type(e).__name__}: {e}"[:500],
                           "traceback": traceback.format_exc()[-3000:]}
    finally:
        c.results[name]["seconds"] = time.perf_counter() - t0
        if c.device.type == "cuda":
            torch.cuda.empty_cache()
        c.save()


def summary(results: dict) -> str:
    """The short table printed last: one line per part, its headline figures."""
    def f(v, fmt=",.0f"):
        return "-" if v is None else format(v, fmt)

    lines = ["| part | status | figures | s |", "|---|---|---|---:|"]
    for name in PARTS:
        r = results.get(name, {})
        fig = ""
        if r.get("status") == "ok":
            if name == "exact_retrieval":
                dev = next(k.split("/")[0] for k in r if k.endswith("/batch1"))
                fig = "; ".join([f"{k.replace('/batch', ' b')} {f(v['queries_per_s'])} q/s" for k, v in r.items()
                                 if isinstance(v, dict) and "queries_per_s" in v and k.startswith((dev, "faiss"))]
                                + [f"{k} {v:.1f}x" for k, v in r.items() if k.startswith("speedup")])
            elif name == "pytest_gpu":
                fig = f"{r['passed']} passed, {r['skipped']} skipped, {r['failures'] + r['errors']} failed"
            elif name == "rankers":
                fig = "; ".join(f"{n}: " + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in row.items()
                                                   if isinstance(v, dict)) for n, row in r.items() if isinstance(row, dict))
            elif name == "pipeline":
                fig = "; ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in r.items() if isinstance(v, dict) and "p50_ms" in v)
            else:
                fig = "; ".join(f"{k.replace('/batch', ' b')} {f(v.get('samples_per_s'))} samples/s, "
                                f"{f(v.get('peak_gpu_mb'))} MB" for k, v in r.items()
                                if isinstance(v, dict) and "batch" in k)
        lines.append(f"| {name} | {str(r.get('status', 'not run'))[:60]} | {fig} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="folder of gpu_check.json (default: $OUT)")
    p.add_argument("--cpu-rehearsal", action="store_true", help="tiny sizes on the CPU: the same code path")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--run-dir", type=Path, default=None, help="a finished run (default: train one)")
    p.add_argument("--repository", type=Path, default=None,
                   help="with --run-dir: the run's exported Triton repository (default: export it under --out)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for the run, logs and caches (default: a new temporary folder; not under "
                        "--out, since the device tool brings back only 8 files from $OUT)")
    p.add_argument("--deadline-s", type=float, default=None, help="start no part after this (default: by sizes)")
    p.add_argument("--prepare-wheels", action="store_true", help="download the wheels the device lacks into .whl/")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    if args.prepare_wheels:
        print(json.dumps(prepare_wheels(ROOT / ".whl"), indent=1))
        return 0
    if args.out is None:
        p.error("--out is required when $OUT is not set, e.g. --out /tmp/gpu_check")
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts names unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_rehearsal:
        p.error("no CUDA device is visible; run with --cpu-rehearsal on a CPU machine")
    sizes = REHEARSAL if args.cpu_rehearsal else FULL
    if args.deadline_s is not None:
        sizes = Sizes(**{**asdict(sizes), "deadline_s": args.deadline_s})
    args.out.mkdir(parents=True, exist_ok=True)
    if args.repository is not None and args.run_dir is None:
        p.error("--repository needs --run-dir (the run it was exported from)")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    c = Check(sizes, torch.device("cuda" if cuda and not args.cpu_rehearsal else "cpu"), args.out, work,
              args.run_dir, args.repository)
    c.work.mkdir(parents=True, exist_ok=True)
    if args.repository is not None:
        c.results["run"] = {"status": "ok", "given": True, "dir": str(args.run_dir), "repository": str(args.repository)}
    c.results["machine"] = machine(c.device, "cpu-rehearsal" if args.cpu_rehearsal else "full")
    for name in parts:
        log.info("part %s (%.0fs elapsed)", name, c.elapsed())
        run_part(c, name)
    c.results["total_seconds"] = c.elapsed()
    path = c.save()
    print(f"\nwrote {path}\n\n{summary(c.results)}")
    return 0 if all(c.results[n]["status"] == "ok" for n in parts) else 1


def machine(device: torch.device, mode: str) -> dict:
    """What ran the check: versions, device, cores."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"mode": mode, "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "argv": sys.argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "packages": {n: v(n) for n in ("torch", "numpy", "pandas", "lightning", "onnxruntime", "onnx",
                                            "faiss-cpu", "faiss-gpu", "hydra-core", "omegaconf", "scipy")}}


if __name__ == "__main__":
    raise SystemExit(main())
