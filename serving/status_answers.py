"""One response per request for the python models that answer a batch of records with one status
each (``events``, ``catalog``): a bad request is INVALID_ARGUMENT, a failure INTERNAL (logged), and
the model keeps serving. Used inside the Triton stubs (``pb_utils`` is passed in: this module is
importable anywhere)."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import numpy as np


def answer_each(pb_utils, requests: list, answer: Callable[[object], np.ndarray], name: str,
                output: str = "status", failed: Callable[[str], None] | None = None) -> list:
    """``answer(request)`` -> the ``output`` tensor of its response (or a dict of named output tensors);
    ``ValueError`` is the client's
    mistake (INVALID_ARGUMENT, its message prefixed with ``name``), any other exception ours.
    ``failed(code)`` is called once per request answered with an error (``invalid_argument`` or
    ``internal``): Triton counts a python model's error responses as successes, so the model counts them.
    An internal error is logged with its traceback (for whoever is on call; the client gets one line)."""
    responses = []
    for request in requests:
        try:
            out = answer(request)
            named = out if isinstance(out, dict) else {output: out}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in named.items()]))
        except ValueError as err:
            if failed is not None:
                failed("invalid_argument")
            responses.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{name}: {err}", pb_utils.TritonError.INVALID_ARG)))
        except Exception as err:  # noqa: BLE001 - a failed write is an error for this call, the model keeps serving
            if failed is not None:
                failed("internal")
            pb_utils.Logger.log_error(f"{name} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
            responses.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"internal error: {type(err).__name__}: {err}")))
    return responses
