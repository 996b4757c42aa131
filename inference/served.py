"""Which model repositories a running ``recsys-serve`` serves: one marker file per server in the
repository (``.served-by-<pid>``), written when it starts and removed when it stops.

Why: Triton reads a model's files again whenever it loads it, and the supervisor reloads ``recommend``
after a stub dies. An export written over a repository a server is serving therefore goes live at the
next reload, on that model alone, beside the old versions of the others still loaded: a rollout nobody
chose, and the old version gone for a rollback (found by an on-call probe). ``recsys-export`` refuses
such a repository unless told to replace it (``export.replace_served=true``); the safe rollout is a new
folder per version (docs/serving.md, "Rolling out a new version").

Imported by the server (``serving.serve``) and the exporter; imports neither.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = ".served-by-"


def _alive(pid: int) -> bool:
    """A live process that is a server (its PID reused by another program does not count, where /proc tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        return b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc: trust the PID
        return True


def mark_served(repository: str | os.PathLike, pid: int | None = None) -> Path | None:
    """Write this process's marker into ``repository``; -> its path (None when it cannot be written:
    a read-only repository is served all the same, unguarded)."""
    path = Path(repository) / f"{PREFIX}{pid or os.getpid()}"
    try:
        path.write_text(f"{pid or os.getpid()}\n")
    except OSError:
        return None
    return path


def unmark_served(marker: Path | None) -> None:
    if marker is not None:
        marker.unlink(missing_ok=True)


def serving_pids(repository: str | os.PathLike) -> list[int]:
    """PIDs of live servers whose marker is in ``repository`` (markers of dead ones are removed)."""
    pids = []
    folder = Path(repository)
    if not folder.is_dir():
        return pids
    for marker in folder.glob(f"{PREFIX}*"):
        try:
            pid = int(marker.name[len(PREFIX):])
        except ValueError:
            continue
        if pid != os.getpid() and _alive(pid):
            pids.append(pid)
        elif pid != os.getpid():
            marker.unlink(missing_ok=True)  # a server killed without its cleanup
    return sorted(pids)
