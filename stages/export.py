"""The ``export`` stage: the run's artifacts -> ONNX models -> a Triton model repository (:mod:`export.repository`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from export.repository import run_export as export_repository
from pipeline.artifacts import RunArtifacts


def run_export(cfg: DictConfig, out_dir: Path) -> Path:
    """Export the run in ``out_dir`` into ``cfg.export.repository``; the run's manifest records where."""
    repo = export_repository(cfg, out_dir)
    RunArtifacts(out_dir).note("exported_to", str(Path(repo).resolve()))
    return repo
