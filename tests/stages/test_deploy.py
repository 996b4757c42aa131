"""stages/deploy.py with ``deploy.retrain_towers``: the towers trained again on train+valid, the ranker on
the test window's lists from them, the student distilled again, and the served index theirs."""

import numpy as np
import pytest

from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.pipeline import Request
from retrieval.towers import item_embeddings
from tests.conftest import TINY_DATA, compose_cfg


@pytest.mark.slow
def test_deploy_retrains_the_towers_the_ranker_and_the_student_and_serves_them(tmp_path, tiny_prepared):
    from train import train

    train(compose_cfg(tmp_path, TINY_DATA + [
        "stage=all", "ranking.max_epochs=2", "eval.cold_users=20", "distill.max_epochs=2",
        "distill.gate.min_retained=0.0", "deploy.retrain_towers=true", "export.int8.enabled=false",
        f"export.repository={tmp_path / 'repo'}"]))
    art = RunArtifacts(tmp_path / "run")
    m = art.manifest()["artifacts"]
    split = tiny_prepared.split
    # what each model saw: the towers train+valid, the ranker and student the test window; the state all
    assert m["two_tower"]["saw"]["interactions"] == len(split.train) + len(split.valid)
    assert m["item_embeddings"]["saw"] == m["index"]["saw"] == m["two_tower"]["saw"]
    assert m["ranker"]["saw"]["interactions"] == m["ranker_student"]["saw"]["interactions"] == len(split.test)
    assert m["store"]["saw"]["interactions"] == len(split.train) + len(split.valid) + len(split.test)
    for name in ("two_tower", "item_embeddings", "index", "ranker", "ranker_student"):
        assert m[name]["retrained_at_deploy"] is True
    # the served embeddings and index are the saved towers' (not the train-only towers')
    pipe = load_pipeline(tmp_path / "run")
    towers = art.load_towers(pipe.store)
    emb = item_embeddings(towers, tiny_prepared.item_table)
    np.testing.assert_allclose(pipe.retriever.item_embeddings, emb, atol=1e-5)
    np.testing.assert_allclose(pipe.features.item_embeddings, emb, atol=1e-5)
    _, top = pipe.retriever.search(emb[:5], 1)
    assert top[:, 0].tolist() == list(range(5))
    u, t = str(pipe.store.users.ids[0]), int(pipe.store.last_ts.max()) + 60
    assert set(pipe.rankers) == {"ranker", "ranker_student"}
    for ranker in pipe.rankers:  # both load with the new towers' dimension and answer
        assert len(pipe.recommend([Request(u, 10, t)], ranker=ranker)[0].item_ids) == 10
    assert "Deployed models" in (tmp_path / "run" / "report.md").read_text()
    # the exported repository carries the new towers and the student
    assert (tmp_path / "repo" / "ranker_student" / "1").is_dir()
    # a student that failed its gate after the retrain is taken out of the run (never served on new towers)
    art.forget("ranker_student")
    assert not art.has("ranker_student") and "ranker_student" not in art.manifest()["artifacts"]
    assert not art.path("ranker_student").exists()


@pytest.mark.slow
def test_a_student_failing_its_gate_after_the_retrain_is_not_served(tmp_path, monkeypatch):
    """The student distilled for the new towers fails its gate: the run and its export have no student
    (the old one was distilled for the old towers), the rest is served as usual."""
    import stages.deploy
    from ranking.distill import DistillGateError
    from train import train

    def gate_fails(*args, **kwargs):
        raise DistillGateError("retained 50% < 97%")

    monkeypatch.setattr(stages.deploy, "distill_student", gate_fails)
    train(compose_cfg(tmp_path, TINY_DATA + [
        "stage=all", "ranking.max_epochs=2", "eval.cold_users=20", "distill.max_epochs=2",
        "distill.gate.min_retained=0.0", "deploy.retrain_towers=true", "export.int8.enabled=false",
        f"export.repository={tmp_path / 'repo'}"]))
    art = RunArtifacts(tmp_path / "run")
    assert not art.has("ranker_student") and art.manifest()["artifacts"]["ranker"]["retrained_at_deploy"] is True
    assert not (tmp_path / "repo" / "ranker_student").exists()
    assert "failed its gate, none served" in (tmp_path / "run" / "report.md").read_text()
    assert list(load_pipeline(tmp_path / "run").rankers) == ["ranker"]
