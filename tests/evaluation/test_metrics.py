"""Hand-worked cases for top-k selection, ranking and beyond-accuracy metrics."""

from __future__ import annotations

from math import log2, sqrt

import numpy as np
import pytest
import scipy.sparse as sp

from evaluation.metrics import (
    exposure_gini,
    intra_list_diversity,
    item_coverage,
    item_popularity,
    lorenz_curve,
    novelty,
    ranking_metrics,
)
from inference.topk import topk_excluding


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR from per-row item lists."""
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    r, c = zip(*data) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_items))


# ---------------------------------------------------------------- topk_excluding


def test_topk_orders_descending_and_breaks_ties_by_lower_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(topk_excluding(scores, None, 3), [[1, 3, 2], [0, 1, 2]])


def test_topk_ties_across_the_cut_are_deterministic():
    # all 1000 items tie: argpartition alone would pick arbitrary ones; we want 0..4
    assert topk_excluding(np.ones((2, 1000)), None, 5).tolist() == [[0, 1, 2, 3, 4]] * 2
    # items 1 and 3 beat the tie at 0.5 among {0, 2, 4, 5}; k=4 takes the two lowest tied indices
    scores = np.array([[0.5, 0.9, 0.5, 0.8, 0.5, 0.5]])
    assert topk_excluding(scores, None, 4).tolist() == [[1, 3, 0, 2]]


def test_topk_matches_bruteforce_lexsort_on_random_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(50, 30)).astype(np.float64)
    got = topk_excluding(scores, None, 10)
    idx = np.broadcast_to(np.arange(30), scores.shape)
    want = np.lexsort((idx, -scores), axis=1)[:, :10]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64


def test_topk_excludes_history_without_mutating_scores():
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    before = scores.copy()
    # items 0 and 2 are history -> best remaining are 1 then 3
    assert topk_excluding(scores, csr([[0, 2]], 4), 2).tolist() == [[1, 3]]
    np.testing.assert_array_equal(scores, before)


def test_topk_fills_with_excluded_items_last_when_too_few_remain():
    # only item 2 is allowed; the second slot goes to the lowest-index excluded item (-inf tie)
    assert topk_excluding(np.array([[3.0, 2.0, 1.0]]), csr([[0, 1]], 3), 2).tolist() == [[2, 0]]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_topk_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        topk_excluding(np.zeros((1, 3)), None, k)


def test_topk_validation_branches():
    with pytest.raises(ValueError, match="exceeds the number of items N=3"):
        topk_excluding(np.zeros((1, 3)), None, 4)
    with pytest.raises(ValueError, match="2-D"):
        topk_excluding(np.zeros(3), None, 1)
    with pytest.raises(ValueError, match="NaN"):
        topk_excluding(np.array([[0.0, np.nan]]), None, 1)
    with pytest.raises(ValueError, match=r"exclude has shape \(1, 4\), expected \(1, 3\)"):
        topk_excluding(np.zeros((1, 3)), csr([[0]], 4), 1)
    with pytest.raises(TypeError, match="exclude must be a scipy.sparse"):
        topk_excluding(np.zeros((1, 3)), np.zeros((1, 3)), 1)


# ---------------------------------------------------------------- ranking_metrics

# Two users with truth and one without, N=6, K=3.
#   user 0: list [0, 1, 2], truth {1, 4} -> hits [0, 1, 0]
#   user 1: list [3, 4, 5], truth {0, 3, 5} -> hits [1, 0, 1]
#   user 2: list [0, 1, 2], truth {} -> skipped
TOPK = np.array([[0, 1, 2], [3, 4, 5], [0, 1, 2]])
TRUTH = csr([[1, 4], [0, 3, 5], []], 6)
D2, D3 = 1 / log2(3), 1 / log2(4)  # discounts of ranks 2 and 3 (rank 1 -> 1)


def test_ranking_metrics_at_3_hand_worked():
    m = ranking_metrics(TOPK, TRUTH, [3])
    # recall: u0 1/2, u1 2/3 ; precision: u0 1/3, u1 2/3
    assert m["recall@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["hr@3"] == pytest.approx(1.0)
    # first hit: u0 rank 2, u1 rank 1
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1) / 2)
    # u0: DCG = D2, IDCG over min(2,3)=2 slots = 1 + D2 ; u1: DCG = 1 + D3, IDCG = 1 + D2 + D3
    assert m["ndcg@3"] == pytest.approx((D2 / (1 + D2) + (1 + D3) / (1 + D2 + D3)) / 2)
    # AP: u0 (1/2 at rank 2) / min(2,3) = 0.25 ; u1 (1/1 + 2/3) / min(3,3) = 5/9
    assert m["map@3"] == pytest.approx((0.25 + 5 / 9) / 2)


def test_ranking_metrics_at_1_hand_worked():
    m = ranking_metrics(TOPK, TRUTH, [1, 3])
    assert set(m) == {f"{n}@{k}" for n in ("recall", "precision", "hr", "mrr", "ndcg", "map") for k in (1, 3)}
    # only u1 hits at rank 1: recall 1/3, every other @1 metric 1 for u1 and 0 for u0
    assert m["recall@1"] == pytest.approx(1 / 6)
    for name in ("precision", "hr", "mrr", "ndcg", "map"):
        assert m[f"{name}@1"] == pytest.approx(0.5), name


def test_ranking_metrics_per_user_arrays_with_nan_for_users_without_truth():
    per = ranking_metrics(TOPK, TRUTH, [3], per_user=True)
    np.testing.assert_allclose(per["recall@3"], [1 / 2, 2 / 3, np.nan])
    np.testing.assert_allclose(per["map@3"], [0.25, 5 / 9, np.nan])
    assert np.nanmean(per["ndcg@3"]) == pytest.approx(ranking_metrics(TOPK, TRUTH, [3])["ndcg@3"])


def test_ranking_metrics_idcg_is_capped_at_k():
    # 5 truth items, K=2, both slots hit -> perfect NDCG and MAP (ideal list has only 2 slots)
    m = ranking_metrics(np.array([[0, 1]]), csr([[0, 1, 2, 3, 4]], 6), [2])
    assert m["ndcg@2"] == pytest.approx(1.0) and m["map@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(2 / 5)


def test_ranking_metrics_validation_branches():
    with pytest.raises(ValueError, match="no relevant item for any user"):
        ranking_metrics(TOPK, csr([[], [], []], 6), [3])
    with pytest.raises(ValueError, match="3 rows but truth has 2"):
        ranking_metrics(TOPK, csr([[1], [2]], 6), [3])
    with pytest.raises(ValueError, match="ks is empty"):
        ranking_metrics(TOPK, TRUTH, [])
    with pytest.raises(ValueError, match="cut-off 4 in ks exceeds the list length K=3"):
        ranking_metrics(TOPK, TRUTH, [4])
    with pytest.raises(ValueError, match="each of ks must be a positive int, got 0"):
        ranking_metrics(TOPK, TRUTH, [0])
    with pytest.raises(ValueError, match="duplicate item"):
        ranking_metrics(np.array([[1, 1, 2]] * 3), TRUTH, [3])
    with pytest.raises(ValueError, match="negative item index -1"):
        ranking_metrics(np.array([[-1, 1, 2]] * 3), TRUTH, [3])
    with pytest.raises(ValueError, match="item index 6 >= n_items=6"):
        ranking_metrics(np.array([[6, 1, 2]] * 3), TRUTH, [3])
    with pytest.raises(ValueError, match="non-empty 2-D"):
        ranking_metrics(np.array([0, 1, 2]), TRUTH, [3])
    with pytest.raises(TypeError, match="integer item indices"):
        ranking_metrics(TOPK.astype(float), TRUTH, [3])
    with pytest.raises(TypeError, match="truth must be a 2-D scipy.sparse"):
        ranking_metrics(TOPK, TRUTH.toarray(), [3])


# ---------------------------------------------------------------- beyond accuracy


def test_item_coverage():
    # {0, 1, 2} of 5 items
    assert item_coverage(np.array([[0, 1], [1, 2]]), 5) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="n_items must be a positive int, got 0"):
        item_coverage(np.array([[0]]), 0)


def test_exposure_gini():
    # counts over 4 items: equal [1, 1, 1, 1] -> 0
    assert exposure_gini(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    # sorted counts [0, 0, 2, 2]: sum (2i - n - 1) x_i = 1*2 + 3*2 = 8 ; / (n * sum x) = 8 / 16
    assert exposure_gini(np.array([[0, 1], [0, 1]]), 4) == pytest.approx(0.5)
    # all exposure on one item: [0, 0, 0, 2] -> 3*2 / (4*2) = (n-1)/n
    assert exposure_gini(np.array([[0], [0]]), 4) == pytest.approx(0.75)


def test_lorenz_curve():
    x, y = lorenz_curve(np.array([[0, 1], [0, 1]]), 4)  # sorted counts [0, 0, 2, 2]
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(y, [0, 0, 0, 0.5, 1])


def test_item_popularity_and_novelty():
    # 4 users: item 0 seen by 2, item 1 by 1, item 2 by none (counted as 1) -> [1/2, 1/4, 1/4]
    p = item_popularity(csr([[0, 1], [0], [], []], 3))
    np.testing.assert_allclose(p, [0.5, 0.25, 0.25])
    # -log2 p: item 0 -> 1, item 1 -> 2, item 3 -> 0 ; lists [0,1], [3,1] -> (1 + 2 + 0 + 2) / 4
    assert novelty(np.array([[0, 1], [3, 1]]), np.array([0.5, 0.25, 0.0, 1.0])) == pytest.approx(1.25)
    # p = 0 is clipped to 1e-12, not log(0)
    assert novelty(np.array([[2]]), np.array([0.5, 0.25, 0.0, 1.0])) == pytest.approx(-log2(1e-12))


def test_novelty_and_popularity_validation_branches():
    with pytest.raises(ValueError, match="pass item_popularity"):
        novelty(np.array([[0]]), np.array([3.0, 1.0]))  # raw counts
    with pytest.raises(ValueError, match="must be 1-D"):
        novelty(np.array([[0]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="item index 2 >= n_items=2"):
        novelty(np.array([[2]]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="at least one user"):
        item_popularity(np.ones((2, 2)))


def test_intra_list_diversity():
    vectors = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1]], dtype=float)
    # list [0,1,2]: sims (0,1)=1, (0,2)=0, (1,2)=0 -> 1 - 1/3
    # list [0,3,4]: (0,3)=0 (zero vector), (0,4)=1/sqrt2, (3,4)=0 -> 1 - (1/sqrt2)/3
    topk = np.array([[0, 1, 2], [0, 3, 4]])
    want = ((1 - 1 / 3) + (1 - (1 / sqrt(2)) / 3)) / 2
    assert intra_list_diversity(topk, vectors) == pytest.approx(want)
    assert intra_list_diversity(topk, vectors, chunk=1) == pytest.approx(want)
    with pytest.raises(ValueError, match="K=1"):
        intra_list_diversity(np.array([[0]]), vectors)
    with pytest.raises(ValueError, match="must be 2-D"):
        intra_list_diversity(topk, np.ones(5))
