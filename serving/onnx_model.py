"""Python-backend model that runs ``model.onnx`` through onnxruntime (the ``wheel`` flavour).

The nvidia-pytriton wheel's server has no native onnxruntime backend, so each exported ONNX
model's committed ``1/model.py`` re-exports :class:`TritonPythonModel` from here. Input and
output names come from the generated ``config.pbtxt`` (itself generated from the export table,
see :mod:`export.spec`), so this file knows nothing about any particular model.

Every request of a dynamic batch is checked on its own (:class:`inference.input_checks.InputChecker`:
ids in their vocabulary, floats finite) and a bad one gets INVALID_ARGUMENT naming the input; the
good ones are concatenated into one onnxruntime run. Each error response gets its own
``TritonError`` object (one object shared by the responses of a batch crashed the 2.51 server).
If the batched run fails, the requests are retried one by one, so one request that breaks the
session never fails its neighbours. At load the model's files are checked against the
repository's ``checksums.json`` (:mod:`inference.integrity`).

Metric: ``recsys_model_rejections_total{model, reason}`` (id_out_of_range, non_finite,
missing_input, internal); Triton's own per-model counters count these responses as successes.

Only importable inside the Triton python stub (it needs ``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from inference.input_checks import InputChecker
from inference.providers import open_session
from inference.integrity import verify_files

REASONS = ("id_out_of_range", "non_finite", "missing_input", "internal")


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _error(message: str, code=None):
    """A fresh response and a fresh TritonError for exactly one request."""
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


class TritonPythonModel:
    """onnxruntime session over ``<version>/model.onnx``; batches the valid pending requests at once."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        model_dir = Path(args["model_repository"])
        verify_files(model_dir.parent, [f"{model_dir.name}/"])
        version = model_dir / args["model_version"]
        self.checker = InputChecker.load(version, self.inputs)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_parameter(config, "ORT_THREADS", "1"))
        opts.inter_op_num_threads = 1
        self.session = open_session(version / "model.onnx", opts, gpu=False)  # logs the providers it got
        self.family = pb_utils.MetricFamily("recsys_model_rejections_total",
                                            "Requests an ONNX model answered with an error, by reason",
                                            pb_utils.MetricFamily.COUNTER)
        self.rejections = {r: self.family.Metric(labels={"model": self.name, "reason": r}) for r in REASONS}

    def _arrays(self, request) -> dict[str, np.ndarray]:
        tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name, _ in self.inputs}
        return {name: t.as_numpy() for name, t in tensors.items() if t is not None}

    def _run(self, parts: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """One session run over the rows of several requests, outputs split back per request."""
        feed = {name: np.concatenate([p[name] for p in parts]).astype(dtype, copy=False) for name, dtype in self.inputs}
        outs = self.session.run(self.outputs, feed)
        bounds = np.cumsum([0] + [len(p[self.inputs[0][0]]) for p in parts])
        return [[np.ascontiguousarray(out[a:b]) for out in outs] for a, b in zip(bounds[:-1], bounds[1:])]

    def _respond(self, outs: list[np.ndarray]):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, o) for n, o in zip(self.outputs, outs)])

    def execute(self, requests: list) -> list:
        """Check each request, run the valid ones together, answer every request exactly once."""
        responses: list = [None] * len(requests)
        good: list[tuple[int, dict]] = []
        for i, request in enumerate(requests):
            arrays = self._arrays(request)
            problem = self.checker.problem(arrays)
            if problem is None:
                good.append((i, arrays))
                continue
            reason, message = problem
            self.rejections[reason].increment(1)
            responses[i] = _error(f"{self.name}: {message}", pb_utils.TritonError.INVALID_ARG)
        if not good:
            return responses
        try:
            for (i, _), outs in zip(good, self._run([a for _, a in good])):
                responses[i] = self._respond(outs)
        except Exception:  # noqa: BLE001 - retry alone below, so one request cannot fail its neighbours
            for i, arrays in good:
                try:
                    responses[i] = self._respond(self._run([arrays])[0])
                except Exception as err:  # noqa: BLE001 - every request must get an answer
                    self.rejections["internal"].increment(1)
                    pb_utils.Logger.log_error(f"{self.name} failed: {type(err).__name__}: {err}")
                    responses[i] = _error(f"{self.name}: {type(err).__name__}: {err}")
        return responses
