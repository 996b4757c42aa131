"""Checksums of an exported Triton model repository: written at export, verified by every served model.

The export writes ``<repository>/checksums.json``: the sha256 and size of every generated file
(the committed ``config.pbtxt`` / ``model.py`` templates and caches excepted) and the run it came
from. Each served model verifies the files it reads when it loads (:func:`verify_files`), so a
missing, truncated or overwritten artifact is a load error that names the file and the command
that rebuilds it, instead of a crash deep in numpy/FAISS or silently different answers.

No dependency beyond the standard library: every served model imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

MANIFEST = "checksums.json"
_SKIP_DIRS = {"__pycache__"}
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """A served file is missing, damaged or not covered by the repository's checksum manifest."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def rebuild_hint(run_dir: str | None) -> str:
    """The command that rewrites a repository's generated files."""
    return f"rebuild it with `python -m export --run-dir {run_dir or '<run>'}`"


def write_manifest(repository: str | os.PathLike, run_dir: str | os.PathLike,
                   exclude: Iterable[str] = ()) -> Path:
    """Write ``<repository>/checksums.json`` over every file of the repository.

    Args:
        repository: the model repository root.
        run_dir: the trained run the repository was exported from (named in load errors).
        exclude: repository-relative paths left out (committed templates a developer may edit).

    Returns:
        The manifest's path.
    """
    repo = Path(repository)
    skip = set(exclude) | {MANIFEST}
    files = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_file() and rel not in skip and not _SKIP_DIRS & set(path.relative_to(repo).parts):
            files[rel] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    manifest = repo / MANIFEST
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_dir": str(Path(run_dir).resolve()), "files": files}, indent=1))
    os.replace(tmp, manifest)  # a reader never sees half a manifest
    return manifest


def load_manifest(repository: str | os.PathLike) -> dict:
    """The repository's manifest (``run_dir``, ``files``).

    Raises:
        ArtifactError: the manifest is missing or not valid JSON.
    """
    path = Path(repository) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: this repository was not written by the export (or was "
                            f"copied without it); {rebuild_hint(None)}")
    try:
        manifest = json.loads(path.read_text())
        manifest["files"].items()
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise ArtifactError(f"{path} is damaged ({type(err).__name__}: {err}); {rebuild_hint(None)}") from err
    return manifest


def verify_files(repository: str | os.PathLike, prefixes: Iterable[str]) -> list[str]:
    """Check every manifest entry under ``prefixes`` (e.g. ``"ranker/"``) against the file on disk.

    Args:
        repository: the model repository root (a served model's ``args["model_repository"]``
            is ``<root>/<model>``: pass its parent).
        prefixes: repository-relative path prefixes; a file path checks exactly that file.

    Returns:
        The verified repository-relative paths.

    Raises:
        ArtifactError: naming the first missing or damaged file, or a prefix with no entry, and the
            command that rebuilds the repository.
    """
    repo = Path(repository)
    manifest = load_manifest(repo)
    hint = rebuild_hint(manifest.get("run_dir"))
    checked = []
    for prefix in prefixes:
        entries = {rel: e for rel, e in manifest["files"].items() if rel == prefix or rel.startswith(prefix)}
        if not entries:
            raise ArtifactError(f"{repo / MANIFEST} lists no file under '{prefix}': the model was not exported "
                                f"with this repository; {hint}")
        for rel, entry in entries.items():
            path = repo / rel
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; {hint}")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ArtifactError(f"{path} is damaged: {size} bytes, the export wrote {entry['bytes']} "
                                    f"(truncated or overwritten); {hint}")
            if sha256(path) != entry["sha256"]:
                raise ArtifactError(f"{path} is damaged: its sha256 differs from the export's; {hint}")
            checked.append(rel)
    return checked
