"""The one table of model inputs and outputs: names, dtypes and per-row shapes.

A :class:`ModelSpec` drives ``torch.onnx.export`` (positional inputs in table order, see
:mod:`export.onnx_export`), the generated ``config.pbtxt`` (:mod:`export.triton_config`) and the
tensors the ``recommend`` model sends over BLS (:func:`to_batch`), so the three cannot drift. The
tables of a run's models are built by :mod:`export.spec` from its fitted features; serving only
reads them back (:func:`load_specs`).

Shapes are per row: the batch axis is implicit and always first. ``()`` is one value per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRITON_DTYPES = {np.dtype(np.int64): "TYPE_INT64", np.dtype(np.int32): "TYPE_INT32",
                 np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float64): "TYPE_FP64",
                 np.dtype(object): "TYPE_STRING"}
# A ranker's content-group vector, the input its score graph takes in place of the item attributes it
# is computed from (``content.onnx``: :class:`ranking.model.ContentVectors`).
CONTENT_VECTOR = "content_vec"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: dtype and shape of a single row (batch axis excluded)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[np.dtype(self.dtype)]


@dataclass(frozen=True)
class ModelSpec:
    """A model's inputs and outputs in the order the exported graph takes and returns them."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        """JSON-able form (written next to the served models, read by ``recommend``)."""
        def rows(ts):
            return [{"name": t.name, "dtype": np.dtype(t.dtype).name, "shape": list(t.shape)} for t in ts]
        return {"name": self.name, "inputs": rows(self.inputs), "outputs": rows(self.outputs)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        def rows(ts):
            return tuple(TensorSpec(t["name"], np.dtype(t["dtype"]), tuple(t["shape"])) for t in ts)
        return cls(d["name"], rows(d["inputs"]), rows(d["outputs"]))


def load_specs(path) -> dict[str, "ModelSpec"]:
    """The tensor tables an export wrote (``recommend/1/specs.json``), by model name."""
    return {s["name"]: ModelSpec.from_dict(s) for s in json.loads(Path(path).read_text())}


def to_batch(tensors: tuple[TensorSpec, ...], values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Arrays in table order, cast to the table's dtype and checked against its row shape.

    Rows of shape ``()`` travel as ``(B, 1)``: Triton's ``dims: [1]`` (reshaped to ``(B,)`` for
    the model, see :func:`export.triton_config.tensor_block`).

    Raises:
        KeyError: a tensor of the table is missing from ``values``.
        ValueError: an array's shape does not match the table.
    """
    out = []
    for t in tensors:
        if t.name not in values:
            raise KeyError(f"input {t.name!r} missing; got {sorted(values)}")
        a = np.asarray(values[t.name], dtype=t.dtype)
        if a.shape[1:] != t.shape:
            raise ValueError(f"input {t.name!r} has rows of shape {a.shape[1:]}, the table says {t.shape}")
        out.append(a.reshape(len(a), *(t.shape or (1,))))
    return out


def from_batch(t: TensorSpec, value: np.ndarray) -> np.ndarray:
    """Undo :func:`to_batch`'s wire shape: (B, 1) -> (B,) for one-value rows."""
    value = np.asarray(value)
    return value.reshape(len(value), *t.shape)
