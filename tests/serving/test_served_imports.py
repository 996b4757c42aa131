"""What the served models import: no torch (2 s of every stub start and reload), no exporter, no evaluator.

A Triton python stub imports its ``model.py`` on every (re)load, so each heavy import is paid again
in the outage window after a dead stub (docs/reliability.md). The check imports each served model
in a fresh interpreter with a stand-in for ``triton_python_backend_utils``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVED = ["triton_repo/recommend/1/model.py", "triton_repo/retrieval/1/model.py", "serving/onnx_model.py",
          "triton_repo/events/1/model.py", "triton_repo/catalog/1/model.py"]
FORBIDDEN = ("torch", "lightning", "hydra", "export", "evaluation", "stages", "train")


@pytest.mark.parametrize("model", SERVED)
def test_a_served_model_imports_no_torch_exporter_or_evaluator(model):
    code = (
        "import importlib.util, sys, types\n"
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
        f"spec = importlib.util.spec_from_file_location('served_model', {str(ROOT / model)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{model} imports {out.stdout.strip()}"
