"""Load the models a service needs, skipping optional ones that fail (a log line and a metric, not an outage).

``recommend`` serves its default ranker and any other exported ranker a request may name
(``ranker_student``, ``*_int8``). Only the default is required: an optional ranker whose files are
missing or damaged is left out, the reason is logged and counted, and a request naming it gets
INVALID_ARGUMENT listing the rankers that are served.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def load_optional(names: Iterable[str], required: Iterable[str],
                  build: Callable[[str], T]) -> tuple[dict[str, T], dict[str, str]]:
    """``build`` every name; failures of required names raise, the others are collected.

    Args:
        names: every model to load, in order.
        required: names whose failure must stop the load (e.g. the default ranker).
        build: name -> loaded model; raises when its files are missing or damaged.

    Returns:
        (loaded models by name, ``"<ExceptionType>: <message>"`` of each skipped name).

    Raises:
        Exception: whatever ``build`` raised for a required name.
    """
    required = set(required)
    loaded, skipped = {}, {}
    for name in names:
        try:
            loaded[name] = build(name)
        except Exception as err:  # noqa: BLE001 - optional models are skipped whatever broke them
            if name in required:
                raise
            skipped[name] = f"{type(err).__name__}: {err}"
    return loaded, skipped
