"""Python-backend runner of this model's ``model.onnx`` (the ``wheel`` flavour; see serving/onnx_model.py).

The ``stock`` flavour serves ``model.onnx`` with the native onnxruntime backend and ignores this file.
"""

from serving.onnx_model import TritonPythonModel  # noqa: F401
