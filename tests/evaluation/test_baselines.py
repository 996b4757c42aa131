"""Baselines (MostPop, ItemKNN, EASE) and the evaluation loop built on them."""

from __future__ import annotations

from math import log2, sqrt

import numpy as np
import pytest
import scipy.sparse as sp

from evaluation.baselines import EASE, ItemKNN, MostPop, Recommender, binarize
from evaluation.evaluate import evaluate_scorer, select_by_validation


def dense(rows: list[list[float]]) -> sp.csr_matrix:
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


def planted_blocks(seed: int = 0, n_users: int = 400, n_blocks: int = 4, block: int = 10):
    """Each user likes one block of items: 4 of them in train, a 5th held out, plus 1 random item."""
    rng = np.random.default_rng(seed)
    n_items = n_blocks * block
    train = np.zeros((n_users, n_items), np.float32)
    valid = np.zeros_like(train)
    for u in range(n_users):
        items = (u % n_blocks) * block + rng.choice(block, size=5, replace=False)
        train[u, items[:4]] = 1
        valid[u, items[4]] = 1
        noise = rng.integers(n_items)
        if valid[u, noise] == 0:
            train[u, noise] = 1
    return sp.csr_matrix(train), sp.csr_matrix(valid)


# ---------------------------------------------------------------- protocol and shared checks


def test_models_follow_the_protocol_and_binarize():
    for model in (MostPop(), ItemKNN(2, 0.0), EASE(1.0)):
        assert isinstance(model, Recommender)
    x = sp.csr_matrix((np.array([5.0, 0.0], np.float32), ([0, 1], [1, 0])), shape=(2, 2))
    b = binarize(x)  # 5.0 -> 1.0, explicit zero dropped
    assert b.nnz == 1 and b[0, 1] == 1.0 and b.dtype == np.float32
    with pytest.raises(TypeError, match="train must be a 2-D scipy.sparse"):
        binarize(np.ones((2, 2)))


def test_score_validation_branches():
    with pytest.raises(RuntimeError, match="MostPop is not fitted; call fit"):
        MostPop().score(np.array([0]))
    model = MostPop().fit(dense([[1, 0], [0, 1]]))
    with pytest.raises(ValueError, match="user index 2 outside 0..1"):
        model.score(np.array([0, 2]))
    with pytest.raises(ValueError, match="user index -1 outside"):
        model.score(np.array([-1]))
    with pytest.raises(ValueError, match="1-D integer array"):
        model.score(np.array([0.0]))


# ---------------------------------------------------------------- MostPop


def test_mostpop_orders_by_training_count():
    # item counts: 0 -> 3, 1 -> 1, 2 -> 4, 3 -> 2  => ranking [2, 0, 3, 1] for every user
    x = dense([[1, 0, 1, 0], [1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]])
    scores = MostPop().fit(x).score(np.array([0, 3]))
    assert scores.shape == (2, 4) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, [[3, 1, 4, 2]] * 2)
    assert np.argsort(-scores[0], kind="stable").tolist() == [2, 0, 3, 1]


# ---------------------------------------------------------------- ItemKNN

# users x items; item users: 0 -> {0,1,2}, 1 -> {0,2}, 2 -> {1,2}
KNN_X = dense([[1, 1, 0], [1, 0, 1], [1, 1, 1]])
C01 = 2 / sqrt(3 * 2)  # co-occurrence 2, norms sqrt(3), sqrt(2) -> 0.8165
C12 = 1 / sqrt(2 * 2)  # co-occurrence 1 -> 0.5


def test_itemknn_cosine_hand_case():
    sim = ItemKNN(2, 0.0).fit(KNN_X).sim_.toarray()
    np.testing.assert_allclose(sim, [[0, C01, C01], [C01, 0, C12], [C01, C12, 0]], rtol=1e-6)
    # shrink adds to the denominator: 2 / (sqrt 6 + 1), 1 / (2 + 1)
    sim = ItemKNN(2, 1.0).fit(KNN_X).sim_.toarray()
    assert sim[0, 1] == pytest.approx(2 / (sqrt(6) + 1)) and sim[1, 2] == pytest.approx(1 / 3)
    # user 0 history {0, 1}: item 2 scores sim(0,2) + sim(1,2)
    s = ItemKNN(2, 0.0).fit(KNN_X).score(np.array([0]))
    np.testing.assert_allclose(s, [[C01, C01, C01 + C12]], rtol=1e-6)


def test_itemknn_keeps_top_k_per_target_with_lower_index_on_ties():
    sim = ItemKNN(1, 0.0).fit(KNN_X).sim_.toarray()  # column j = neighbours of target j
    # target 0: items 1 and 2 tie at C01 -> keep 1; targets 1 and 2: best neighbour is item 0
    np.testing.assert_allclose(sim, [[0, C01, C01], [C01, 0, 0], [0, 0, 0]], rtol=1e-6)


def test_itemknn_blocks_match_bruteforce():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((60, 25)) < 0.2).astype(np.float32))
    xd = x.toarray().astype(np.float64)
    norms = np.sqrt(xd.sum(0))
    want = (xd.T @ xd) / (np.outer(norms, norms) + 0.5)
    np.fill_diagonal(want, 0)
    for block in (1, 7, 100):
        got = ItemKNN(25, 0.5, block_size=block).fit(x).sim_.toarray()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_itemknn_validation_branches():
    with pytest.raises(ValueError, match="k_neighbors must be a positive int, got 0"):
        ItemKNN(0, 0.0)
    with pytest.raises(ValueError, match="shrink must be a finite number >= 0, got -1"):
        ItemKNN(5, -1.0)
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        ItemKNN(5, 0.0, block_size=0)


# ---------------------------------------------------------------- EASE


def test_ease_matches_closed_form_with_zero_diagonal():
    rng = np.random.default_rng(2)
    x = sp.csr_matrix((rng.random((50, 12)) < 0.3).astype(np.float32))
    model = EASE(5.0).fit(x)
    w = model.weights_
    np.testing.assert_array_equal(np.diag(w), 0)
    xd = x.toarray().astype(np.float64)
    p = np.linalg.inv(xd.T @ xd + 5.0 * np.eye(12))
    want = np.eye(12) - p / np.diag(p)
    np.testing.assert_allclose(w, want, atol=1e-6)
    s = model.score(np.array([3, 0]))
    assert s.shape == (2, 12) and s.dtype == np.float32
    np.testing.assert_allclose(s, xd[[3, 0]] @ want, atol=1e-5)


def test_ease_with_item_attributes_is_the_closed_form_with_attribute_rows():
    """Side-information EASE = EASE on X stacked with the (weighted) attribute matrix as extra rows:
    two items that share an attribute but never co-occur get a positive weight."""
    from features.cooccurrence import ease_weights

    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32))
    side = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)) * 2.0  # items 2, 3 share one
    w = ease_weights(x, 1.0, side)
    stacked = np.vstack([x.toarray(), side.toarray().T]).astype(np.float64)
    p = np.linalg.inv(stacked.T @ stacked + np.eye(4))
    np.testing.assert_allclose(w, np.eye(4) - p / np.diag(p), atol=1e-6)
    assert ease_weights(x, 1.0)[2, 3] == 0 and w[2, 3] > 0


def test_ease_recovers_planted_blocks_better_than_mostpop():
    train, valid = planted_blocks()
    users = np.arange(train.shape[0])
    ease = evaluate_scorer(EASE(10.0).fit(train).score, users, train, valid, [5], progress=False)
    pop = evaluate_scorer(MostPop().fit(train).score, users, train, valid, [5], progress=False)
    # 6 unseen block items, 5 slots: EASE should nearly always hit; MostPop lands in 1 of 4 blocks
    assert ease["recall@5"] > 0.7
    assert ease["recall@5"] > pop["recall@5"] + 0.3


def test_ease_validation_branches():
    with pytest.raises(ValueError, match="l2 must be a finite number > 0, got 0"):
        EASE(0.0)
    with pytest.raises(ValueError, match="max_items must be >= 1"):
        EASE(1.0, max_items=0)
    with pytest.raises(ValueError, match="n_items=12 needs .* above max_items=5"):
        EASE(1.0, max_items=5).fit(sp.csr_matrix((3, 12), dtype=np.float32))


# ---------------------------------------------------------------- evaluate_scorer / selection

# 3 users, 4 items; every user gets scores [4, 3, 2, 1] (item 0 best).
#   user 0: history {0}, truth {2} -> list@2 [1, 2], hit at rank 2
#   user 1: history {1}, truth {}  -> skipped
#   user 2: history {},  truth {3} -> list@2 [0, 1], no hit
E2E_HISTORY = dense([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
E2E_TRUTH = dense([[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])


def fixed_scores(users: np.ndarray) -> np.ndarray:
    return np.tile(np.array([4, 3, 2, 1], np.float32), (len(users), 1))


def test_evaluate_scorer_end_to_end():
    users = np.arange(3)
    m, topk, evaluated = evaluate_scorer(
        fixed_scores, users, E2E_HISTORY, E2E_TRUTH, [2], batch_size=1, progress=False, return_topk=True
    )
    assert evaluated.tolist() == [0, 2] and topk.tolist() == [[1, 2], [0, 1]]
    assert m["recall@2"] == pytest.approx(0.5) and m["hr@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.25) and m["mrr@2"] == pytest.approx(0.25)
    assert m["ndcg@2"] == pytest.approx((1 / log2(3)) / 2)
    assert m["coverage@2"] == pytest.approx(3 / 4)  # items {0, 1, 2}
    # exposure counts sorted [0, 1, 1, 2]: (-1*1 + 1*1 + 3*2) / (4 * 4)
    assert m["gini@2"] == pytest.approx(6 / 16)
    # popularity from history: every item at 1/3 (unseen items count once) -> log2(3)
    assert m["novelty@2"] == pytest.approx(log2(3))
    assert "diversity@2" not in m
    same = evaluate_scorer(fixed_scores, users, E2E_HISTORY, E2E_TRUTH, [2], batch_size=1024, progress=False)
    assert same == m
    vectors = np.eye(4)  # orthogonal items -> every list fully diverse
    m = evaluate_scorer(fixed_scores, users, E2E_HISTORY, E2E_TRUTH, [1, 2], item_vectors=vectors, progress=False)
    assert m["diversity@2"] == pytest.approx(1.0) and "diversity@1" not in m  # K=1: undefined


def test_evaluate_scorer_validation_branches():
    args = (np.arange(3), E2E_HISTORY, E2E_TRUTH)
    with pytest.raises(ValueError, match=r"score_fn returned shape \(2, 3\), expected \(2, 4\)"):
        evaluate_scorer(lambda u: np.zeros((len(u), 3)), *args, [2], progress=False)
    with pytest.raises(ValueError, match="must have the same shape"):
        evaluate_scorer(fixed_scores, np.arange(3), E2E_HISTORY, E2E_TRUTH[:2], [2], progress=False)
    with pytest.raises(TypeError, match="history must be a 2-D scipy.sparse"):
        evaluate_scorer(fixed_scores, np.arange(3), E2E_HISTORY.toarray(), E2E_TRUTH, [2], progress=False)
    with pytest.raises(ValueError, match="user index 3 outside 0..2"):
        evaluate_scorer(fixed_scores, np.array([0, 3]), E2E_HISTORY, E2E_TRUTH, [2], progress=False)
    with pytest.raises(ValueError, match="ks must be a non-empty list"):
        evaluate_scorer(fixed_scores, *args, [], progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate_scorer(fixed_scores, *args, [2], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="none of the given users has a truth item"):
        evaluate_scorer(fixed_scores, np.array([1]), E2E_HISTORY, E2E_TRUTH, [2], progress=False)
    with pytest.raises(ValueError, match=r"max\(ks\)=5 exceeds the number of items N=4"):
        evaluate_scorer(fixed_scores, *args, [5], progress=False)


def test_select_by_validation_picks_the_best_of_the_grid():
    train, valid = planted_blocks(seed=3, n_users=200)
    factory = lambda name: {"pop": MostPop(), "ease": EASE(10.0), "knn": ItemKNN(5, 0.0)}[name]  # noqa: E731
    best, table = select_by_validation(factory, ["pop", "ease", "knn"], train, valid, metric="recall@5", ks=[5])
    assert list(table) == ["pop", "ease", "knn"]
    assert best == max(table, key=table.get) and best != "pop"
    assert table[best] > table["pop"] + 0.3
    # ItemKNN's neighbourhood size chosen the same way; k=1 keeps too few neighbours to fill lists
    best_k, table_k = select_by_validation(lambda k: ItemKNN(k, 0.0), [1, 9], train, valid, "recall@5", [5])
    assert best_k == 9 and table_k[9] > table_k[1]


def test_select_by_validation_validation_branches():
    train, valid = planted_blocks(n_users=20)
    with pytest.raises(ValueError, match="grid is empty"):
        select_by_validation(lambda p: MostPop(), [], train, valid)
    with pytest.raises(ValueError, match="unknown metric 'ndcg@10'; available with ks=\\[5\\]"):
        select_by_validation(lambda p: MostPop(), [None], train, valid, metric="ndcg@10", ks=[5])
