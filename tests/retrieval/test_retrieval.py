"""Two-tower retrieval: towers, histories, feature store, retriever, the stage end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from features.store import FeatureStore
from retrieval.data import Histories, TrainExamples
from retrieval.index import IndexConfig, build_index
from retrieval.retriever import Retriever
from retrieval.towers import build_two_tower
from train import train

MODEL = dict(emb_dim=8, hidden=[16], out_dim=8, dropout=0.0, item_id_dropout=0.5, user_id_dropout=0.5, history_dropout=0.0)


def test_tower_shapes_and_unit_norm(tiny_prepared):
    d = tiny_prepared
    model = build_two_tower(d.features, d.n_items, **MODEL).eval()
    store = FeatureStore.build(d, d.split.train, history_len=5)
    users = np.array([0, 1, 2])
    u = model.user_tower({k: torch.as_tensor(v) for k, v in store.user_inputs(users, np.array([0, 3600, 7200])).items()})
    i = model.item_tower({k: torch.as_tensor(v[:4]) for k, v in d.item_table.items()})
    assert u.shape == (3, 8) and i.shape == (4, 8)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(i.norm(dim=-1), torch.ones(4))
    # A cold item (id code 0) still gets a finite, content-dependent embedding.
    cold = {k: torch.as_tensor(v[:4].copy()) for k, v in d.item_table.items()}
    cold["item_id"][:] = 0
    e = model.item_tower(cold)
    assert torch.isfinite(e).all() and not torch.allclose(e[0], e[1])


def test_id_dropout_only_in_training(tiny_prepared):
    d = tiny_prepared
    model = build_two_tower(d.features, d.n_items, **{**MODEL, "item_id_dropout": 1.0})
    x = {k: torch.as_tensor(v[:4]) for k, v in d.item_table.items()}
    no_id = {**x, "item_id": torch.zeros_like(x["item_id"])}
    model.train()
    torch.testing.assert_close(model.item_tower(x), model.eval().item_tower(no_id))
    assert not torch.allclose(model.eval().item_tower(x), model.item_tower(no_id))


def _toy_histories(tiny_prepared):
    d = tiny_prepared
    items = d.items.ids[:5]
    frame = pd.DataFrame({"user_id": [d.users.ids[0]] * 5, "item_id": items, "timestamp": [50, 10, 40, 20, 30]})
    return d, Histories.build(d, frame), items


def test_histories_are_time_ordered_and_examples_exclude_the_target(tiny_prepared):
    d, h, items = _toy_histories(tiny_prepared)
    order = d.items.lookup(items[[1, 3, 4, 2, 0]])  # by timestamp 10, 20, 30, 40, 50
    np.testing.assert_array_equal(h.items[h.offsets[0]:h.offsets[1]], order)
    codes = d.item_table["item_id"][order]
    causal = TrainExamples(d, h, history_len=3, history_mode="causal")
    batch = causal.collate([h.offsets[0] + 3])  # target = 4th item in time
    assert batch["item_index"].tolist() == [order[3]]
    assert batch["user"]["history"].tolist() == [codes[:3].tolist()]
    bag = TrainExamples(d, h, history_len=3, history_mode="bag")
    batch = bag.collate([h.offsets[0] + 3])
    # the last three items minus the target itself
    assert batch["user"]["history"].tolist() == [[codes[2], 0, codes[4]]]
    with pytest.raises(ValueError, match="unknown retrieval.history_mode 'next'"):
        TrainExamples(d, h, 3, "next")


def test_store_unknown_user_and_round_trip(tiny_prepared, tmp_path):
    d = tiny_prepared
    store = FeatureStore.build(d, d.split.train, history_len=4)
    recent = np.array([[-1, -1, 3, 5], [-1, -1, -1, -1]])
    x = store.user_inputs(np.array([-1, 0]), np.array([0, 0]), recent=recent)
    assert x["user_id"][0] == 0  # unknown user -> out-of-vocabulary id
    assert x["history"][0].tolist()[-2:] == store.item_codes(np.array([3, 5])).tolist()
    np.testing.assert_array_equal(x["history"][1], store.item_codes(store.recent[0]))  # all -1 keeps stored
    store.save(tmp_path / "store")
    back = FeatureStore.load(tmp_path / "store")
    y = back.user_inputs(np.array([-1, 0]), np.array([0, 0]), recent=recent)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.load(tmp_path / "nothing")


def test_retriever_never_returns_seen_items(tiny_prepared):
    d = tiny_prepared
    model = build_two_tower(d.features, d.n_items, **MODEL).eval()
    store = FeatureStore.build(d, d.split.train, history_len=5)
    emb = np.random.default_rng(0).standard_normal((d.n_items, 8)).astype(np.float32)
    r = Retriever(model.user_tower, build_index(emb, IndexConfig()), store, emb)
    users = np.arange(20)
    scores, items, _ = r.retrieve(users, np.zeros(20, dtype=np.int64), k=30)
    for row, u in enumerate(users):
        seen = set(store.seen[u].indices)
        assert not seen & set(items[row][items[row] >= 0])
        assert np.all(np.diff(scores[row][np.isfinite(scores[row])]) <= 1e-6)


def test_retrieval_stage_end_to_end_with_cold_items(tmp_path):
    from tests.conftest import TINY_DATA, compose_cfg

    cfg = compose_cfg(tmp_path, TINY_DATA + ["stage=retrieval", "split.cold_item_share=0.1", "trainer.max_epochs=3"])
    m = train(cfg)
    for key in ("two_tower/test/recall@50", "two_tower/test/ndcg@10", "two_tower/valid/recall@10",
                "two_tower/train/samples_per_second", "two_tower/test_cold_items/recall@50",
                "random/test_cold_items/recall@50"):
        assert key in m, key
    assert 0 < m["two_tower/test/recall@50"] <= 1
    # Content alone places held-out items far better than chance.
    assert m["two_tower/test_cold_items/recall@50"] > 2 * m["random/test_cold_items/recall@50"]
    art = tmp_path / "run" / "artifacts"
    for f in ("two_tower.pt", "item_embeddings.npy", "items.faiss", "items.faiss.json", "store/tables.npz"):
        assert (art / f).exists(), f
    assert "Cold items" in (tmp_path / "run" / "report.md").read_text()


def test_resume_from_checkpoint(tmp_path):
    from tests.conftest import TINY_DATA, compose_cfg

    cfg = compose_cfg(tmp_path / "a", TINY_DATA + ["stage=retrieval", "trainer.max_epochs=1", "retrieval.refit.mode=none"])
    train(cfg)
    last = tmp_path / "a" / "run" / "checkpoints" / "retrieval" / "last.ckpt"
    assert last.exists()
    assert torch.load(last, weights_only=False)["epoch"] == 0
    cfg2 = compose_cfg(tmp_path / "b", TINY_DATA + ["stage=retrieval", "trainer.max_epochs=2", "retrieval.refit.mode=none",
                                                    f"retrieval.resume_from={last}"])
    m = train(cfg2)
    resumed = torch.load(tmp_path / "b" / "run" / "checkpoints" / "retrieval" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1  # continued from epoch 0 instead of starting over
    assert m["two_tower/train/epochs"] == 2
    # throughput counts the one epoch this process trained, not the checkpoint's epoch too
    trained = json.loads((tmp_path / "b" / "run" / "artifacts" / "manifest.json").read_text())
    interactions = trained["artifacts"]["two_tower"]["saw"]["interactions"]
    samples = m["two_tower/train/samples_per_second"] * m["two_tower/train/fit_seconds"]
    assert abs(samples / interactions - 1.0) < 0.01, samples / interactions


def test_unknown_refit_mode_stops_before_training(tmp_path):
    from features.prepare import prepare
    from stages.retrieval import run_retrieval
    from tests.conftest import TINY_DATA, compose_cfg

    cfg = compose_cfg(tmp_path, TINY_DATA + ["stage=retrieval", "retrieval.refit.mode=warm"])
    with pytest.raises(ValueError, match="retrieval.refit.mode='warm'; use none or scratch"):
        run_retrieval(prepare(cfg), cfg, tmp_path, [], False)
    assert not (tmp_path / "checkpoints").exists()


def test_validation_scores_in_chunks_like_all_at_once(tiny_prepared, monkeypatch):
    """Validation bounds its dense score matrix (1M-item catalogs); chunking changes nothing."""
    import retrieval.module as M
    from retrieval.data import item_inputs

    d = tiny_prepared
    model = build_two_tower(d.features, d.n_items, **MODEL).eval()
    store = FeatureStore.build(d, d.split.train, history_len=5)
    users = np.flatnonzero(np.diff(d.valid.indptr) > 0)[:40]
    make = lambda u: {k: torch.as_tensor(v) for k, v in store.user_inputs(u, np.full(len(u), 3600)).items()}  # noqa: E731
    validation = M.RetrievalValidation(users, make, d.train, d.valid, [10])
    module = M.TwoTowerModule(model, None, 0.1, False, 0, torch.zeros(d.n_items), item_inputs(d), validation)
    runs = []
    for cap in (M.MAX_SCORES, 3 * d.n_items):  # everything at once, then 3 users at a time
        monkeypatch.setattr(M, "MAX_SCORES", cap)
        with torch.no_grad():
            module.on_validation_epoch_start()
            module.validation_step(torch.as_tensor(users), 0)
        runs.append(np.concatenate(module._topk))
    assert runs[0].shape == (len(users), 10)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_a_feature_group_with_no_feature_embeds_to_zero_width():
    """A custom dataset with no user / item attributes crashed stage=ranking in torch.cat([])."""
    import torch

    from retrieval.towers import FeatureEmbedder

    out = FeatureEmbedder([], {}, 8)({"anything": torch.zeros(5, 3, dtype=torch.long)})
    assert out.shape == (5, 0) and out.dtype == torch.float32
