"""onnxruntime sessions that say which execution providers they really got.

``get_available_providers()`` lists what the installed build *could* use; a CUDA build on a
machine whose driver or CUDA libraries do not fit still falls back to the CPU, silently. So every
session is opened here and logs ``session.get_providers()``, and a GPU request that ended on the
CPU is a warning. With ``onnxruntime-gpu[cuda,cudnn]`` the CUDA libraries are pip packages:
:func:`preload_cuda` loads them first (``onnxruntime.preload_dlls()``) so the CUDA provider finds them.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@lru_cache(maxsize=1)
def preload_cuda() -> bool:
    """Load the pip-installed CUDA and cuDNN libraries once (onnxruntime >= 1.21); False when this
    onnxruntime has no CUDA provider (the CPU build)."""
    if CUDA not in ort.get_available_providers():
        return False
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()
    return True


def requested_providers(gpu: bool) -> list[str]:
    """CUDA first when asked for and built in, the CPU always as the fallback."""
    return [CUDA, CPU] if gpu and preload_cuda() else [CPU]


def open_session(path: str | Path, options: ort.SessionOptions, gpu: bool = False) -> ort.InferenceSession:
    """An InferenceSession over ``path`` that logs the providers it got (and warns on a CPU fallback).

    Args:
        path: the ``.onnx`` file.
        options: session options (threads etc.).
        gpu: ask for the CUDA provider (used when this onnxruntime build has it).
    """
    wanted = requested_providers(gpu)
    session = ort.InferenceSession(str(path), options, providers=wanted)
    got = session.get_providers()
    log.info("onnxruntime session %s: providers %s (asked for %s)", Path(path).name, got, wanted)
    if gpu and CUDA not in got:
        log.warning("onnxruntime session %s runs on the CPU although the GPU was asked for: this onnxruntime "
                    "build (%s) offers %s. Install the [gpu] extra (onnxruntime-gpu[cuda,cudnn], CUDA 13; "
                    "docs/install.md) on a machine with a CUDA 13 driver (>= 580).", Path(path).name,
                    ort.get_device(), ort.get_available_providers())
    return session
