"""Where the served models keep the durable event log (shared by ``events`` and every ``recommend``).

``RECSYS_EVENT_LOG`` in the server's environment wins (``python -m serving.serve --event-log DIR``
sets it; Triton's python stubs inherit the server's environment); else the models' ``EVENT_LOG``
parameter, a relative path being taken from the model repository's parent folder (never inside
the repository: with ``--load-model=*`` Triton would try to load it as a model).

Catalog records (item / user upserts, blocks: the ``catalog`` model) live in ``catalog/``, a third
log of the same kind read by the same tail (``EventTail(..., kind="catalog")``), so whatever bus
carries the events later can carry them too.

Events and impressions live in two sub-folders, ``events/`` and ``impressions/``, each an
:class:`events.log.EventLog` with its own lock: an answer's impression (one 0.2 ms append) never
waits behind an event batch's fsync, and impressions (~4 KB each) never push events, and their
idempotency window, out of the size bound.
"""

from __future__ import annotations

import os
from pathlib import Path

from events.tail import EventTail

ENV = "RECSYS_EVENT_LOG"


def event_log_dir(repository: str | os.PathLike, parameter: str = "event_log") -> Path:
    """The log directory for a model repository (see the module docstring)."""
    chosen = os.environ.get(ENV) or parameter
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else Path(repository).resolve().parent / path


def event_log_dirs(repository: str | os.PathLike, parameter: str = "event_log") -> tuple[Path, Path]:
    """(events, impressions) folders of the log for a model repository."""
    base = event_log_dir(repository, parameter)
    return base / "events", base / "impressions"


def snapshot_tail(events_dir: str | os.PathLike, store_entry: dict, written_at: float | None) -> EventTail:
    """The tail a served snapshot starts from: after the log cursor its manifest's ``store`` entry
    records (``event_log``: the last event a retrain or refresh read, ``features.feedback``) when that
    cursor is of this log directory; else every event stored after ``written_at`` (the time the
    store was written: runs built without the log, or from another log)."""
    cursor = store_entry.get("event_log")
    if cursor and Path(cursor["directory"]).resolve() == Path(events_dir).resolve():
        return EventTail(events_dir, after=(cursor["segment"], cursor["rowid"]))
    return EventTail(events_dir, received_after=written_at)


def catalog_log_dir(repository: str | os.PathLike, parameter: str = "event_log") -> Path:
    """The catalog records' folder of the log for a model repository."""
    return event_log_dir(repository, parameter) / "catalog"
