"""Python-backend model that runs ``model.onnx`` through onnxruntime (the ``wheel`` flavour).

The nvidia-pytriton wheel's server has no native onnxruntime backend, so each exported ONNX
model's committed ``1/model.py`` re-exports :class:`TritonPythonModel` from here. Input and
output names come from the generated ``config.pbtxt`` (itself generated from the export table,
see :mod:`export.spec`), so this file knows nothing about any particular model. Requests that the
dynamic batcher hands over together are concatenated into one onnxruntime run.

Only importable inside the Triton python stub (it needs ``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from inference.providers import open_session


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    """onnxruntime session over ``<version>/model.onnx``; batches all pending requests at once."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing; run `python -m export --run-dir <run>` to write it")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_parameter(config, "ORT_THREADS", "1"))
        opts.inter_op_num_threads = 1
        self.session = open_session(path, opts, gpu=False)  # logs the providers it got

    def execute(self, requests: list) -> list:
        """One onnxruntime run over the rows of every request, split back per request."""
        try:
            parts = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                     for name, _ in self.inputs}
            sizes = [len(a) for a in parts[self.inputs[0][0]]]
            feed = {name: np.concatenate(parts[name]).astype(dtype, copy=False) for name, dtype in self.inputs}
            outs = self.session.run(self.outputs, feed)
        except Exception as err:  # noqa: BLE001 - every request must get an answer
            error = pb_utils.TritonError(f"{self.name}: {type(err).__name__}: {err}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        bounds = np.cumsum([0] + sizes)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(out[a:b]))
                                            for name, out in zip(self.outputs, outs)])
                for a, b in zip(bounds[:-1], bounds[1:])]
