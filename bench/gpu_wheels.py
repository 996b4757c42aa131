"""``--prepare-wheels``: the wheels the lent GPU machine lacks, for its Python 3.12, into ``.whl/``.

That machine has torch, lightning, numpy 2, onnx, onnxruntime (CPU), pandas, scipy, PyYAML and
pytest, but no Hydra / OmegaConf (and their ANTLR runtime) and no FAISS, and no network: wheels
travel in the working tree, 64 MiB per call with the tree itself (see docs/gpu.md). Versions are
the ones installed here, so the device runs what the tests ran. ``antlr4-python3-runtime`` 4.9.3
exists on the package index only as a source archive; it is pure Python, so its wheel is built
here. ``faiss-cpu`` (the CPU baseline of the exact GPU retrieval) is kept only within the budget.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
REQUIRED = ("hydra-core", "omegaconf")  # binary wheels for any Python
BUILT_HERE = ("antlr4-python3-runtime",)  # source archive only: built into a pure-Python wheel
OPTIONAL = ("faiss-cpu",)  # only within the budget
BUDGET_MB = 48.0  # of the 64 MiB a device call carries; the rest is the working tree


def _pip(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed: {proc.stderr[-800:]}")


def download(spec: str, dest: Path) -> None:
    """One wheel for CPython 3.12 on x86-64 Linux, without its dependencies."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          *platforms, "-d", str(dest), "--quiet", spec])


def size_mb(dest: Path) -> float:
    return sum(f.stat().st_size for f in dest.glob("*.whl")) / 2**20


def prepare_wheels(dest: Path, budget_mb: float = BUDGET_MB) -> dict:
    """Fill ``dest`` with the wheels; returns what it holds and what was left out, and why."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED:
        download(f"{name}=={version(name)}", dest)
    for name in BUILT_HERE:
        _pip(["wheel", "--no-deps", "--quiet", "-w", str(dest), f"{name}=={version(name)}"])
    left_out = {}
    for name in OPTIONAL:
        before = set(dest.glob("*.whl"))
        download(f"{name}=={version(name)}", dest)
        if size_mb(dest) > budget_mb:
            for f in set(dest.glob("*.whl")) - before:
                f.unlink()
            left_out[name] = f"over the {budget_mb:.0f} MB budget"
    return {"dir": str(dest), "wheels": sorted(f.name for f in dest.glob("*.whl")), "mb": round(size_mb(dest), 1),
            "left_out": left_out}
