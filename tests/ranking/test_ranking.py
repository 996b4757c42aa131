"""Late-fusion ranker, listwise loss, the pipeline object, loading a run, the batch command."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import scipy.sparse as sp

from features.schema import DataError
from features.store import SparseRows
from pipeline.batch import main as batch_main
from pipeline.batch import read_requests, recommend_table
from ranking.features import GROUPS
from pipeline.artifacts import load_pipeline
from ranking.model import PRIOR, build_ranker, choose_route_scales, init_prior
from pipeline.pipeline import Request, RequestError
from ranking.trainer import list_ndcg, listwise_loss, split_lists


def test_listwise_loss_hand_case():
    # one list, logits [2, 0, 0], positive at 0 -> -log(e^2 / (e^2 + 2))
    s = torch.tensor([[2.0, 0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    loss = listwise_loss(s, y, torch.ones_like(y, dtype=torch.bool))
    assert abs(loss.item() + math.log(math.exp(2) / (math.exp(2) + 2))) < 1e-6
    # an invalid slot is ignored: same as a list of two
    v = torch.tensor([[True, True, False]])
    assert abs(listwise_loss(s, y, v).item() + math.log(math.exp(2) / (math.exp(2) + 1))) < 1e-6
    # two positives: mean of their log-probabilities
    y2 = torch.tensor([[1.0, 1.0, 0.0]])
    p = torch.log_softmax(s, 1)[0]
    assert abs(listwise_loss(s, y2, torch.ones_like(y2, dtype=torch.bool)).item() + (p[0] + p[1]).item() / 2) < 1e-6


def test_list_ndcg():
    s = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # list 1: hit at rank 2 -> 1/log2(3); list 2: hit at rank 1 -> 1
    assert abs(list_ndcg(s, y, 2).item() - (1 / math.log2(3) + 1) / 2) < 1e-6


def test_ranker_contributions_are_occlusion_differences(tiny_run):
    pipe = load_pipeline(tiny_run)
    users = np.arange(4)
    items, scores, contrib = pipe.rank(users, np.full(4, 1_700_000_000))
    assert items.shape == scores.shape == contrib.shape[:2] and contrib.shape[2] == len(GROUPS)
    model = pipe.ranker().module
    r_scores, r_items, q = pipe.retriever.retrieve(users, np.full(4, 1_700_000_000), pipe.settings.n_candidates)
    x = {k: torch.as_tensor(v) for k, v in pipe.features.build_inputs(users, np.full(4, 1_700_000_000), q, r_items, r_scores).items()}
    with torch.no_grad():
        full, c = model(x)
        h = model.group_vectors(x)
        scale = model.residual_scale(x, len(h))
        prior = model.prior_terms(x)  # (R, P): each term belongs to its input's group
        residual = model.fusion(h.reshape(len(h), -1)).squeeze(-1) * scale
        torch.testing.assert_close(full, residual + prior.sum(1), atol=1e-5, rtol=1e-5)
        for g, name in enumerate(GROUPS):
            h2 = h.clone()
            h2[:, g] = model.baseline[g]
            occluded = model.fusion(h2.reshape(len(h2), -1)).squeeze(-1) * scale
            own = sum((prior[:, j] for j, n in enumerate(model.prior_names) if PRIOR[n] == name), torch.zeros(len(h)))
            torch.testing.assert_close(c[:, g], residual - occluded + own, atol=1e-5, rtol=1e-5)


def _inputs(pipe, known: np.ndarray, seed: int = 0) -> tuple:
    """A fresh ranker over the run's features and real inputs for len(known) rows, with
    has_history / ease_z / pop_all replaced by controlled values."""
    model = build_ranker(pipe.store.features, pipe.retriever.item_embeddings.shape[1], emb_dim=4, group_dim=8,
                         hidden=[8], dropout=0.0, prior=True, tower_embeddings=True).eval()
    n = len(known)
    users = np.arange(n // 10 + 1)
    r_scores, r_items, q = pipe.retriever.retrieve(users, np.full(len(users), 1_700_000_000), 10)
    raw = pipe.features.build_inputs(users, np.full(len(users), 1_700_000_000), q, r_items, r_scores)
    x = {k: torch.as_tensor(v[:n]) for k, v in raw.items()}
    rng = np.random.default_rng(seed)
    x["has_history"] = torch.as_tensor(known, dtype=torch.float32)
    x["ease_z"] = torch.as_tensor(np.where(known > 0, rng.normal(size=n), 0.0), dtype=torch.float32)
    x["pop_all"] = torch.as_tensor(rng.normal(size=n), dtype=torch.float32)
    return model, x


def test_untrained_ranker_orders_like_ease_then_popularity(tiny_run):
    """Prior + zero residual: a known request is ordered by EASE (popularity only breaks near-ties),
    a request without known items by popularity."""
    known = np.r_[np.ones(50), np.zeros(50)]
    model, x = _inputs(load_pipeline(tiny_run), known)
    init_prior(model, {k: v.numpy() for k, v in x.items()}, np.arange(len(known)), pop_weight=0.01)
    with torch.no_grad():
        s = model(x)[0].numpy()
    k = known > 0
    rank = lambda v: np.argsort(np.argsort(-v))  # noqa: E731
    assert np.corrcoef(rank(s[k]), rank(x["ease_z"].numpy()[k]))[0, 1] > 0.98
    assert (np.argsort(-s[~k]) == np.argsort(-x["pop_all"].numpy()[~k])).all()


def test_route_scales_chosen_on_held_out_lists(tiny_run):
    """A residual that clearly helps known lists and hurts cold ones is kept for the first route only;
    a residual that hurts is not kept for any."""
    lists, c = 40, 10
    known = np.repeat(np.r_[np.ones(20), np.zeros(20)], c)
    model, x = _inputs(load_pipeline(tiny_run), known)
    init_prior(model, {k: v.numpy() for k, v in x.items()}, np.arange(len(known)), pop_weight=0.01)
    with torch.no_grad():  # a residual that is large and positive on the first candidate of each list
        model.fusion[-1].bias.fill_(0.0)
        model.fusion[-1].weight.fill_(0.0)
    residual_first = np.tile(np.r_[1.0, np.zeros(c - 1)], lists)

    def fake_forward(inputs, _orig=model.forward):
        s, contrib = _orig(inputs)
        scale = model.residual_scale(inputs, len(s))
        return s + 100.0 * scale * torch.as_tensor(residual_first, dtype=torch.float32), contrib

    model.forward = fake_forward
    labels = np.zeros((lists, c))
    labels[:20, 0] = 1  # known lists: the first candidate is the positive
    labels[20:, 5] = 1  # cold lists: another one is
    valid = np.ones((lists, c), bool)
    from ranking.trainer import held_out_ndcg
    chosen = choose_route_scales(model, {k: v.numpy() for k, v in x.items()}, labels, valid,
                                 lambda sc, idx: held_out_ndcg(sc, labels[idx], valid[idx], per_list=True), z=1.645,
                                 grid=(0.25, 0.5, 0.75, 1.0))
    assert chosen["known"] > 0 and chosen["cold"] == 0.0
    assert model.route_scale.tolist() == [chosen["known"], 0.0]
    residual_first = np.tile(np.r_[np.zeros(c - 1), 1.0], lists)  # now it pushes a negative to the top
    chosen = choose_route_scales(model, {k: v.numpy() for k, v in x.items()}, labels, valid,
                                 lambda sc, idx: held_out_ndcg(sc, labels[idx], valid[idx], per_list=True), z=1.645,
                                 grid=(0.25, 0.5, 0.75, 1.0))
    assert chosen == {"known": 0.0, "cold": 0.0}


def test_held_out_lists_keep_a_users_lists_together():
    labels = np.zeros((8, 3), bool)
    labels[:, 0] = True
    groups = np.array([0, 1, 2, 3, 0, 1, 2, 3])  # lists 4..7 are cold copies of users 0..3
    train, held = split_lists(labels, 0.5, seed=0, groups=groups)
    assert set(groups[train]).isdisjoint(groups[held]) and len(train) + len(held) == 8

def test_pipeline_routes_reasons_and_filters(tiny_run):
    pipe = load_pipeline(tiny_run)
    known = str(pipe.store.users.ids[0])
    out = pipe.recommend([Request(known, 10, timestamp=1_700_000_000), Request("nobody-like-this", 5, timestamp=1_700_000_000)])
    assert out[0].route == "known_user" and out[1].route == "cold_user"
    assert len(out[0].item_ids) == 10 and len(out[1].item_ids) == 5
    seen = set(pipe.store.items.ids[pipe.store.seen[0].indices])
    assert not seen & set(out[0].item_ids)
    assert set(out[0].groups) <= set(GROUPS) | {"popularity", "content"}
    assert all(r in ("ranked", "boosted") or r.startswith("backfill") for r in out[0].reasons)
    # a filter: exclude the first answer's items and a category
    cat = pipe.catalog.category_names[pipe.catalog.primary[pipe.store.items.lookup([out[0].item_ids[0]])[0]]]
    again = pipe.recommend([Request(known, 10, timestamp=1_700_000_000, exclude_items=out[0].item_ids[:3],
                                    exclude_categories=[cat])])[0]
    assert not set(out[0].item_ids[:3]) & set(again.item_ids)
    idx = pipe.store.items.lookup(again.item_ids)
    assert not (pipe.catalog.categories[idx] == pipe.catalog.category_codes([cat])[0]).any()


def test_loaded_pipeline_answers_what_the_ranking_stage_evaluated(tiny_run, tiny_prepared):
    """The pipeline a server loads from the run's artifacts gives the very test lists the stage scored."""
    from evaluation.report import load_lists
    from features.prepare import first_times
    from stages.ranking import evaluate_pipeline

    saved = load_lists(tiny_run)
    users = saved["ranker"][0]
    ts = first_times(tiny_prepared.split.test, tiny_prepared)[users]
    ks = [10, 20]  # TINY_DATA's eval.ks: the saved lists are max(ks) long
    lists = evaluate_pipeline(load_pipeline(tiny_run), tiny_prepared, users, ts, ks)
    for name in ("ranker", "pipeline"):
        np.testing.assert_array_equal(saved[name][0], users)
        np.testing.assert_array_equal(lists[name], saved[name][1], err_msg=name)


@pytest.mark.parametrize("bad, match", [
    (Request("", 5), "user_id must be a non-empty string"),
    (Request("x" * 300, 5), "at most 256"),
    (Request("1", 0), "k=0 must be an integer in 1..200"),
    (Request("1", 10_000), "k=10000"),
    (Request("1", 5, timestamp=float("nan")), "timestamp=nan must be finite"),
    (Request("1", 5, exclude_items=[""]), "exclude_items holds ''"),
    (Request("1", 5, include_categories=["no-such-genre"]), "unknown category 'no-such-genre'"),
    (Request("1", 5, attributes={"shoe_size": 44}), r"unknown user attribute\(s\) \['shoe_size'\]"),
])
def test_bad_requests_are_named(tiny_run, bad, match):
    pipe = load_pipeline(tiny_run)
    with pytest.raises(RequestError, match=match):
        pipe.recommend([bad])


def test_cold_user_with_recent_items_and_attributes(tiny_run):
    pipe = load_pipeline(tiny_run)
    recent = [str(i) for i in pipe.store.items.ids[:3]]
    r = pipe.recommend([Request("brand-new", 8, timestamp=1_700_000_000, recent_items=recent,
                                attributes={"age": 30, "segment": pipe.store.features.encoders["user"]["segment"].state["vocab"][0]})])[0]
    assert r.route == "cold_user" and len(r.item_ids) == 8
    assert not set(recent) & set(r.item_ids)  # the session's items count as seen


def test_a_session_longer_than_the_models_history_gets_none_of_its_items_back(tiny_run):
    """The models read the last history_len recent items; the rules count every item sent as seen (the
    first ones of a long session came back as recommendations)."""
    pipe = load_pipeline(tiny_run)
    n = pipe.store.history_len + 10
    recent = [str(i) for i in pipe.store.popularity.argsort()[::-1][:n]]  # the most popular: what a cold list holds
    recent = [str(pipe.store.items.ids[int(i)]) for i in recent]
    r = pipe.recommend([Request("long-session", 20, timestamp=1_700_000_000, recent_items=recent)])[0]
    assert len(r.item_ids) == 20 and not set(recent) & set(r.item_ids)


def test_batch_command(tiny_run, tmp_path):
    users = [str(u) for u in load_pipeline(tiny_run).store.users.ids[:6]] + ["unknown-user"]
    pd.DataFrame({"user_id": users, "timestamp": [1_700_000_000] * 7}).to_csv(tmp_path / "req.csv", index=False)
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "req.csv"), "--k", "5",
                       "--out", str(tmp_path / "out.parquet"), "--no-progress"]) == 0
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["request", "user_id", "rank", "item_id", "score", "reason", "group", "route"]
    assert out["request"].unique().tolist() == list(range(1, 8))  # the requests' rows, from 1
    assert len(out) == 35 and out.groupby("user_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4, 5]).all()
    assert set(out[out.user_id == "unknown-user"].route) == {"cold_user"}


def test_batch_command_bad_input(tiny_run, tmp_path, capsys):
    pd.DataFrame({"customer": ["1"]}).to_csv(tmp_path / "bad.csv", index=False)
    pd.DataFrame({"user_id": ["1"]}).to_csv(tmp_path / "ok.csv", index=False)
    out = str(tmp_path / "o.csv")
    assert batch_main(["--run-dir", str(tmp_path / "missing"), "--requests", str(tmp_path / "ok.csv"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert batch_main(["--run-dir", str(tmp_path), "--requests", str(tmp_path / "ok.csv"), "--out", out]) == 2
    assert "not a complete trained run" in capsys.readouterr().err
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "bad.csv"), "--out", out]) == 2
    assert "no 'user_id' column" in capsys.readouterr().err
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "ok.csv"), "--k", "0", "--out", out]) == 2
    assert "--k=0 must be a positive integer" in capsys.readouterr().err
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "ok.csv"), "--k", "1000", "--out", out]) == 2
    assert "--k=1000 is above what the run serves; give --k in 1..200" in capsys.readouterr().err
    with pytest.raises(DataError, match="k=500 must be an integer"):
        recommend_table(load_pipeline(tiny_run), read_requests(tmp_path / "ok.csv"), 500)


def test_batch_strips_ids_and_checks_every_row_and_the_output_before_the_work(tiny_run, tmp_path, capsys,
                                                                              monkeypatch):
    user = str(load_pipeline(tiny_run).store.users.ids[0])
    (tmp_path / "padded.csv").write_text(f"user_id,timestamp\n  {user}  ,1700000000\n")
    out = tmp_path / "o.csv"
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "padded.csv"), "--k", "3",
                       "--out", str(out), "--no-progress"]) == 0
    got = pd.read_csv(out, dtype={"user_id": str})
    assert set(got.user_id) == {user} and set(got.route) == {"known_user"}  # " u3 " is u3, not a cold stranger
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.csv")] == []  # no temporary file left
    rows = {"inf": "1e400", "overflow": "1e19", "negative": "-5", "spaces": None, "long": None}
    for name, ts in rows.items():
        uid = {"spaces": "   ", "long": "u" * 300}.get(name, user)
        (tmp_path / f"{name}.csv").write_text(f"user_id,timestamp\n{user},1700000000\n{uid},{ts or 1700000000}\n")
        assert batch_main(["--run-dir", str(tmp_path / "not-loaded"), "--requests", str(tmp_path / f"{name}.csv"),
                           "--out", str(out)]) == 2, name  # refused before the run is even looked at
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
        assert ("line 3" in err) or ("empty id" in err), err
    # the line a bad row starts on: blank lines (skipped by the reader) counted, a quoted field over several
    # lines (a note column, ignored) one row, a .tsv by tabs
    for name, text, message in (
            ("blank.csv", f"user_id,timestamp\n\n{user},1700000000\n   \n\n{user},-5\n", "line 6: timestamp -5"),
            ("blank.csv", f"user_id,timestamp\n\n{user},soon\n", "line 3: timestamp 'soon' is not Unix seconds"),
            ("quoted.csv", f'user_id,timestamp,note\n{user},1700000000,"two\nlines"\n{user},soon,x\n', "line 4: timestamp"),
            ("quoted.csv", f'user_id,timestamp,note\n{user},1,"a\n\nb"\n\n{user},soon,x\n', "line 6: timestamp 'soon'"),
            ("tabs.tsv", f'user_id\ttimestamp\tnote\n{user}\t1\t"a,\nb"\n{user}\tsoon\tx\n', "line 4: timestamp 'soon'")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            read_requests(tmp_path / name)
    # an id longer than the csv module's default cell limit (131,072 characters); a path from ~
    (tmp_path / "huge.csv").write_text(f"user_id\n{user}\n{'u' * 200_000}\n")
    with pytest.raises(DataError, match="line 3: user_id is 200000 characters long"):
        read_requests(tmp_path / "huge.csv")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="line 6: timestamp 'soon'"):
        read_requests("~/quoted.csv")
    (tmp_path / "outdir.csv").mkdir()
    for bad_out, message in ((tmp_path / "missing" / "o.csv", "folder"), (tmp_path / "outdir.csv", "is a directory")):
        assert batch_main(["--run-dir", str(tmp_path / "not-loaded"), "--requests", str(tmp_path / "padded.csv"),
                           "--out", str(bad_out)]) == 2  # checked before the run is looked at
        assert message in capsys.readouterr().err
    (tmp_path / "dir.csv").mkdir()
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "dir.csv"), "--out", str(out)]) == 2
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not really")
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "torn.parquet"), "--out", str(out)]) == 2
    assert "not a readable parquet file" in capsys.readouterr().err


def test_batch_reads_parquet_dates_and_bytes_ids_and_refuses_what_it_cannot_serve(tiny_run, tmp_path, capsys, caplog):
    """A date-time timestamp column is Unix seconds (was: a "milliseconds?" error on microseconds); a
    binary id column is its UTF-8 text; a list-valued id is refused (was served as a cold user "[1 2]");
    an unknown column is named in a warning (a "ts" column was silently ignored); --out may not be the
    requests file (it was overwritten)."""
    import logging

    user = str(load_pipeline(tiny_run).store.users.ids[0])
    out = tmp_path / "o.csv"
    pd.DataFrame({"user_id": [user.encode()], "timestamp": pd.to_datetime(["2023-11-14 22:13:20"]),
                  "ts": [1]}).to_parquet(tmp_path / "dated.parquet")
    with caplog.at_level(logging.WARNING, logger="pipeline.batch"):
        assert read_requests(tmp_path / "dated.parquet")["timestamp"].tolist() == [1_700_000_000]
    assert "column(s) ts ignored" in caplog.text
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "dated.parquet"), "--k", "2",
                       "--out", str(out), "--no-progress"]) == 0
    assert set(pd.read_csv(out, dtype={"user_id": str}).route) == {"known_user"}
    pd.DataFrame({"user_id": [[1, 2]]}).to_parquet(tmp_path / "lists.parquet")
    with pytest.raises(DataError, match=r"line 2: user_id .* is not an id"):
        read_requests(tmp_path / "lists.parquet")
    (tmp_path / "same.csv").write_text(f"user_id\n{user}\n")
    assert batch_main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "same.csv"),
                       "--out", str(tmp_path / "same.csv")]) == 2
    assert "is the --requests file" in capsys.readouterr().err
    assert (tmp_path / "same.csv").read_text() == f"user_id\n{user}\n"


@pytest.mark.parametrize("artifact, damage", [("item_embeddings", "truncate"), ("ranker", "empty"),
                                              ("index", "empty"), ("settings", "empty"), ("manifest", "garble")])
def test_a_damaged_artifact_is_named_with_the_fix(tiny_run, tmp_path, capsys, artifact, damage):
    import shutil

    from pipeline.artifacts import MANIFEST, RunArtifacts

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    art = RunArtifacts(run)
    path = art.manifest_path if artifact == "manifest" else art.path(artifact)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garble": data[:-7]}[damage])
    pd.DataFrame({"user_id": ["1"]}).to_csv(tmp_path / "ok.csv", index=False)
    assert batch_main(["--run-dir", str(run), "--requests", str(tmp_path / "ok.csv"), "--out", str(tmp_path / "o.csv"),
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    name = MANIFEST if artifact == "manifest" else artifact
    assert f"artifact {name} (" in err and "restore the run directory, or train it again" in err, err


def test_ranking_stage_metrics(tiny_run):
    import json

    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("ranker/test/ndcg@10", "pipeline/test/ndcg@10", "pipeline/test/coverage@10",
                "pipeline/test_cold_users/ndcg@10", "mostpop/test_cold_users/ndcg@10", "ranker/valid_lists/ndcg@10"):
        assert key in m, key
    assert (tiny_run / "ndcg_at_k.png").exists() and (tiny_run / "exposure_lorenz.png").exists()


def test_build_ranker_from_features(tiny_prepared):
    model = build_ranker(tiny_prepared.features, 8, emb_dim=4, group_dim=8, hidden=[8], dropout=0.0, prior=True,
                         tower_embeddings=True)
    assert model.baseline.shape == (len(GROUPS), 8)


@pytest.mark.parametrize("path", ["dense", "dense_block", "padded", "sparse"])
def test_sparse_cooccurrence_lookups_equal_dense_ones(tiny_run, path, monkeypatch):
    """Each catalog size's cosine path of history_scores (a dense table read by whole rows or by the
    (known x candidates) block, (N, K) tables, the CSR rows) and the sparse path of history_top give the
    answers of the dense product."""
    import ranking.features as rf

    if path == "dense_block":
        monkeypatch.setattr(rf, "DENSE_ROWS_PER_CANDIDATE", 0)
    elif path != "dense":
        monkeypatch.setattr(rf, "DENSE_MAX_ITEMS", 0)
    if path == "sparse":
        monkeypatch.setattr(rf, "PADDED_MAX_ENTRIES", 0)
    pipe = load_pipeline(tiny_run)
    f = pipe.features
    assert (f.cooc_dense is not None, f.cooc_padded is not None) == {"dense": (True, True), "dense_block": (True, True),
                                                                     "padded": (False, True), "sparse": (False, False)}[path]
    users = np.array([0, 1, 2, -1, 5])
    recent = np.full((len(users), f.store.history_len), -1)
    recent[3, -2:] = [3, 4]  # an unknown user with a session
    rows = f.history_rows(users, recent)
    dense = (rows @ f.cooc).toarray()
    items = np.tile(np.r_[np.arange(-1, 30), -1, -1], (len(users), 1))  # a real candidate, then only gaps
    got = f.history_scores(f.cooc, rows, items)
    want = np.where(items >= 0, np.take_along_axis(dense, np.clip(items, 0, None), 1), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # a candidate whose last neighbour the request knows, then gaps: its whole row is summed
    by_target, known = f.cooc_by_target, set(rows.row(0).tolist())
    t = next(t for t in range(by_target.shape[0]) if by_target.indptr[t + 1] > by_target.indptr[t]
             and by_target.indices[by_target.indptr[t + 1] - 1] in known)
    np.testing.assert_allclose(f.history_scores(f.cooc, rows, np.array([[t, -1]] * len(users)))[0],
                               [dense[0, t], 0.0], rtol=1e-6, atol=1e-7)
    n = f.cooc.shape[0]  # an item added online (no weights until a refresh) among the known ones changes nothing
    wide = SparseRows.from_lists([np.append(rows.row(b), [n + 1]).astype(np.int64) for b in range(len(users))], n + 3)
    np.testing.assert_allclose(f.history_scores(f.cooc, wide, items), got, rtol=1e-6, atol=1e-7)
    ease, f.ease = f.ease, None
    cache: dict = {}
    try:
        top = f.history_top(rows, 15, cache)  # without EASE: the cosine product, kept for the ranker's scores
    finally:
        f.ease = ease
    assert cache["cosine_rows"] is rows
    np.testing.assert_allclose(f.history_scores(f.cooc, rows, items, cache), want, rtol=1e-6, atol=1e-7)
    for b in range(len(users)):
        row = dense[b].copy()
        row[rows.indices[rows.indptr[b]:rows.indptr[b + 1]]] = -np.inf
        order = np.lexsort((np.arange(len(row)), -row))
        expect = [i for i in order if row[i] > 0][:15]
        assert top[b][top[b] >= 0].tolist() == expect, b


def test_cosine_scores_are_the_same_with_and_without_the_candidates_product():
    """Without EASE, the candidates' cosine product is kept for the ranker's scores; on a small
    catalog the scores still come from the dense rows added one after another, so they equal the
    scores computed without it (the product's reduceat adds 8 or more weights in another order)."""
    from ranking.features import CandidateFeatures

    n = 20
    w = np.zeros((n, n), np.float32)
    w[1:17, 0] = np.random.default_rng(3).random(16).astype(np.float32)  # 16 neighbours of item 0
    w[2:5, 17] = [0.5, 0.25, 0.125]
    f = CandidateFeatures.__new__(CandidateFeatures)
    f.cooc, f.ease = sp.csr_matrix(w), None
    rows = SparseRows.from_lists([np.arange(1, 17)], n)
    items = np.array([[0, 17, 3, -1]])
    plain = f.history_scores(f.cooc, rows, items)
    cache: dict = {}
    f.history_top(rows, 5, cache)
    assert cache["cosine_rows"] is rows
    assert np.array_equal(f.history_scores(f.cooc, rows, items, cache), plain)
    one_by_one = np.float32(0.0)
    for v in w[1:17, 0]:  # the dense rows' order: known item after known item
        one_by_one = np.float32(one_by_one + v)
    assert plain[0, 0] == one_by_one and plain[0, 3] == 0.0


@pytest.mark.parametrize("size", ["small", "mid"])
def test_the_pipeline_builds_its_cosine_table_at_load(tiny_run, size, monkeypatch):
    """The table a request's cosine scores read is there before the first request (built on first use
    otherwise: 25 ms on the first request with a history at 1,682 items)."""
    import ranking.features as rf

    if size == "mid":
        monkeypatch.setattr(rf, "DENSE_MAX_ITEMS", 0)
    f = load_pipeline(tiny_run).features
    assert f.ease is not None  # the tiny run's catalog is small enough for EASE
    if size == "small":
        assert getattr(f, "_dense_for", None) is f.cooc and f.prepare_tables() == "dense"
    else:
        assert getattr(f, "_padded_for", None) is f.cooc_by_target and f.prepare_tables() == "padded"
    f.ease = None  # a catalog without EASE: the candidates' cosine product serves the request
    assert f.prepare_tables() == ("dense" if size == "small" else None)


def test_item_content_is_a_multi_hot_of_categorical_attributes(tiny_run):
    from ranking.features import item_content

    store = load_pipeline(tiny_run).store
    c = item_content(store)
    assert c.shape[0] == len(store.items) and c.nnz > 0 and set(np.unique(c.data)) == {1.0}
    used = [sp.name for sp in store.features.specs["item"]
            if sp.name != "item_id" and sp.kind in ("categorical", "multi_categorical", "text")]
    assert used  # the tiny data has categorical item attributes
    for item in (0, 3, 7):  # one column per distinct non-padding code of each attribute
        want = sum(len(np.unique(np.ravel(store.item_table[n][item])[np.ravel(store.item_table[n][item]) > 0]))
                   for n in used)
        assert c[item].nnz == want


def test_an_older_ranker_checkpoint_gets_a_clear_error(tiny_run, tmp_path):
    from ranking.model import load_ranker

    ckpt = torch.load(tiny_run / "artifacts" / "ranker.pt", weights_only=False)
    old = {**ckpt, "model_cfg": {k: v for k, v in ckpt["model_cfg"].items() if k not in ("prior", "tower_embeddings")}}
    torch.save(old, tmp_path / "ranker.pt")
    pipe = load_pipeline(tiny_run)
    with pytest.raises(ValueError, match="older version of the ranker; re-run `python train.py`"):
        load_ranker(tmp_path / "ranker.pt", pipe.store.features)


def test_merge_gives_the_extra_source_its_share_of_slots():
    from pipeline.pipeline import _merge

    first, extra = np.array([5, 6, 7, 8, -1]), np.array([7, 9, 3, -1])
    # 2 of 4 slots for the extra source (7 moves there, no duplicate), the rest from the first source
    assert _merge(first, extra, 2, 4).tolist() == [5, 6, 7, 9]
    assert _merge(first, extra, 0, 4).tolist() == [5, 6, 7, 8]
    assert _merge(first, np.array([-1, -1]), 2, 4).tolist() == [5, 6, 7, 8]  # nothing extra: no gap


def test_keys_between_counts_like_two_plain_binary_searches():
    """Recent popularity searches all 2R bounds in sorted order (cache-friendlier on a large key
    array); the counts must equal searchsorted(hi) - searchsorted(lo) per entry."""
    from ranking.features import _keys_between

    rng = np.random.default_rng(0)
    for n in (0, 1, 17, 3000):
        keys = np.sort((rng.integers(0, 50, n) << 32) | rng.integers(0, 1000, n))
        lo = (rng.integers(0, 55, 200) << 32) | rng.integers(0, 1000, 200)
        hi = lo + rng.integers(0, 400, 200)
        expected = np.searchsorted(keys, hi) - np.searchsorted(keys, lo)
        np.testing.assert_array_equal(_keys_between(keys, lo, hi), expected)


def test_batch_on_a_run_that_did_not_complete_says_so(tiny_run, tmp_path, caplog):
    """Found by a probe of the CLIs: a run whose manifest says failed (e.g. its export stage) was served
    without a word; its pipeline artifacts are all there, so it answers, and says what the run is."""
    import json
    import logging
    import shutil

    from pipeline.artifacts import RunArtifacts

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = RunArtifacts(run).manifest_path
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "failed", "error": "ValueError: int8 gate"}))
    user = str(load_pipeline(run).store.users.ids[0])
    (tmp_path / "r.csv").write_text(f"user_id\n{user}\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.batch"):
        assert batch_main(["--run-dir", str(run), "--requests", str(tmp_path / "r.csv"), "--out",
                           str(tmp_path / "o.csv"), "--no-progress"]) == 0
    assert "did not complete (manifest status 'failed': ValueError: int8 gate)" in caplog.text
