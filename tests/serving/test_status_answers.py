"""serving.status_answers.answer_each: one response per request, a bad one INVALID_ARGUMENT, a failure
INTERNAL with its traceback in the server's log (a fake pb_utils: the real one exists inside a stub)."""

import types

import numpy as np

from serving.status_answers import answer_each


def fake_pb_utils():
    logged = []

    class TritonError:
        INVALID_ARG = "INVALID_ARG"

        def __init__(self, message, code="INTERNAL"):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.outputs, self.error = output_tensors, error

    pb = types.SimpleNamespace(TritonError=TritonError, InferenceResponse=InferenceResponse,
                               Tensor=lambda name, array: (name, array),
                               Logger=types.SimpleNamespace(log_error=logged.append))
    return pb, logged


def test_each_request_gets_its_own_outcome_and_a_failure_its_traceback_in_the_log():
    pb, logged = fake_pb_utils()
    failed = []

    def answer(request):
        if request == "bad":
            raise ValueError("id is empty")
        if request == "broken":
            return {}["missing"]  # a bug of ours
        return np.array([b"ok"], dtype=object)

    out = answer_each(pb, ["good", "bad", "broken"], answer, "catalog", failed=failed.append)
    assert out[0].error is None and out[0].outputs[0][0] == "status"
    assert (out[1].error.code, out[1].error.message) == ("INVALID_ARG", "catalog: id is empty")
    assert out[2].error.code == "INTERNAL" and out[2].error.message == "internal error: KeyError: 'missing'"
    assert failed == ["invalid_argument", "internal"]
    assert len(logged) == 1 and logged[0].startswith("catalog failed: KeyError: 'missing'\nTraceback")
    assert 'return {}["missing"]' in logged[0]  # the line that failed, for whoever is on call
