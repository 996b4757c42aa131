"""int8 dynamic quantization of the exported rankers: files, agreement with fp32 on real lists, gates."""

import json

import numpy as np
import onnx
import pytest
from omegaconf import OmegaConf

from export.config import DEFAULTS
from inference.models import onnx_session, run_onnx
from export.quantize import int8_name, top_k_agreement
from inference.spec import load_specs
from pipeline.artifacts import RunArtifacts
from export.repository import check_default_ranker, export_if_needed, ranker_lists, run_export
from tests.conftest import TINY_DATA, compose_cfg

# fp32 vs int8 on real candidate lists: a score moves by at most this share of the largest |score|,
# and the int8 ranker keeps at least this share of the fp32 top-10.
SCORE_TOLERANCE = 0.05
MIN_TOP10_OVERLAP = 0.8


def export_cfg(tmp_path_factory, repo, *overrides):
    cfg = compose_cfg(tmp_path_factory.mktemp("cfg"), TINY_DATA + list(overrides))
    if cfg.get("export") is None:
        cfg.export = OmegaConf.load(DEFAULTS)
    cfg.export.repository = str(repo)
    return cfg


@pytest.fixture(scope="module")
def repo(tiny_run, tmp_path_factory):
    """The tiny run exported once (the same path test_export.py and test_serving.py use)."""
    return export_if_needed(export_cfg(tmp_path_factory, tiny_run.parent / "triton_repo"), tiny_run)


def test_top_k_agreement_by_hand():
    ref = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    valid = np.ones_like(ref, dtype=bool)
    assert top_k_agreement(ref, ref + 7.0, valid, 3) == (1.0, 1.0)  # a shift changes nothing
    swapped = np.array([[4.0, 5.0, 3.0, 2.0, 1.0]])
    assert top_k_agreement(ref, swapped, valid, 3) == (1.0, 0.0)  # same set, other order
    assert top_k_agreement(ref, -ref, valid, 2) == (0.0, 0.0)
    # padding never counts, even with the best score
    padded = np.array([[5.0, 4.0, 3.0, 2.0, 99.0]])
    mask = np.array([[True, True, True, True, False]])
    assert top_k_agreement(ref, padded, mask, 3) == (1.0, 1.0)


def test_int8_ranker_is_written_next_to_the_fp32_one(repo):
    fp32, int8 = repo / "ranker" / "1" / "model.onnx", repo / "ranker_int8" / "1" / "model.onnx"
    assert int8.exists() and (repo / "ranker_int8" / "config.pbtxt").exists()
    assert 'name: "ranker_int8"' in (repo / "ranker_int8" / "config.pbtxt").read_text()
    manifest = json.loads((repo / "export.json").read_text())
    assert manifest["rankers"] == ["ranker", "ranker_int8"] and manifest["ranker"] == "ranker"
    quality = manifest["int8"]["ranker_int8"]
    assert quality["bytes_int8"] == int8.stat().st_size < fp32.stat().st_size == quality["bytes_fp32"]
    assert quality["top10_overlap"] >= MIN_TOP10_OVERLAP and quality["lists"] > 0
    specs = load_specs(repo / "recommend/1/specs.json")
    assert specs["ranker_int8"].inputs == specs["ranker"].inputs
    assert json.loads((repo / "recommend/1/rankers.json").read_text()) == {
        "default": "ranker", "rankers": ["ranker", "ranker_int8"], "inference": "in_process"}


def test_int8_scores_agree_with_fp32_on_real_lists(repo, tiny_run):
    spec = load_specs(repo / "recommend/1/specs.json")["ranker"]
    x, valid = ranker_lists(RunArtifacts(tiny_run), 20)
    ref = run_onnx(onnx_session(repo / "ranker" / "1" / "model.onnx"), spec, x)[0].reshape(valid.shape)
    got = run_onnx(onnx_session(repo / "ranker_int8" / "1" / "model.onnx"), spec, x)[0].reshape(valid.shape)
    diff = np.abs(ref - got)[valid]
    assert diff.max() <= SCORE_TOLERANCE * np.abs(ref[valid]).max(), (diff.max(), np.abs(ref[valid]).max())
    # it really is another model: int8 operators (its scores may still equal fp32 ones exactly when
    # the tiny run serves the prior alone, i.e. the quantized residual is weighted 0)
    ops = {n.op_type for n in onnx.load(repo / "ranker_int8" / "1" / "model.onnx").graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul"}, ops
    overlap, _ = top_k_agreement(ref, got, valid, 10)
    assert overlap >= MIN_TOP10_OVERLAP


def test_unknown_default_ranker_names_the_known_ones():
    with pytest.raises(ValueError, match=r"export.ranker='ranker_student' is not exported by this run; known: "
                                         r"ranker, ranker_int8"):
        check_default_ranker("ranker_student", ["ranker", "ranker_int8"])


def test_export_refuses_a_student_default_without_a_student(tiny_run, tmp_path_factory, tmp_path):
    cfg = export_cfg(tmp_path_factory, tmp_path / "repo", "export.ranker=ranker_student")
    with pytest.raises(ValueError, match="known: ranker, ranker_int8"):
        run_export(cfg, tiny_run)
    assert not (tmp_path / "repo" / "export.json").exists()


def test_int8_gate_fails_the_export(tiny_run, tmp_path_factory, tmp_path):
    cfg = export_cfg(tmp_path_factory, tmp_path / "repo", "export.int8.min_top10_overlap=1.01")
    with pytest.raises(AssertionError, match=r"ranker_int8 keeps .* of ranker's top-10 on real lists"):
        run_export(cfg, tiny_run)
    assert not (tmp_path / "repo" / "export.json").exists()


def test_int8_can_be_turned_off(tiny_run, tmp_path_factory, tmp_path):
    cfg = export_cfg(tmp_path_factory, tmp_path / "repo", "export.int8.enabled=false")
    repo = run_export(cfg, tiny_run)
    assert not (repo / int8_name("ranker")).exists()
    assert json.loads((repo / "recommend/1/rankers.json").read_text())["rankers"] == ["ranker"]
