"""Distillation loss on hand-made cases and the quality gate, both ways."""

import math

import pytest
import torch

from ranking.distill import DistillGateError, distillation_loss
from tests.conftest import TINY_DATA, compose_cfg
from train import train

V = torch.ones(1, 3, dtype=torch.bool)


def test_identical_lists_have_zero_loss():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    assert distillation_loss(s, s.clone(), V, None, 1.0, 1.0, 1.0, 0.0).item() < 1e-7
    # a constant shift of the whole list changes nothing (scores matter up to a per-list shift)
    assert distillation_loss(s + 5.0, s, V, None, 1.0, 1.0, 1.0, 0.0).item() < 1e-6


def test_score_matching_term_by_hand():
    # centred student [-1, 0, 1], centred teacher [1, 0, -1] -> squared errors 4, 0, 4 -> mean 8/3
    s, t = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    assert abs(distillation_loss(s, t, V, None, 1.0, 1.0, 0.0, 0.0).item() - 8 / 3) < 1e-6


def test_kl_term_by_hand():
    s, t = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[math.log(2.0), 0.0, 0.0]])
    p = torch.tensor([0.5, 0.25, 0.25])  # softmax of the teacher
    kl = float((p * torch.log(p / (1 / 3))).sum())
    assert abs(distillation_loss(s, t, V, None, 1.0, 0.0, 1.0, 0.0).item() - kl) < 1e-6
    # temperature T: KL of softened lists times T^2
    p2 = torch.softmax(t[0] / 2.0, 0)
    kl2 = float((p2 * torch.log(p2 / (1 / 3))).sum()) * 4.0
    assert abs(distillation_loss(s, t, V, None, 2.0, 0.0, 1.0, 0.0).item() - kl2) < 1e-6


def test_masked_slots_and_labels():
    s, t = torch.tensor([[0.0, 1.0, 9.0]]), torch.tensor([[0.0, 1.0, -9.0]])
    valid = torch.tensor([[True, True, False]])  # the disagreeing slot is padding
    assert distillation_loss(s, t, valid, None, 1.0, 1.0, 1.0, 0.0).item() < 1e-6
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    with_labels = distillation_loss(s, t, valid, labels, 1.0, 1.0, 1.0, 1.0).item()
    assert abs(with_labels + math.log(1 / (1 + math.e))) < 1e-5  # only the label term is left


def test_gate_fails_with_the_figures(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + ["stage=distill", "ranking.max_epochs=2", "distill.max_epochs=1",
                                             "distill.gate.min_retained=10.0"])
    with pytest.raises(DistillGateError, match=r"student keeps .* of the teacher's held-out NDCG@10, below distill.gate"):
        train(cfg)
    assert not (tmp_path / "run" / "artifacts" / "ranker_student.pt").exists()


def test_gate_passes_and_student_is_saved_and_reported(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + ["stage=distill", "ranking.max_epochs=2", "distill.max_epochs=2",
                                             "distill.gate.min_retained=0.0"])
    m = train(cfg)
    assert (tmp_path / "run" / "artifacts" / "ranker_student.pt").exists()
    for key in ("student/test/ndcg@10", "student/retained/ndcg@10", "student/cost/flops_500", "ranker/cost/params"):
        assert key in m, key
    assert m["student/cost/params"] < m["ranker/cost/params"]
    assert m["student/cost/flops_500"] < m["ranker/cost/flops_500"]


def test_gate_failure_inside_all_keeps_the_run_going(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + ["stage=all", "ranking.max_epochs=2", "distill.max_epochs=1",
                                             "distill.gate.min_retained=10.0"])
    m = train(cfg)
    assert "pipeline/test/ndcg@10" in m and "student/test/ndcg@10" not in m
    assert "Gate failed, no student was written" in (tmp_path / "run" / "report.md").read_text()
    assert not (tmp_path / "run" / "artifacts" / "ranker_student.pt").exists()
    assert not (tmp_path / "triton_repo" / "ranker_student").exists()
