"""Server side of the ``recommend`` wire format: tensors -> :class:`Request`, answer -> tensors.

Everything a client can get wrong is caught here or in :func:`pipeline.pipeline.validate_request`
and raised as :class:`pipeline.pipeline.RequestError` with a message naming the input and the
fix; the Triton model turns it into INVALID_ARGUMENT. Triton itself already rejects a missing
required input and a wrong datatype or rank before the model runs; the checks below repeat them
so that the function is safe to call with anything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from events.catalog import MAX_VALUE_LENGTH
from pipeline.pipeline import MAX_ID_LENGTH, Recommendation, Request, RequestError, validate_request
from serving.protocol import ANSWER, INPUTS, LIST_INPUTS, MAX_LIST_LEN, OUTPUTS, encode_answer

MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z


def _check_tensor(name: str, value: np.ndarray) -> np.ndarray:
    dtype, datatype, dims, _ = INPUTS[name]
    value = np.asarray(value)
    if (value.dtype == np.object_) != (dtype == np.object_) or (dtype != np.object_ and value.dtype != dtype):
        raise RequestError(f"input '{name}' has datatype {value.dtype}; send {datatype}")
    if value.ndim != len(dims) or (dims[0] != -1 and value.shape[0] != dims[0]):
        raise RequestError(f"input '{name}' has shape {list(value.shape)}; send shape {list(dims)}")
    return value


ID_INPUTS = ("user_id", "exclude_items", "recent_items", "promoted", "ranker")  # stripped, as every id is


def _decode(name: str, values: np.ndarray) -> list[str]:
    """The input's strings, decoded; ids (:data:`ID_INPUTS`) stripped of surrounding whitespace, as
    training, ``events`` and ``catalog`` store them (a request for " 9 " is user 9's). Category names,
    the segment and attribute values are taken as sent (a category token may hold a space)."""
    out = []
    # an attribute: a name and a value as long as the catalog stores one (upsert_user); the rest: an id's length
    limit = MAX_ID_LENGTH + 1 + MAX_VALUE_LENGTH if name == "attributes" else MAX_ID_LENGTH
    for v in values.ravel():
        if isinstance(v, bytes):
            if len(v) > 4 * limit:
                raise RequestError(f"input '{name}' holds a value of {len(v)} bytes; at most {limit} "
                                   "characters are allowed")
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RequestError(f"input '{name}' holds bytes that are not UTF-8 ({err.reason})") from None
        v = str(v)
        if name not in ID_INPUTS and len(v) > limit:  # ids: checked once stripped (validate_request)
            raise RequestError(f"input '{name}' holds a value of {len(v)} characters; at most {limit} are allowed")
        out.append(v.strip() if name in ID_INPUTS else v)
    return out


def parse_request(tensors: dict[str, np.ndarray | None], max_k: int) -> Request:
    """Build and validate a :class:`Request` from the model's input tensors.

    Args:
        tensors: input name -> array (None or absent for an optional input not sent).
        max_k: the largest k the pipeline serves.

    Raises:
        RequestError: a missing, malformed or out-of-range input; the message names it.
    """
    unknown = sorted(set(tensors) - set(INPUTS))
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; known: {', '.join(INPUTS)}")
    got = {n: _check_tensor(n, v) for n, v in tensors.items() if v is not None}
    missing = [n for n, (_, _, _, optional) in INPUTS.items() if not optional and n not in got]
    if missing:
        raise RequestError(f"missing required input(s) {missing}")
    for name in LIST_INPUTS:
        if name in got and len(got[name]) > MAX_LIST_LEN:
            raise RequestError(f"input '{name}' has {len(got[name])} entries; at most {MAX_LIST_LEN} are allowed")
    timestamp = None
    if "timestamp" in got:
        t = float(got["timestamp"][0])
        if not np.isfinite(t) or not 0 <= t <= MAX_TIMESTAMP:
            raise RequestError(f"input 'timestamp' is {t!r}; send finite Unix seconds in 0..{MAX_TIMESTAMP}, "
                               "or leave it out for the server's clock")
        timestamp = int(t)
    attributes = {}
    if "attributes" in got and len(got["attributes"]) > MAX_LIST_LEN:
        raise RequestError(f"input 'attributes' has {len(got['attributes'])} entries; at most {MAX_LIST_LEN} are allowed")
    for entry in _decode("attributes", got["attributes"]) if "attributes" in got else []:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise RequestError(f"input 'attributes' holds {entry!r}; send name=value entries (e.g. age=25)")
        if name.strip() == "user_id":
            raise RequestError("input 'attributes' names user_id; the user is the 'user_id' input")
        if name.strip() in attributes:
            raise RequestError(f"input 'attributes' names {name.strip()!r} twice; send each attribute once")
        attributes[name.strip()] = value
    request = Request(user_id=_decode("user_id", got["user_id"])[0], k=int(got["k"][0]), timestamp=timestamp,
                      segment=_decode("segment", got["segment"])[0] if "segment" in got else None,
                      attributes=attributes,
                      **{name: _decode(name, got[name]) if name in got else [] for name in LIST_INPUTS})
    validate_request(request, max_k)
    return request


def requested_ranker(tensors: dict[str, np.ndarray | None], rankers: list[str], default: str) -> str:
    """The ranker a request names in its optional ``ranker`` input, or ``default``.

    Args:
        tensors: input name -> array, as for :func:`parse_request`.
        rankers: the exported rankers' Triton names (``recommend/1/rankers.json``).
        default: the export's ``export.ranker``.

    Raises:
        RequestError: a malformed value or a name that is not one of ``rankers``.
    """
    if tensors.get("ranker") is None:
        return default
    name = _decode("ranker", _check_tensor("ranker", tensors["ranker"]))[0]
    if name not in rankers:
        raise RequestError(f"unknown ranker {name!r} in input 'ranker'; known: {', '.join(rankers)}")
    return name


def encode_recommendation(rec: Recommendation, titles: dict[str, str], ranker: str = "",
                          request_id: str = "", names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Output tensors of one answer (``titles``: item id -> display title, may be empty; ``ranker``: who
    scored it; ``request_id``: its impression in the event log). ``names``: the outputs to build (a
    request's requested outputs; all of ``OUTPUTS`` when None or empty)."""
    values = {"item_ids": rec.item_ids, "scores": [float(s) for s in rec.scores], "reasons": rec.reasons,
              "groups": rec.groups, "titles": [titles.get(i, "") for i in rec.item_ids], "route": [rec.route],
              "ranker": [ranker], "request_id": [request_id]}
    out = {}
    for name in names or OUTPUTS:
        dtype = OUTPUTS[name][0]
        if name == ANSWER:
            out[name] = encode_answer({n: v[0] if OUTPUTS[n][2] == (1,) else v for n, v in values.items()})
            continue
        v = values[name]
        out[name] = (np.array([s.encode("utf-8") for s in v], dtype=np.object_) if dtype == np.object_
                     else np.asarray(v, dtype=dtype).reshape(len(v)))
    return out


EMPTY_REASONS = ("category_filters", "excluded_items", "no_candidates")


def empty_reason(request: Request) -> str:
    """Why an answer holds no item (counted in ``recsys_empty_answers_total{reason}``).

    An empty list is a valid answer, not an error: the request's own filters can exclude every
    item. ``category_filters``: include/exclude categories were given; ``excluded_items``: only item
    exclusions were; ``no_candidates``: neither (the catalog or the rules left nothing).
    """
    if request.include_categories or request.exclude_categories:
        return "category_filters"
    if request.exclude_items:
        return "excluded_items"
    return "no_candidates"
