import numpy as np
import pandas as pd
import pytest

from features.schema import DataError, validate_interactions
from features.splits import make_split


def _data(n_users=20, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        ts = rng.permutation(1000)[:per_user]
        for j, t in enumerate(ts):
            rows.append((f"u{u}", f"i{(u + j) % 30}", int(t) + 1000 * u))
    return validate_interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


def _split(df, method="temporal_user", cold=0.0, seed=0):
    return make_split(df, method, 0.2, 0.1, [0.8, 0.1, 0.1], cold, seed)


def test_temporal_user_holds_out_each_users_latest():
    df = _data()
    s = _split(df)
    assert s.sizes() == {"train": 140, "valid": 20, "test": 40}  # per user: 2 test, floor(8*0.1)->1 valid, 7 train
    for u, g in df.groupby("user_id"):
        test_ts = s.test[s.test.user_id == u].timestamp
        rest = pd.concat([s.train[s.train.user_id == u], s.valid[s.valid.user_id == u]]).timestamp
        assert test_ts.min() >= rest.max()
        valid_ts = s.valid[s.valid.user_id == u].timestamp
        assert valid_ts.min() >= s.train[s.train.user_id == u].timestamp.max()


def test_no_interaction_lost_or_duplicated():
    df = _data()
    for m in ("temporal_user", "temporal_global", "random_user"):
        s = _split(df, m)
        total = pd.concat([s.train, s.valid, s.test])
        assert len(total) == len(df)
        assert total.drop_duplicates().shape[0] == df.drop_duplicates().shape[0]


def test_temporal_global_uses_one_cut():
    s = _split(_data(), "temporal_global")
    assert s.train.timestamp.max() <= s.valid.timestamp.min()
    assert s.valid.timestamp.max() <= s.test.timestamp.min()


def test_random_user_is_recbole_811_and_deterministic():
    df = _data(per_user=10)
    a, b, c = _split(df, "random_user", seed=1), _split(df, "random_user", seed=1), _split(df, "random_user", seed=2)
    assert a.sizes() == {"train": 160, "valid": 20, "test": 20}
    pd.testing.assert_frame_equal(a.test, b.test)
    assert not a.test.equals(c.test)


def test_cold_items_are_absent_from_train_and_valid():
    s = _split(_data(), cold=0.2, seed=3)
    assert len(s.cold_items) == 6  # 20% of 30 items
    assert not s.train.item_id.isin(s.cold_items).any()
    assert not s.valid.item_id.isin(s.cold_items).any()
    assert s.test.item_id.isin(s.cold_items).any()


def test_bad_split_config():
    df = _data()
    with pytest.raises(DataError, match="unknown split method 'temporal'.*temporal_user"):
        make_split(df, "temporal", 0.2, 0.1, [0.8, 0.1, 0.1], 0.0, 0)
    with pytest.raises(DataError, match=r"split.test_share=1.5 is outside \[0, 1\)"):
        make_split(df, "temporal_user", 1.5, 0.1, [0.8, 0.1, 0.1], 0.0, 0)
    with pytest.raises(DataError, match="three non-negative numbers"):
        make_split(df, "random_user", 0.2, 0.1, [0.8, 0.2], 0.0, 0)


def test_a_split_with_an_empty_part_stops_with_the_fix():
    """Users with one or two interactions each left valid empty: evaluation then failed with a traceback."""
    df = validate_interactions(pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [1, 2]}))
    with pytest.raises(DataError, match=r"left no valid interactions \(2 interactions, 2 users; .*raise split.valid_share"):
        make_split(df, "temporal_user", 0.2, 0.1, [0.8, 0.1, 0.1], 0.0, 0)
