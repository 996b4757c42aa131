"""ONNX export of the plain modules (towers, ranker) and the parity checks that guard it.

Each module is wrapped so that it takes positional tensors in the order of its
:class:`export.spec.ModelSpec` and returns a tuple in the order of its outputs; the ONNX graph
gets the table's names and a dynamic batch axis on every tensor.
"""

from __future__ import annotations

import dataclasses

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from inference.models import CONTENT_FILE, EXPLAIN_FILE, PARTS, SCORE_FILE, onnx_session, run_onnx  # noqa: F401 - re-exported
from inference.spec import CONTENT_VECTOR, ModelSpec, TensorSpec

log = logging.getLogger(__name__)
# The exporter's graph passes log every rewrite and deduplicated initializer at INFO.
for _name in ("onnx_ir", "onnxscript"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class PositionalModel(nn.Module):
    """Adapts a module taking a dict of named tensors to positional inputs in table order.

    Args:
        module: the plain model (``UserTower``, ``ItemTower``, ``LateFusionRanker``), eval mode.
        spec: its table; ``forward(*tensors)`` builds ``{name: tensor}`` from ``spec.inputs``.
    """

    def __init__(self, module: nn.Module, spec: ModelSpec):
        super().__init__()
        self.module = module.eval()
        self.names = spec.input_names
        self.n_outputs = len(spec.outputs)
        self.eval()

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(dict(zip(self.names, tensors)))
        out = out if isinstance(out, tuple) else (out,)
        if len(out) != self.n_outputs:
            raise ValueError(f"module returned {len(out)} outputs, the table declares {self.n_outputs}")
        return tuple(out)


def example_inputs(spec: ModelSpec, rows: int, seed: int = 0,
                   high: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs matching the table: integer codes in ``[0, high[name])``, floats ~ N(0, 1).

    Args:
        spec: the model's table.
        rows: batch size.
        seed: random seed.
        high: exclusive upper bound of each integer input (embedding-table sizes); 2 when absent.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = (rows, *t.shape)
        if np.issubdtype(t.dtype, np.integer):
            out[t.name] = rng.integers(0, (high or {}).get(t.name, 2), size=shape).astype(t.dtype)
        else:
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return out


def export_onnx(module: nn.Module, spec: ModelSpec, path: Path, example: dict[str, np.ndarray], opset: int) -> Path:
    """Export ``module`` to a self-contained ONNX file (weights inside) and check it.

    Args:
        module: plain model in eval mode.
        spec: its table (input/output names and order).
        path: where to write ``model.onnx``.
        example: inputs to trace with; the batch axis must be > 1 so it is not specialised.
        opset: ONNX opset version.

    Returns:
        ``path``.
    """
    wrapped = PositionalModel(module, spec)
    args = tuple(torch.as_tensor(example[n]) for n in spec.input_names)
    if len(args[0]) < 2:
        raise ValueError("export needs an example batch of at least 2 rows, or the batch axis is fixed to 1")
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(wrapped, args, str(path), input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_shapes=(tuple({0: batch} for _ in args),), opset_version=opset,
                          external_data=False, verbose=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    log.info("exported %s -> %s", spec.name, path)
    return path


@torch.no_grad()
def run_torch(module: nn.Module, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the PyTorch module on the same named inputs; outputs in table order."""
    out = PositionalModel(module, spec)(*(torch.as_tensor(inputs[n]) for n in spec.input_names))
    return [o.numpy() for o in out]


def check_parity(module: nn.Module, spec: ModelSpec, path: Path, inputs: dict[str, np.ndarray], atol: float) -> float:
    """Largest |PyTorch - onnxruntime| difference over all outputs.

    Raises:
        AssertionError: when it exceeds ``atol`` (the export is wrong; do not serve it).
    """
    expected = run_torch(module, spec, inputs)
    got = run_onnx(onnx_session(path), spec, inputs)
    worst = 0.0
    for t, e, g in zip(spec.outputs, expected, got):
        if e.shape != g.shape:
            raise AssertionError(f"{spec.name}.{t.name}: onnxruntime shape {g.shape} != PyTorch {e.shape}")
        worst = max(worst, float(np.max(np.abs(e - g))) if e.size else 0.0)
    if worst > atol:
        raise AssertionError(f"{spec.name}: onnxruntime differs from PyTorch by {worst:.2e} > {atol:.0e} ({path})")
    return worst


def export_score_graph(module: nn.Module, spec: ModelSpec, model_path: Path, example: dict[str, np.ndarray],
                       opset: int, atol: float) -> float:
    """Export a ranker's serving graphs next to ``model_path`` and check them against it:

    - ``content.onnx`` (a ranker with a content group that reads item attributes): those attributes ->
      the group's vector (``CONTENT_VECTOR``), which depends on the item alone: the pipeline computes it
      once per item and keeps it (:class:`pipeline.item_vectors.ItemVectors`);
    - ``score.onnx``: the score and each row's ``parts`` (``explain="parts"``: one fusion pass, no
      contributions), what the pipeline runs on every candidate; it takes ``CONTENT_VECTOR`` in place of
      the item attributes when ``content.onnx`` is written;
    - ``explain.onnx``: ``parts`` rows -> contributions (the fusion MLP on the occluded variants),
      what the pipeline runs on the returned items only.

    Returns:
        The largest difference to the full graph: |score| over the example, |contributions| over
        its rows.

    Raises:
        AssertionError: they differ by more than ``atol``.
    """
    from ranking.model import ContentVectors, Contributions

    parts = TensorSpec(PARTS, np.dtype(np.float32), (module.parts_dim,))
    scored = dataclasses.replace(spec, outputs=(spec.outputs[0], parts))
    content = set(module.content_inputs)
    score_example = example
    model_path.with_name(CONTENT_FILE).unlink(missing_ok=True)  # an earlier export's graph must not stay
    if content:
        vector = TensorSpec(CONTENT_VECTOR, np.dtype(np.float32), (int(module.baseline.shape[1]),))
        content_spec = ModelSpec(spec.name, tuple(t for t in spec.inputs if t.name in content), (vector,))
        export_onnx(ContentVectors(module).eval(), content_spec, model_path.with_name(CONTENT_FILE), example, opset)
        vectors = run_onnx(onnx_session(model_path.with_name(CONTENT_FILE)), content_spec, example)[0]
        scored = dataclasses.replace(scored, inputs=tuple(t for t in spec.inputs if t.name not in content) + (vector,))
        score_example = {**{n: v for n, v in example.items() if n not in content}, CONTENT_VECTOR: vectors}
    path = model_path.with_name(SCORE_FILE)
    module.explain = "parts"
    try:
        export_onnx(module, scored, path, score_example, opset)
    finally:
        module.explain = True
    explain = ModelSpec(spec.name, (parts,), spec.outputs[1:])
    full_score, full_contrib = run_onnx(onnx_session(model_path), spec, example)
    alone, rows = run_onnx(onnx_session(path), scored, score_example)
    export_onnx(Contributions(module).eval(), explain, model_path.with_name(EXPLAIN_FILE), {PARTS: rows}, opset)
    contrib = run_onnx(onnx_session(model_path.with_name(EXPLAIN_FILE)), explain, {PARTS: rows})[0]
    worst = {SCORE_FILE: float(np.max(np.abs(full_score - alone))) if alone.size else 0.0,
             EXPLAIN_FILE: float(np.max(np.abs(full_contrib - contrib))) if contrib.size else 0.0}
    for name, diff in worst.items():
        if diff > atol:
            raise AssertionError(f"{spec.name}: {name} differs from {model_path.name} by {diff:.2e} > {atol:.0e}")
    return max(worst.values())
