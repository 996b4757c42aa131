"""What the export writes so the served models can protect themselves: input bounds and checksums.

Called once at the end of :func:`export.repository.run_export`, after every other file is written:

- ``<model>/1/input_bounds.json`` for every exported ONNX model: the vocabulary size of each
  integer input (:mod:`inference.input_checks`), so a served model rejects out-of-range ids.
- ``checksums.json`` at the repository root: sha256 of every generated file
  (:mod:`inference.integrity`), verified by each served model when it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from inference.spec import ModelSpec
from inference.input_checks import write_input_bounds
from inference.integrity import write_manifest


def seal_repository(repo: Path, specs: Iterable[ModelSpec], vocabulary: dict[str, int], run_dir: Path,
                    templates: Iterable[str]) -> Path:
    """Write every ONNX model's ``input_bounds.json``, then the repository's ``checksums.json``.

    Args:
        repo: the model repository.
        specs: tables of the exported ONNX models (towers, rankers, their int8 copies).
        vocabulary: embedding-table size by integer input name (:func:`export.repository.code_bounds`).
        run_dir: the trained run (named in load errors as the one to re-export).
        templates: committed files (not checksummed: a developer edits them in place).

    Returns:
        The manifest's path.
    """
    for spec in specs:
        write_input_bounds(repo / spec.name / "1", [(t.name, t.dtype) for t in spec.inputs], vocabulary)
    return write_manifest(repo, run_dir, exclude=templates)
