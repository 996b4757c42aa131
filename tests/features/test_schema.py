import pandas as pd
import pytest

from features.schema import DataError, Dataset, validate_entity_table, validate_interactions


def _inter(**cols):
    base = {"user_id": ["1", "2"], "item_id": ["a", "b"], "timestamp": [10, 20]}
    base.update(cols)
    return pd.DataFrame(base)


def test_valid_tables_normalise_ids_to_strings():
    df = validate_interactions(pd.DataFrame({"user_id": [1, 2], "item_id": [3.0, 4.0], "timestamp": ["5", "6"]}))
    assert df["user_id"].tolist() == ["1", "2"]
    assert df["item_id"].tolist() == ["3", "4"]  # exact ints, not '3.0'
    assert df["timestamp"].dtype == "int64"


def test_missing_column_names_it_and_the_fix():
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\].*data.loader.columns.timestamp"):
        validate_interactions(pd.DataFrame({"user_id": ["1"], "item_id": ["a"]}))


def test_empty_interactions():
    with pytest.raises(DataError, match="interactions table is empty"):
        validate_interactions(_inter().iloc[:0])


def test_non_numeric_timestamp_named():
    with pytest.raises(DataError, match=r"not numeric \(e.g. 'yesterday'\)"):
        validate_interactions(_inter(timestamp=["10", "yesterday"]))


def test_missing_ids_and_empty_ids():
    with pytest.raises(DataError, match="missing value"):
        validate_interactions(_inter(user_id=["1", None]))
    with pytest.raises(DataError, match="empty id"):
        validate_interactions(_inter(item_id=["a", ""]))
    with pytest.raises(DataError, match="empty id"):
        validate_interactions(_inter(item_id=["a", "  "]))


def test_ids_are_stripped_as_events_and_requests_read_them():
    df = validate_interactions(_inter(user_id=[" 1", "1 "], item_id=["a\t", "b"]))
    assert df["user_id"].tolist() == ["1", "1"] and df["item_id"].tolist() == ["a", "b"]


def test_bad_weight():
    with pytest.raises(DataError, match="weight must be finite"):
        validate_interactions(_inter(weight=[1.0, "x"]))


def test_duplicate_item_ids():
    with pytest.raises(DataError, match=r"duplicate item_id\(s\), e.g. \['a'\]"):
        validate_entity_table(pd.DataFrame({"item_id": ["a", "a", "b"]}), "item_id", "items")


def test_datetime_timestamps_become_seconds():
    df = validate_interactions(_inter(timestamp=pd.to_datetime(["1970-01-01 00:00:10", "1970-01-02 00:00:00"])))
    assert df["timestamp"].tolist() == [10, 86400]


def test_interactions_with_unlisted_items_and_users_are_kept():
    ds = Dataset("t", _inter(), pd.DataFrame({"item_id": ["a"], "genre": ["x"]}), pd.DataFrame({"user_id": ["1"]}))
    assert sorted(ds.items["item_id"]) == ["a", "b"]
    assert sorted(ds.users["user_id"]) == ["1", "2"]
    assert len(ds.interactions) == 2
