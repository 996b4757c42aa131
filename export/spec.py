"""The tensor tables (:mod:`inference.spec`) of a run's models, built at export time.

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

import numpy as np

from features.store import FeatureStore
from inference.spec import ModelSpec, TensorSpec
from ranking.features import COLLABORATIVE, CONTEXT_NUMERIC, GROUPS, POPULARITY, input_groups

_FLOAT_NAMES = set(COLLABORATIVE) | set(CONTEXT_NUMERIC) | set(POPULARITY)


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
