"""int8 dynamic quantization of the exported rankers, and the quality check that goes with it.

``onnxruntime.quantization.quantize_dynamic`` stores the weights of ``MatMul``/``Gemm`` and the
embedding tables (``Gather``) as int8 and quantizes activations per call, so the quantized graph
takes and returns exactly the fp32 model's tensors: the same :class:`export.spec.ModelSpec`
(renamed) describes both. Quantization changes scores, so the export measures how much on real
candidate lists (:func:`quantization_report`) and records it in ``export.json``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from inference.models import onnx_session, run_onnx
from inference.spec import ModelSpec

log = logging.getLogger(__name__)
SUFFIX = "_int8"


def int8_name(name: str) -> str:
    """Triton name of a ranker's quantized twin (``ranker`` -> ``ranker_int8``)."""
    return name + SUFFIX


def quantize_ranker(src: Path, dst: Path, per_channel: bool) -> Path:
    """Quantize ``src`` (fp32 ONNX) into ``dst``: int8 weights, dynamically quantized activations.

    The graph is pre-processed first (shape inference, constant folding), which the quantizer
    needs to find the weights of the exporter's ``MatMul`` + ``Add`` pairs.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        quantize_dynamic(pre, dst, per_channel=per_channel, weight_type=QuantType.QInt8)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    log.info("quantized %s -> %s (%d -> %d bytes)", src, dst, src.stat().st_size, dst.stat().st_size)
    return dst


def top_k_agreement(reference: np.ndarray, other: np.ndarray, valid: np.ndarray, k: int) -> tuple[float, float]:
    """How well ``other`` keeps ``reference``'s top-k of each list.

    Args:
        reference, other: (L, C) scores of the same candidates.
        valid: (L, C) bool, padding slots excluded.
        k: list head length.

    Returns:
        (mean overlap of the two top-k sets in [0, 1], share of lists whose top-k order is identical).
    """
    ref = np.argsort(-np.where(valid, reference, -np.inf), axis=1, kind="stable")[:, :k]  # (L, k)
    got = np.argsort(-np.where(valid, other, -np.inf), axis=1, kind="stable")[:, :k]
    overlap = [len(np.intersect1d(a, b)) / k for a, b in zip(ref, got)]
    return float(np.mean(overlap)), float(np.mean(np.all(ref == got, axis=1)))


def quantization_report(spec: ModelSpec, fp32: Path, int8: Path, inputs: dict[str, np.ndarray], valid: np.ndarray,
                        k: int) -> dict[str, float]:
    """fp32 vs int8 onnxruntime on real candidate lists.

    Args:
        spec: the ranker's table (inputs, ``score`` first among outputs).
        fp32, int8: the two ``model.onnx`` files.
        inputs: ranker rows of whole lists, list-major: ``L * C`` rows.
        valid: (L, C) bool, real candidates (padding excluded).
        k: head length for the order check.

    Returns:
        ``max_abs_score_diff`` and ``score_scale`` (largest |fp32 score|) over valid candidates,
        ``top{k}_overlap``, ``top{k}_same_order``, ``lists``, ``bytes_fp32``, ``bytes_int8``.
    """
    ref = run_onnx(onnx_session(fp32), spec, inputs)[0].reshape(valid.shape)
    got = run_onnx(onnx_session(int8), spec, inputs)[0].reshape(valid.shape)
    overlap, same = top_k_agreement(ref, got, valid, k)
    return {"max_abs_score_diff": float(np.max(np.abs(ref - got)[valid])), "score_scale": float(np.max(np.abs(ref[valid]))),
            f"top{k}_overlap": overlap, f"top{k}_same_order": same, "lists": int(len(valid)),
            "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size}
