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
# CUDA 13 runtime distributions have no -cu13 suffix; these carry the CUDA major as their version's
# major (cuFFT, cuRAND, cuSOLVER, cuSPARSE number their own releases and are left out).
CUDA_BY_VERSION = {"cuda-toolkit", "cuda-bindings", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-cupti",
                   "nvidia-cublas", "nvidia-nvjitlink"}
EXTRAS = ("cpu", "gpu")


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict[str, dict[str, str]]:
    """extra -> {name: version} of everything ``pip install .[extra]`` would put into an empty
    environment, resolved from PyPI by pip (both extras at once, in parallel)."""
    tmp = tmp_path_factory.mktemp("extras")
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
    procs = {}
    for extra in EXTRAS:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation", "--quiet", "--report",
               str(tmp / f"{extra}.json"), f"{ROOT}[{extra}]"]
        procs[extra] = (cmd, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    out = {}
    for extra, (cmd, proc) in procs.items():
        try:
            log, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-3000:]}"
        installs = json.loads((tmp / f"{extra}.json").read_text())["install"]
        out[extra] = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}
    return out


def cuda_majors(packages: dict[str, str]) -> dict[str, set[str]]:
    """CUDA major -> the packages that need it."""
    majors: dict[str, set[str]] = {}
    for name, version in packages.items():
        m = CUDA_SUFFIX.search(name)
        major = m.group(1) if m else (version.split(".")[0] if name in CUDA_BY_VERSION else None)
        if major:
            majors.setdefault(major, set()).add(name)
    return majors


def duplicates(packages: dict[str, str]) -> dict[str, set[str]]:
    """Import package -> the distributions that would write it, where there is more than one."""
    return {mod: found for mod, dists in SAME_MODULE.items() if len(found := dists & set(packages)) > 1}


def test_checks_catch_the_old_gpu_extra():
    """The checks themselves: what `pip install .[gpu]` used to resolve to is flagged twice over."""
    old = {"faiss-cpu": "1.15.1", "faiss-gpu": "1.15.1", "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1",
           "nvidia-cuda-runtime-cu12": "12.9.79", "cuda-toolkit": "13.0.3", "nvidia-cufft": "12.0.0.61",
           "torch": "2.13.0"}
    assert duplicates(old) == {"faiss": {"faiss-cpu", "faiss-gpu"}, "onnxruntime": {"onnxruntime", "onnxruntime-gpu"}}
    assert set(cuda_majors(old)) == {"12", "13"}


@pytest.mark.slow
@pytest.mark.parametrize("extra, accelerated", [("cpu", {"faiss-cpu", "onnxruntime"}),
                                                ("gpu", {"faiss-cpu", "onnxruntime-gpu"})])
def test_extra_resolves_to_one_build_and_one_cuda_major(extra, accelerated, resolved):
    packages = resolved[extra]
    assert not duplicates(packages), duplicates(packages)
    assert accelerated <= set(packages)
    majors = cuda_majors(packages)
    assert len(majors) <= 1, f"[{extra}] mixes CUDA majors: {majors}"
    if extra == "gpu":
        # torch from PyPI and onnxruntime-gpu[cuda,cudnn] both bring CUDA 13.
        assert set(majors) == {"13"} and {"torch", "onnxruntime-gpu"} <= set(packages)
