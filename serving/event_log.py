"""Where the served models keep the durable event log (shared by ``events`` and every ``recommend``).

``RECSYS_EVENT_LOG`` in the server's environment wins (``python -m serving.serve --event-log DIR``
sets it; Triton's python stubs inherit the server's environment); else the models' ``EVENT_LOG``
parameter, a relative path being taken from the model repository's parent folder (never inside
the repository: with ``--load-model=*`` Triton would try to load it as a model).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "RECSYS_EVENT_LOG"


def event_log_dir(repository: str | os.PathLike, parameter: str = "event_log") -> Path:
    """The log directory for a model repository (see the module docstring)."""
    chosen = os.environ.get(ENV) or parameter
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else Path(repository).resolve().parent / path
