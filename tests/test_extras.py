"""The [cpu] and [gpu] extras resolve to consistent sets: one build of each accelerated module and
one CUDA major per environment (pip's own resolver, ``pip install --dry-run --report``; no GPU needed).

The resolution ignores this machine's pip configuration (its local CPU torch wheel), so it sees
what a user on PyPI gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Distributions that install the same import package: at most one of each group per environment.
SAME_MODULE = {
    "faiss": {"faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12"},
    "onnxruntime": {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"},
}
CUDA_SUFFIX = re.compile(r"-cu(\d+)$")
# CUDA runtime distributions named without a -cuXX suffix carry the CUDA major as their version's.
CUDA_BY_VERSION = re.compile(r"^(cuda-toolkit|cuda-bindings|nvidia-cuda-runtime|nvidia-cublas|nvidia-cudnn|nvidia-cufft|"
                             r"nvidia-curand|nvidia-cusolver|nvidia-cusparse|nvidia-nccl|nvidia-nvjitlink)$")


def resolve(extra: str, tmp_path) -> dict[str, str]:
    """name -> version of everything ``pip install .[extra]`` would install into an empty environment."""
    report = tmp_path / f"{extra}.json"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
           str(report), f"{ROOT}[{extra}]"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}


def cuda_majors(packages: dict[str, str]) -> dict[str, set[str]]:
    """CUDA major -> the packages that need it."""
    majors: dict[str, set[str]] = {}
    for name, version in packages.items():
        m = CUDA_SUFFIX.search(name)
        major = m.group(1) if m else (version.split(".")[0] if CUDA_BY_VERSION.match(name) else None)
        if major:
            majors.setdefault(major, set()).add(name)
    return majors


def duplicates(packages: dict[str, str]) -> dict[str, set[str]]:
    """Import package -> the distributions that would write it, where there is more than one."""
    return {mod: found for mod, dists in SAME_MODULE.items() if len(found := dists & set(packages)) > 1}


def test_checks_catch_the_old_gpu_extra():
    """The checks themselves: what `pip install .[gpu]` used to resolve to is flagged twice over."""
    old = {"faiss-cpu": "1.15.1", "faiss-gpu": "1.15.1", "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1",
           "nvidia-cuda-runtime-cu12": "12.9.79", "cuda-toolkit": "13.0.3", "torch": "2.13.0"}
    assert duplicates(old) == {"faiss": {"faiss-cpu", "faiss-gpu"}, "onnxruntime": {"onnxruntime", "onnxruntime-gpu"}}
    assert set(cuda_majors(old)) == {"12", "13"}


@pytest.mark.slow
@pytest.mark.parametrize("extra, accelerated", [("cpu", {"faiss-cpu", "onnxruntime"}),
                                                ("gpu", {"faiss-cpu", "onnxruntime-gpu"})])
def test_extra_resolves_to_one_build_and_one_cuda_major(extra, accelerated, tmp_path):
    packages = resolve(extra, tmp_path)
    assert not duplicates(packages), duplicates(packages)
    assert accelerated <= set(packages)
    majors = cuda_majors(packages)
    assert len(majors) <= 1, f"[{extra}] mixes CUDA majors: {majors}"
    if extra == "gpu":
        # torch from PyPI and onnxruntime-gpu[cuda,cudnn] both bring CUDA 13.
        assert set(majors) == {"13"} and {"torch", "onnxruntime-gpu"} <= set(packages)
