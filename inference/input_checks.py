"""Per-request checks of an exported model's inputs: id ranges and finite floats.

ONNX ``Gather`` wraps negative indices (``user_id=-5`` silently reads another user's row) and
fails with an unnamed INTERNAL error on indices past the table, and NaN/inf features come back
as NaN scores. So every served ONNX model checks each request before the session runs, against
the vocabulary sizes the export wrote next to the model (``<model>/1/input_bounds.json``).

Standard library and numpy only: the served python models import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

BOUNDS_FILE = "input_bounds.json"


def write_input_bounds(version_dir: str | os.PathLike, inputs: Iterable[tuple[str, np.dtype]],
                       vocabulary: dict[str, int]) -> Path:
    """Write ``input_bounds.json``: the vocabulary size of every integer input of one model.

    Args:
        version_dir: the model's version folder (``<repository>/<model>/1``).
        inputs: (name, dtype) of the model's inputs in graph order.
        vocabulary: embedding-table size by input name (ids must lie in ``0..size-1``).

    Raises:
        KeyError: an integer input has no vocabulary size.
    """
    sizes = {}
    for name, dtype in inputs:
        if np.issubdtype(np.dtype(dtype), np.integer):
            if name not in vocabulary:
                raise KeyError(f"integer input {name!r} has no vocabulary size; known: {sorted(vocabulary)} "
                               "(export.repository.code_bounds builds them from the feature set)")
            sizes[name] = int(vocabulary[name])
    path = Path(version_dir) / BOUNDS_FILE
    path.write_text(json.dumps({"vocabulary": sizes}, indent=1))
    return path


class InputChecker:
    """Checks one request's arrays: integer ids in ``0..size-1``, floats finite.

    Args:
        inputs: (name, numpy dtype) of the model's inputs, as its config declares them.
        vocabulary: vocabulary size by integer input name (from ``input_bounds.json``).

    Raises:
        ValueError: an integer input has no vocabulary size (the bounds file does not match the model).
    """

    def __init__(self, inputs: Iterable[tuple[str, np.dtype]], vocabulary: dict[str, int]):
        self.inputs = [(name, np.dtype(dtype)) for name, dtype in inputs]
        self.vocabulary = {k: int(v) for k, v in vocabulary.items()}
        missing = [n for n, d in self.inputs if np.issubdtype(d, np.integer) and n not in self.vocabulary]
        if missing:
            raise ValueError(f"no vocabulary size for integer inputs {missing} in {BOUNDS_FILE}; "
                             f"it lists {sorted(self.vocabulary)}")

    @classmethod
    def load(cls, version_dir: str | os.PathLike, inputs: Iterable[tuple[str, np.dtype]]) -> "InputChecker":
        """The checker of the model in ``version_dir`` (reads its ``input_bounds.json``).

        Raises:
            FileNotFoundError: the bounds file is missing.
        """
        path = Path(version_dir) / BOUNDS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; rebuild the repository with "
                                    "`python -m export --run-dir <run>`")
        return cls(inputs, json.loads(path.read_text())["vocabulary"])

    def problem(self, arrays: dict[str, np.ndarray]) -> tuple[str, str] | None:
        """(reason, message) of the first bad input of one request, or None when all are fine.

        Reasons: ``missing_input``, ``id_out_of_range``, ``non_finite``.
        """
        for name, dtype in self.inputs:
            a = arrays.get(name)
            if a is None:
                return "missing_input", f"input '{name}' is missing; send every input of the model's config"
            if np.issubdtype(dtype, np.integer):
                size = self.vocabulary[name]
                bad = (a < 0) | (a >= size)
                if bad.any():
                    at = np.argwhere(bad)[0]
                    return "id_out_of_range", (f"input '{name}' holds {int(a[tuple(at)])} at index {at.tolist()}; "
                                               f"ids must lie in 0..{size - 1} (0 = unknown/padding)")
            elif np.issubdtype(dtype, np.floating) and not np.isfinite(a).all():
                at = np.argwhere(~np.isfinite(a))[0]
                return "non_finite", (f"input '{name}' holds {a[tuple(at)]} at index {at.tolist()}; "
                                      "send finite numbers only")
        return None
