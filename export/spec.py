"""The one table of model inputs and outputs: names, dtypes and per-row shapes.

Everything that crosses a model boundary is declared here once, derived from the run's fitted
:class:`features.encoders.FeatureSet` (``store.features.specs``) and the models' own
``input_names`` (towers; rankers, whose names are checked against
:func:`ranking.features.input_groups`). The same :class:`ModelSpec` drives ``torch.onnx.export``
(positional inputs in table order, see :mod:`export.onnx_export`), the generated ``config.pbtxt``
(:mod:`export.triton_config`) and the tensors the ``recommend`` model sends over BLS
(:func:`to_batch`), so the three cannot drift.

Shapes are per row: the batch axis is implicit and always first. ``()`` is one value per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.store import FeatureStore
from ranking.features import COLLABORATIVE, CONTEXT_NUMERIC, GROUPS, POPULARITY, input_groups

TRITON_DTYPES = {np.dtype(np.int64): "TYPE_INT64", np.dtype(np.int32): "TYPE_INT32",
                 np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float64): "TYPE_FP64",
                 np.dtype(object): "TYPE_STRING"}
_FLOAT_NAMES = set(COLLABORATIVE) | set(CONTEXT_NUMERIC) | set(POPULARITY)


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


def feature_tensor(spec) -> TensorSpec:
    """The tensor of one declared feature, by kind (see :mod:`features.encoders`)."""
    if spec.kind in ("categorical", "context"):
        return TensorSpec(spec.name, np.dtype(np.int64), ())
    if spec.kind in ("multi_categorical", "text"):
        return TensorSpec(spec.name, np.dtype(np.int64), (spec.max_len,))
    if spec.kind == "numeric":
        return TensorSpec(spec.name, np.dtype(np.float32), ())
    raise ValueError(f"feature {spec.name!r} has kind {spec.kind!r}, which has no tensor form; "
                     "known kinds: categorical, multi_categorical, text, numeric, context")


def _by_name(store: FeatureStore, groups: tuple[str, ...]) -> dict:
    return {s.name: s for g in groups for s in store.features.specs[g]}


def _pick(specs: dict, names: list[str], extra: dict[str, TensorSpec], model: str) -> tuple[TensorSpec, ...]:
    out = []
    for n in names:
        if n in extra:
            out.append(extra[n])
        elif n in specs:
            out.append(feature_tensor(specs[n]))
        else:
            raise KeyError(f"{model} input {n!r} is neither a declared feature ({', '.join(specs)}) "
                           f"nor a derived input ({', '.join(extra)}); update export/spec.py")
    return tuple(out)


def user_tower_spec(store: FeatureStore, input_names: list[str], dim: int) -> ModelSpec:
    """User tower: user + context features and ``history`` (item-id codes) -> unit query vector.

    Args:
        store: the run's feature store (feature specs, history length).
        input_names: ``UserTower.input_names``, the order the exported graph takes its inputs in.
        dim: embedding size.
    """
    history = {"history": TensorSpec("history", np.dtype(np.int64), (store.history_len,))}
    inputs = _pick(_by_name(store, ("user", "context")), input_names, history, "user_tower")
    return ModelSpec("user_tower", inputs, (TensorSpec("user_embedding", np.dtype(np.float32), (dim,)),))


def item_tower_spec(store: FeatureStore, input_names: list[str], dim: int) -> ModelSpec:
    """Item tower: item id + content features -> unit item vector (for indexing new items)."""
    inputs = _pick(_by_name(store, ("item",)), input_names, {}, "item_tower")
    return ModelSpec("item_tower", inputs, (TensorSpec("item_embedding", np.dtype(np.float32), (dim,)),))


def ranker_spec(store: FeatureStore, input_names: list[str], dim: int, name: str = "ranker") -> ModelSpec:
    """Ranker (or a student with fewer groups): one row per (request, candidate) -> score, contributions.

    Args:
        store: the run's feature store.
        input_names: ``LateFusionRanker.input_names`` (inputs of its signal groups, graph order);
            each must be one of :func:`ranking.features.input_groups`.
        dim: tower embedding size.
        name: Triton model name (``ranker``, ``ranker_student``).
    """
    known = {n for group in input_groups(store).values() for n in group}
    unknown = [n for n in input_names if n not in known]
    if unknown:
        raise KeyError(f"{name} reads {unknown}, which ranking.features.input_groups does not build; "
                       f"known: {sorted(known)}")
    derived = {n: TensorSpec(n, np.dtype(np.float32), (dim,) if n in ("user_emb", "item_emb") else ())
               for n in _FLOAT_NAMES}
    inputs = _pick(_by_name(store, ("user", "item", "context")), input_names, derived, name)
    outputs = (TensorSpec("score", np.dtype(np.float32), ()),
               TensorSpec("contributions", np.dtype(np.float32), (len(GROUPS),)))
    return ModelSpec(name, inputs, outputs)


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
