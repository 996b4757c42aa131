"""bench/gpu_check.py rehearsed on the CPU (tiny sizes, the same code path), so the device check
cannot rot between GPU lendings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import gpu_check
from bench.gpu_check import FULL, REHEARSAL, compose, main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rehearsal(tiny_student_run, tmp_path_factory) -> tuple[dict, int]:
    """Every part but pytest_gpu (its own test below) over the shared tiny run with a student."""
    run, repo = tiny_student_run
    out = tmp_path_factory.mktemp("gpu_check")
    parts = ",".join(p for p in gpu_check.PARTS if p != "pytest_gpu")
    rc = main(["--cpu-rehearsal", "--out", str(out), "--parts", parts, "--run-dir", str(run), "--repository", str(repo),
               "--work", str(tmp_path_factory.mktemp("gpu_check_work"))])
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json"]  # the device tool brings back 8 files
    return json.loads((out / "gpu_check.json").read_text()), rc


def test_rehearsal_runs_every_part(rehearsal, capsys):
    results, rc = rehearsal
    assert rc == 0, {k: v.get("status") for k, v in results.items() if isinstance(v, dict)}
    assert results["machine"]["mode"] == "cpu-rehearsal" and results["machine"]["device"] == "cpu"
    assert results["run"]["status"] == "ok"


def test_exact_retrieval_part_agrees_with_faiss(rehearsal):
    r = rehearsal[0]["exact_retrieval"]
    assert r["items"] == REHEARSAL.retrieval_items
    for name in ("torch_cpu", "faiss_flat_cpu"):
        for b in REHEARSAL.retrieval_repeats:
            assert r[f"{name}/batch{b}"]["queries_per_s"] > 0
    assert r["agreement_with_reference"]["torch_cpu"] > 0.999
    assert r["speedup_vs_faiss_flat_cpu@256"] > 0


def test_rankers_part_times_teacher_and_student(rehearsal):
    r = rehearsal[0]["rankers"]
    assert r["candidates"] == 500
    for name in ("ranker", "ranker_student"):
        assert r[name]["torch_cpu"]["median_ms"] > 0 and r[name]["ort_cpu_1thr"]["median_ms"] > 0
        assert r[name]["max_abs_diff_torch_vs_ort"] < 1e-3  # the exported model is the same function


def test_pipeline_part_answers_like_the_served_path(rehearsal):
    r = rehearsal[0]["pipeline"]
    assert r["requests"] == REHEARSAL.pipeline_requests
    assert r["onnx_cpu"]["p50_ms"] > 0 and r["torch_cpu"]["p50_ms"] > 0
    assert r["same_top10_as_onnx_cpu"]["torch_cpu"] == 1.0


def test_train_throughput_part_trains_both_paths(rehearsal):
    r = rehearsal[0]["train_throughput"]
    assert r["interactions"] == 6000 and r["train_examples"] > 0
    for key in ("lightning/batch128", "lightning_on_device/batch128", "device_batches/batch128"):
        assert r[key]["samples_per_s"] > 0 and r[key]["peak_gpu_mb"] is None  # CPU: no GPU memory
    assert np.isfinite([r["device_batches/batch128"]["first_loss"], r["device_batches/batch128"]["last_loss"]]).all()
    # the loss before its rework, on the same batches from the same start: the same first loss
    before, after = r["device_batches_reference_loss/batch128"], r["device_batches/batch128"]
    assert before["loss"] == "reference" and after["loss"] == "product"
    assert before["first_loss"] == pytest.approx(after["first_loss"], rel=1e-5)
    top = after["profile_top"]  # the profiled steps: what takes the time, largest first
    assert top and all(t["ms_per_step"] > 0 for t in top)
    assert [t["ms_per_step"] for t in top] == sorted((t["ms_per_step"] for t in top), reverse=True)


def test_pytest_gpu_part_reports_the_skips_on_a_cpu(tmp_path):
    rc = main(["--cpu-rehearsal", "--out", str(tmp_path / "out"), "--parts", "pytest_gpu", "--work", str(tmp_path / "w")])
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["pytest_gpu"]
    assert rc == 0 and r["status"] == "ok"
    assert r["tests"] == r["skipped"] >= 4 and r["passed"] == 0
    assert r["skip_reasons"] == ["needs a CUDA GPU (none visible)"]


def test_summary_table_lists_every_part(rehearsal):
    table = gpu_check.summary(rehearsal[0])
    for name in gpu_check.PARTS:
        assert f"| {name} |" in table
    assert "samples/s" in table and "q/s" in table


@pytest.mark.parametrize("sizes", [FULL, REHEARSAL], ids=["full", "rehearsal"])
def test_device_sizes_compose(sizes, tmp_path):
    """The overrides the device run uses are valid config keys (a typo would only show on the GPU)."""
    cfg = compose(sizes.run_overrides, tmp_path)
    assert cfg.index.backend == "torch" and cfg.stage == "distill" and cfg.distill.gate.min_retained == 0
    data = compose(["data=synthetic", "logger=none", *sizes.train_data], tmp_path)
    assert data.data.loader.n_items == (1_000_000 if sizes is FULL else 400)


@pytest.mark.parametrize("argv, message", [
    (["--out", "x", "--parts", "exact,pipeline"], "unknown part(s) ['exact']; known: exact_retrieval"),
    (["--out", "x"], "no CUDA device is visible; run with --cpu-rehearsal"),
    (["--cpu-rehearsal", "--out", "x", "--repository", "r"], "--repository needs --run-dir"),
])
def test_bad_arguments_name_the_fix(argv, message, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
