"""RunArtifacts (one owner of a run's files + manifest), PipelineSettings, and the Pipeline's arguments."""

import json
import shutil

import numpy as np
import pytest

from pipeline.artifacts import FILES, PIPELINE, RunArtifacts, load_pipeline
from pipeline.pipeline import STAGES, Request, RequestError
from pipeline.settings import PipelineSettings
from tests.conftest import compose_cfg


def test_manifest_says_what_each_artifact_saw(tiny_run):
    m = RunArtifacts(tiny_run).manifest()
    assert m["status"] == "complete" and m["schema_version"] == 1 and m["code_version"]
    assert m["config"]["stage"] == "ranking"
    for name in PIPELINE:
        assert name in m["artifacts"], name
    towers, store = m["artifacts"]["two_tower"]["saw"], m["artifacts"]["store"]["saw"]
    # the towers saw train only; the served store saw train+valid: more interactions, a later end
    assert 0 < towers["interactions"] < store["interactions"]
    assert towers["last_timestamp"] <= store["last_timestamp"]
    assert m["artifacts"]["ranker_features"]["ease_content_weight"] in (0.0, 1.0, 3.0)


def test_settings_roundtrip_and_validation(tmp_path):
    cfg = compose_cfg(tmp_path)
    from hydra.utils import instantiate

    s = instantiate(cfg.pipeline)
    assert isinstance(s, PipelineSettings) and s.category_feature == cfg.data.category_feature
    s.save(tmp_path / "p.json")
    assert PipelineSettings.load(tmp_path / "p.json") == s
    with pytest.raises(ValueError, match=r"pipeline.n_candidates=0 must be a positive integer"):
        PipelineSettings(**{**s.to_dict(), "n_candidates": 0})
    with pytest.raises(ValueError, match=r"pipeline.cooc_share=1.5 must be a number in \[0, 1\]"):
        PipelineSettings(**{**s.to_dict(), "cooc_share": 1.5})
    d = s.to_dict()
    d.pop("max_k")
    (tmp_path / "old.json").write_text(json.dumps({**d, "legacy": 1}))
    with pytest.raises(FileNotFoundError, match=r"lacks \['max_k'\] / has unknown \['legacy'\]"):
        PipelineSettings.load(tmp_path / "old.json")


def test_a_run_killed_mid_way_is_incomplete(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "artifacts", run / "artifacts")
    art = RunArtifacts(run)
    m = art.manifest()
    # as if the process died after writing ranker.pt but before recording it
    del m["artifacts"]["ranker"]
    m["status"] = "running"
    art.manifest_path.write_text(json.dumps(m))
    assert not art.has("ranker") and art.path("ranker").exists()
    with pytest.raises(FileNotFoundError, match=r"lacks \['ranker.pt'\] \(the run did not finish.*stage=ranking\)"):
        load_pipeline(run)
    m["artifacts"].pop("interactions", None)  # what recsys-refresh needs: written by stage=deploy (a newcomer
    art.manifest_path.write_text(json.dumps(m))  # was told stage=ranking after running exactly that)
    with pytest.raises(FileNotFoundError, match=r"lacks \['interactions.parquet'\].*stage=all or stage=deploy\)"):
        art.check(("store", "interactions"))
    (run / "artifacts" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        load_pipeline(run)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    with pytest.raises(KeyError, match="unknown artifact 'towers'"):
        art.path("towers")
    assert set(PIPELINE) <= set(FILES)


def test_recommend_takes_the_ranker_and_stage_timing_as_arguments(tiny_run):
    pipe = load_pipeline(tiny_run).variant(exposure=None)  # no exposure state: answers are repeatable
    user = RunArtifacts(tiny_run).user_ids()[0]
    seen: list[tuple[str, float]] = []
    rec = pipe.recommend([Request(user, 5, 1_700_000_000)], on_stage=lambda s, t: seen.append((s, t)))[0]
    assert [s for s, _ in seen] == list(STAGES) and all(t >= 0 for _, t in seen)
    assert len(rec.item_ids) == 5
    with pytest.raises(RequestError, match="ranker='nope' is not served; known: ranker"):
        pipe.recommend([Request(user, 5)], ranker="nope")
    # another ranker for one call leaves the pipeline as it was
    flipped = {"flip": lambda x: tuple(-np.asarray(a) if i == 0 else a for i, a in enumerate(pipe.ranker()(x)))}
    other = pipe.variant(rankers={**pipe.rankers, **flipped})
    assert other.recommend([Request(user, 5, 1_700_000_000)], ranker="flip")[0].item_ids != rec.item_ids
    assert pipe.recommend([Request(user, 5, 1_700_000_000)])[0].item_ids == rec.item_ids
    assert set(pipe.rankers) == {"ranker"} and pipe.default_ranker == "ranker"
    with pytest.raises(TypeError, match="unknown pipeline part"):
        pipe.variant(ranker=None)


def test_an_unrecorded_answer_leaves_the_exposure_window_as_it_was(tiny_run):
    """record=False (the supervisor's liveness probe): the same answer, nothing added to the exposure-cap
    window; a recorded answer adds its items."""
    pipe = load_pipeline(tiny_run)
    assert pipe.exposure is not None  # the default rules cap exposure
    before = pipe.exposure.counts.copy()
    probe = pipe.recommend([Request("__liveness_probe__", 5, 1_700_000_000)], record=False)[0]
    assert len(probe.item_ids) == 5 and (pipe.exposure.counts == before).all()
    shown = pipe.recommend([Request("__liveness_probe__", 5, 1_700_000_000)])[0]
    assert shown.item_ids == probe.item_ids and pipe.exposure.counts.sum() == before.sum() + 5


def test_a_promoted_item_outside_the_candidates_is_scored_and_lifted(tiny_run):
    """A promoted item (the request's, or the boost rule's ids) that retrieval did not bring is added
    to the candidates, so the ranker scores it and the boost can lift it; one the user has seen is
    not; without a boost rule promoted items change nothing. (Before, the boost lifted candidates
    only: a promoted item outside them never appeared, whatever the boost.)"""
    from ranking.rule_config import RuleSet

    pipe = load_pipeline(tiny_run)
    lift = [{"name": "exclude_seen"}, {"name": "boost", "ids": [], "amount": 100.0, "max_boost": 100.0}]
    lifted = pipe.variant(rules=RuleSet.from_config({"k": 10, "rules": lift}, where="test"))
    u = 3
    user, t = str(pipe.store.users.ids[u]), int(pipe.store.last_ts.max()) + 60
    candidates = set(pipe.rank(np.array([u]), np.array([t]))[0][0].tolist())
    seen = set(pipe.store.seen_items(u).tolist())
    outside = [i for i in range(len(pipe.store.items)) if i not in candidates and i not in seen]
    far, far_seen = str(pipe.store.items.ids[outside[-1]]), str(pipe.store.items.ids[sorted(seen)[0]])
    answer = lifted.recommend([Request(user, 10, t, promoted=[far, far_seen])])[0]
    assert answer.item_ids[0] == far and answer.reasons[0] == "boosted" and far_seen not in answer.item_ids
    plain = lifted.recommend([Request(user, 10, t)])[0]
    assert far not in plain.item_ids and answer.item_ids[1:] == plain.item_ids[:9]  # the rest as before
    # the rule's own ids: added for every request, offline ranking included
    configured = [{"name": "exclude_seen"}, {"name": "boost", "ids": [far], "amount": 100.0, "max_boost": 100.0}]
    campaign = pipe.variant(rules=RuleSet.from_config({"k": 10, "rules": configured}, where="test"))
    items = campaign.rank(np.array([u]), np.array([t]))[0][0]
    assert outside[-1] in items.tolist() and (items >= 0).sum() == (pipe.rank(np.array([u]), np.array([t]))[0][0] >= 0).sum()
    assert campaign.recommend([Request(user, 10, t)])[0].item_ids[0] == far
    # no boost rule: a promoted item is not added
    bare = pipe.variant(rules=RuleSet.from_config({"k": 10, "rules": [{"name": "exclude_seen"}]}, where="test"))
    assert bare.promoted_rows(np.array([u]), requests=[Request(user, 10, t, promoted=[far])]) is None
    assert far not in bare.recommend([Request(user, 10, t, promoted=[far])])[0].item_ids


def test_promoted_items_take_the_towers_weakest_slots_and_only_when_the_filters_admit_them(tiny_run):
    """Found in review: promoted items replaced the co-occurrence candidates (the row's tail), an item
    the request excludes still joined the list (and moved every other score: the ranker's list
    statistics), a configured id twice took two slots, and configured ids crowded out the request's own."""
    from ranking.rule_config import RuleSet

    pipe = load_pipeline(tiny_run)
    n = pipe.settings.n_candidates
    u, t = 3, int(pipe.store.last_ts.max()) + 60
    user, users, ts = str(pipe.store.users.ids[u]), np.array([u]), np.array([t])
    base = pipe.rank(users, ts)[0][0]
    seen = set(pipe.store.seen_items(u).tolist())
    outside = [i for i in range(len(pipe.store.items)) if i not in set(base.tolist()) and i not in seen]
    ids = [str(pipe.store.items.ids[i]) for i in outside]
    cooc = pipe.features.history_top(pipe.features.history_rows(users), int(n * pipe.settings.cooc_share))[0]
    many = outside[: n // 4]
    items = pipe._rank(users, ts, None, None, None, None, True, promoted=[np.array(many)])[0][0]
    assert set(many) <= set(items.tolist()) and set(cooc[cooc >= 0].tolist()) <= set(items.tolist())
    assert (items >= 0).sum() == (base >= 0).sum()
    # an excluded (or blocked, or seen) promoted item does not join: the answer is the plain one, scores too
    plain = pipe.recommend([Request(user, 10, t)])[0]
    excluded = pipe.recommend([Request(user, 10, t, promoted=[ids[0]], exclude_items=[ids[0]])])[0]
    assert (excluded.item_ids, excluded.scores) == (plain.item_ids, plain.scores)
    # each once, the request's own first, then the configured ones
    assert len(ids) > n // 2 + 10
    rules = [{"name": "exclude_seen"}, {"name": "boost", "ids": [ids[5], ids[5]] + ids[6: 6 + n // 2], "amount": 1.0,
                                                          "max_boost": 1.0}]
    campaign = pipe.variant(rules=RuleSet.from_config({"k": 10, "rules": rules}, where="test"))
    rows = campaign.promoted_rows(users, None, ts, [Request(user, 10, t, promoted=[ids[-1]])])[0]
    assert rows[0] == outside[-1] and (rows == outside[5]).sum() == 1 and len(rows) == n // 2 + 2
    items = campaign._rank(users, ts, None, None, None, None, True, promoted=[rows])[0][0]
    assert outside[-1] in items.tolist()  # not crowded out by the configured ones
