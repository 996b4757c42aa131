import numpy as np
import pandas as pd
import pytest

from features.encoders import UNBOUNDED_Z, FeatureSet, context_from_timestamp
from features.schema import DataError

WHERE = "configs/data/test.yaml"
BLOCK = {
    "user": {"user_id": {"kind": "categorical"}, "age": {"kind": "numeric"}},
    "item": {
        "item_id": {"kind": "categorical"},
        "genres": {"kind": "multi_categorical", "sep": "|", "max_len": 3},
        "title": {"kind": "text", "max_len": 4},
    },
    "context": {"hour": {"kind": "context"}, "day_of_week": {"kind": "context"}},
}


def _tables():
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [20.0, 40.0, np.nan]})
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "genres": ["x|y", "y", "z"], "title": ["The Big Dog", "big cat", "Zebra!"]}
    )
    train = pd.DataFrame({"user_id": ["u1", "u2", "u1"], "item_id": ["a", "b", "b"], "timestamp": [0, 3600, 90000]})
    return users, items, train


def test_fit_on_train_only_and_unknowns_go_to_oov(tmp_path):
    users, items, train = _tables()
    fs = FeatureSet.from_config(BLOCK, WHERE)
    fs.check_columns(users, items, WHERE)
    fs.fit(users, items, train)
    it = fs.transform("item", items)
    # item c is not in train: its id, its genre 'z' and its title token are out of vocabulary.
    assert it["item_id"][2] == 0 and it["item_id"][0] > 0 and it["item_id"][1] > 0
    assert it["genres"][2].tolist() == [1, 0, 0]  # OOV then padding
    assert min(it["genres"][0][:2]) >= 2 and it["genres"][0][2] == 0  # x, y known; padded
    assert it["title"][2].tolist() == [1, 0, 0, 0]  # 'zebra' unseen in train titles
    assert min(it["title"][0][:3]) >= 2  # 'the big dog' all seen
    us = fs.transform("user", users)
    assert us["user_id"][2] == 0  # u3 has no train interaction
    # numeric: standardised with train users (20, 40) -> -1, 1; missing -> 0
    np.testing.assert_allclose(us["age"], [-1.0, 1.0, 0.0])
    assert fs.cardinalities("item")["item_id"] == 3  # two known ids + OOV


def test_numeric_values_are_clipped_to_the_widened_training_range_and_absurd_ones_refused():
    """An absurd number (a catalog record, a request attribute) once went through as inf. The encoding
    is clipped to the training range widened by its width; records and requests may send any number
    within UNBOUNDED_Z standard deviations of the mean (a new item above every training one is fine)."""
    users, items, train = _tables()
    fs = FeatureSet.from_config(BLOCK, WHERE).fit(users, items, train)
    enc = fs.encoders["user"]["age"]
    assert enc.z_bounds() == (-3.0, 3.0)  # train ages 20, 40 -> z -1, 1, widened by 2 each side
    assert enc.value_range() == (30.0 - 10.0 * UNBOUNDED_Z, 30.0 + 10.0 * UNBOUNDED_Z)  # mean 30, std 10
    assert fs.numeric_ranges("user") == {"age": enc.value_range()} and fs.numeric_ranges("item") == {}
    z = fs.transform("user", pd.DataFrame({"user_id": ["u"] * 5, "age": [60.0, 61.0, 1e308, -3e38, np.inf]}))["age"]
    np.testing.assert_allclose(z, [3.0, 3.0, 3.0, -3.0, 0.0])  # inf: missing, as NaN
    assert np.isfinite(z).all() and z.dtype == np.float32
    logged = FeatureSet.from_config({"user": {"spend": {"kind": "numeric", "log1p": True}}}, WHERE)
    logged.fit(pd.DataFrame({"user_id": ["u1", "u2"], "spend": [0.0, np.e - 1]}), items,
               pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [0, 1]}))
    assert logged.encoders["user"]["spend"].value_range() == (-np.inf, np.inf)  # log1p: nothing is absurd
    empty = FeatureSet.from_config(BLOCK, WHERE).fit(users.assign(age=np.nan), items, train)  # no number in training
    e = empty.encoders["user"]["age"]
    assert "lo" not in e.state and e.z_bounds() == (-UNBOUNDED_Z, UNBOUNDED_Z)
    assert e.value_range() == (-UNBOUNDED_Z, UNBOUNDED_Z)  # mean 0, std 1: ordinary values are accepted
    old = FeatureSet.from_config(BLOCK, WHERE).fit(users, items, train)  # fit before the range was kept
    for e in old.encoders["user"].values():
        e.state = {k: v for k, v in e.state.items() if k not in ("lo", "hi")}
    assert old.encoders["user"]["age"].z_bounds() == (-UNBOUNDED_Z, UNBOUNDED_Z)
    assert np.isfinite(old.transform("user", pd.DataFrame({"user_id": ["u"], "age": [1e308]}))["age"]).all()


def test_save_load_round_trip(tmp_path):
    users, items, train = _tables()
    fs = FeatureSet.from_config(BLOCK, WHERE).fit(users, items, train)
    fs.save(tmp_path / "enc.json")
    back = FeatureSet.load(tmp_path / "enc.json")
    new_items = pd.DataFrame({"item_id": ["b", "zzz"], "genres": ["y|q", None], "title": ["big dog", None]})
    for g, table in (("item", new_items), ("user", users)):
        a, b = fs.transform(g, table), back.transform(g, table)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_context_from_timestamp():
    # 0 = Thursday 1970-01-01 00:00 UTC; 90000 s = Friday 01:00
    assert context_from_timestamp(np.array([0, 90000]), "hour").tolist() == [1, 2]
    assert context_from_timestamp(np.array([0, 90000]), "day_of_week").tolist() == [4, 5]
    assert context_from_timestamp(np.array([np.nan]), "hour").tolist() == [0]
    ts = np.array([-90000, -1, 0, 3599, 3600, 86399, 86400, 1_700_000_000, 2**40], dtype=np.int64)
    for field in ("hour", "day_of_week"):  # whole seconds take a path of their own: the same values (up to 2**53 s,
        # where floats stop holding every second)
        assert context_from_timestamp(ts, field).tolist() == context_from_timestamp(ts.astype(float), field).tolist()
        assert context_from_timestamp(ts, field).dtype == np.int64
        zero_d = context_from_timestamp(np.int64(90000), field)  # one timestamp: a 0-d array either way
        assert isinstance(zero_d, np.ndarray) and zero_d.shape == () and zero_d == context_from_timestamp(90000.0, field)


def test_bad_feature_config():
    with pytest.raises(DataError, match=r"kind 'categoric'.*known kinds"):
        FeatureSet.from_config({"user": {"age": {"kind": "categoric"}}}, WHERE)
    with pytest.raises(DataError, match=r"unknown option\(s\) \['maxlen'\]"):
        FeatureSet.from_config({"item": {"t": {"kind": "text", "maxlen": 3}}}, WHERE)
    with pytest.raises(DataError, match="unknown feature group"):
        FeatureSet.from_config({"items": {}}, WHERE)
    with pytest.raises(DataError, match="must be one of"):
        FeatureSet.from_config({"context": {"month": {"kind": "context"}}}, WHERE)
    users, items, _ = _tables()
    fs = FeatureSet.from_config({"user": {"agee": {"kind": "numeric"}}}, WHERE)
    with pytest.raises(DataError, match=r"unknown feature 'agee' .* in configs/data/test.yaml; known user columns: user_id, age"):
        fs.check_columns(users, items, WHERE)
