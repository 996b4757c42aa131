"""The client's own request serialisation and answer reading against tritonclient's, without a server.

``serving.client._inputs`` builds request inputs without ``tritonclient.grpc.InferInput`` (its
per-element numpy iteration cost ~0.3 ms a call) and ``_answer_text`` reads the ``answer`` output's
raw bytes: both must give exactly what tritonclient's public path gives, or a tritonclient upgrade
that changes its internals shows here first.
"""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from serving.client import _answer_text, _inputs
from serving.protocol import ANSWER, decode_answer, decode_response, encode_request


def reference_inputs(tensors: dict) -> list:
    out = []
    for name, array in tensors.items():
        inp = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        out.append(inp.set_data_from_numpy(array))
    return out


def request_bytes(inputs: list) -> bytes:
    request = _get_inference_request(model_name="recommend", inputs=inputs, model_version="", request_id="",
                                     outputs=[grpcclient.InferRequestedOutput(ANSWER)], sequence_id=0,
                                     sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                     parameters=None)
    return request.SerializeToString(deterministic=True)


TENSORS = {
    "a full request": encode_request("Ünïcode user", 7, 1_700_000_000.5, ["1", "2"], ["Drama"], ["Horror"], ["3"],
                                     "ranker_student", ["4"], "vip", {"age": 25, "gender": "F"}),
    "the usual request": encode_request("196", 10, 1_700_000_000.0),
    "no timestamp": encode_request("196", 10),
    "odd arrays": {"s": np.array([b"raw\x00bytes", "text", 3, ""], dtype=np.object_),
                   "grid": np.array([["a", "bb"], ["ccc", "é"]], dtype=np.object_),
                   "empty": np.array([], dtype=np.object_), "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
                   "f32": np.array([1.5, -0.0, np.nan], dtype=np.float32), "flags": np.array([True, False]),
                   "u8": np.array([0, 255], dtype=np.uint8), "f16": np.array([0.1], dtype=np.float16)},
}


@pytest.mark.parametrize("case", list(TENSORS))
def test_inputs_serialise_exactly_as_tritonclient_does(case):
    tensors = TENSORS[case]
    assert request_bytes(_inputs(tensors)) == request_bytes(reference_inputs(tensors))


def test_bytes_elements_are_length_prefixed_like_serialize_byte_tensor():
    array = np.array(["x", b"\xff\xfe", "日本", 12.5], dtype=np.object_)
    (raw,) = _inputs({"s": array})
    assert raw._get_content() == serialize_byte_tensor(array).item()


def test_other_arrays_still_go_through_tritonclient_and_its_errors():
    (inp,) = _inputs({"s": np.array([b"ab", b"c"])})  # numpy bytes_ dtype: tritonclient's own path
    assert isinstance(inp, grpcclient.InferInput)
    assert request_bytes([inp]) == request_bytes(reference_inputs({"s": np.array([b"ab", b"c"])}))
    with pytest.raises(TypeError, match="input 'x' has dtype float128, which Triton has no type for"):
        _inputs({"x": np.array([1.5], dtype=np.longdouble)})  # never sent (its 16-byte elements would be)
    with pytest.raises(TypeError, match="input 's' must be a numpy array, got list"):
        _inputs({"s": [1, 2]})


def result_of(outputs: dict[str, bytes]):
    response = service_pb2.ModelInferResponse(model_name="recommend")
    for name, raw in outputs.items():
        response.outputs.add(name=name, datatype="BYTES", shape=[1])
        response.raw_output_contents.append(raw)
    return grpcclient.InferResult(response)


ANSWER_JSON = json.dumps({"route": "known_user", "item_ids": ["1", "é"], "scores": [0.5, None],
                          "reasons": ["ranked", "boosted"], "groups": ["history", "content"], "titles": ["A", "B"],
                          "ranker": "ranker", "request_id": "rid"}).encode()


def test_answer_read_from_raw_bytes_equals_the_numpy_path():
    framed = len(ANSWER_JSON).to_bytes(4, "little") + ANSWER_JSON
    result = result_of({ANSWER: framed})
    assert _answer_text(result) == ANSWER_JSON
    fast = decode_answer("u", _answer_text(result))
    slow = decode_response("u", {ANSWER: result.as_numpy(ANSWER)})
    assert fast.item_ids == slow.item_ids == ["1", "é"] and fast.reasons == slow.reasons
    assert fast.scores[0] == 0.5 and np.isnan(fast.scores[1]) and np.isnan(slow.scores[1])
    assert (fast.route, fast.ranker, fast.request_id, fast.titles) == (slow.route, slow.ranker, slow.request_id,
                                                                       slow.titles)


@pytest.mark.parametrize("outputs", [{}, {"other": b"\x01\x00\x00\x00x"}, {ANSWER: b"\x09\x00\x00\x00short"},
                                     {ANSWER: b"\x01"}])
def test_answer_not_in_one_framed_string_falls_back_to_none(outputs):
    assert _answer_text(result_of(outputs)) is None
