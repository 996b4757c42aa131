"""bench/cold_attributes.py: popularity among users who share an attribute, a user's own rows left out."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bench.cold_attributes import cold_scores, markdown, run
from tests.conftest import TINY_DATA


def test_group_popularity_leaves_the_users_own_interactions_out():
    seen = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=np.float32))
    codes = np.array([0, 1, 1, -1])  # user 3: attribute unknown
    scores = cold_scores(seen, np.array([0, 1, 3]), {"segment": codes}, global_weight=0.0)
    np.testing.assert_allclose(scores["segment"][0], [0, 0, 0])  # alone in its group: nothing from others
    np.testing.assert_allclose(scores["segment"][1], [0, 0.5, 0.5])  # user 2's items only
    np.testing.assert_allclose(scores["segment"][2], [0, 0, 0])  # unknown: no group
    np.testing.assert_allclose(scores["global"][0], [0.4, 0.4, 0.2])
    assert set(scores) == {"global", "segment", "all"}


def test_runs_on_the_tiny_synthetic_data():
    table = run([o for o in TINY_DATA if not o.startswith(("logger", "trainer"))], bands=3, global_weight=0.5)
    assert table["strategy"].iloc[0] == "global" and table["minus global"].iloc[0] == 0.0
    assert {"age", "all"} <= set(table["strategy"]) and table["ndcg@10"].between(0, 1).all()
    assert markdown(table).startswith("| strategy | users | ndcg@10 | minus global | se |")
