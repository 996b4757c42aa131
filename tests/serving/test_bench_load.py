"""bench.load's diagnostics on a real tritonserver: the echo model of `--floor` and the ratios."""

import argparse
from pathlib import Path

import pytest

from bench.load import Phase, floor_phases, ratios

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]


def test_floor_serves_recommends_protocol_without_a_pipeline():
    args = argparse.Namespace(ready_timeout=120.0, warmup=3, seconds=10.0, timeout=10.0)
    requests = [{"user_id": f"u{i}", "k": 5 + i % 3, "timestamp": 1.7e9} for i in range(12)]
    answer, named = floor_phases(args, ROOT / "triton_repo", requests)  # the committed recommend config
    assert (answer.setting, named.setting) == ("floor: echo, answer", "floor: echo, 8 named outputs")
    for phase in (answer, named):  # every request answered with k items, in both output forms
        assert phase.failures == 0 and len(phase.latencies_ms) == len(requests), phase.errors


def test_ratios_report_the_floor_and_the_paced_pipeline():
    def row(setting, concurrency, p50, rps=100.0):
        p = Phase(setting, concurrency, latencies_ms=[p50] * 3, known=[True] * 3, wall_s=1.0)
        out = p.summary()
        out["rps"] = rps
        return out
    rows = [row("triton gRPC", 1, 10.0), row("floor: echo, answer", 1, 1.0), row("floor: echo, 8 named outputs", 1, 1.5),
            row("in-process onnxruntime", 1, 5.0), row("in-process onnxruntime, paced 2 ms", 1, 6.0)]
    r = ratios(rows)
    assert r["floor p50 (echo, answer) ms"] == 1.0 and r["floor p50 8 named outputs / answer"] == 1.5
    assert r["(Triton p50 - floor p50) / in-process ORT p50 (c=1)"] == pytest.approx(9.0 / 5.0)
    assert r["in-process ORT p50 paced / back to back"] == pytest.approx(1.2)
    assert r["Triton p50 / paced in-process ORT p50 (c=1)"] == pytest.approx(10.0 / 6.0)
