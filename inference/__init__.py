"""Bottom floor of everything that serves: tensor tables, ONNX/torch callables, inference modes, artifact integrity."""
