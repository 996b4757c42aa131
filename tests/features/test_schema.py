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


def test_ids_with_control_characters_or_booleans_are_refused():
    """Found by a probe: "196\\x00" was a new user, and a boolean column gave the users "True" / "False"."""
    with pytest.raises(DataError, match=r"interactions.user_id has 1 id\(s\) with control characters \(e.g. '1\\x00'"):
        validate_interactions(_inter(user_id=["1\x00", "2"]))
    with pytest.raises(DataError, match="interactions.item_id has 1 id"):
        validate_interactions(_inter(item_id=["a\nb", "b"]))
    with pytest.raises(DataError, match="interactions.user_id has 1 id\\(s\\) longer than 256 characters .*could never be served"):
        validate_interactions(_inter(user_id=["u" * 400, "2"]))  # trained, but refused by every request (a probe)
    validate_interactions(_inter(user_id=["u" * 256, "2"]))
    for line_break in ("\u0085", "\u2028", "\u2029"):  # Unicode's line breaks too (found by a probe of the server)
        with pytest.raises(DataError, match="interactions.item_id has 1 id"):
            validate_interactions(_inter(item_id=[f"a{line_break}b", "b"]))
    with pytest.raises(DataError, match="interactions.user_id holds booleans"):
        validate_interactions(_inter(user_id=[True, False]))
    with pytest.raises(DataError, match="holds booleans"):
        validate_interactions(_inter(user_id=pd.Series(["1", True], dtype=object)))


def test_bad_weight():
    with pytest.raises(DataError, match="weight must be finite"):
        validate_interactions(_inter(weight=[1.0, "x"]))


def test_duplicate_item_ids():
    with pytest.raises(DataError, match=r"duplicate item_id\(s\), e.g. \['a'\]"):
        validate_entity_table(pd.DataFrame({"item_id": ["a", "a", "b"]}), "item_id", "items")


def test_datetime_timestamps_become_seconds():
    df = validate_interactions(_inter(timestamp=pd.to_datetime(["1970-01-01 00:00:10", "1970-01-02 00:00:00"])))
    assert df["timestamp"].tolist() == [10, 86400]


def test_fractions_of_a_second_are_truncated_and_said(caplog):
    """Found by a CLI probe: 10.9 became 10 without a word. The model's time is whole seconds."""
    with caplog.at_level("WARNING"):
        df = validate_interactions(_inter(timestamp=[10.9, 20.0]), "f.csv")
    assert df["timestamp"].tolist() == [10, 20]
    assert "f.csv: 1 timestamp(s) have a fraction of a second (e.g. 10.9); truncated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        df = validate_interactions(_inter(timestamp=pd.to_datetime(["1970-01-01 00:00:10.5", "1970-01-01 00:00:20.0"])))
    assert df["timestamp"].tolist() == [10, 20] and "1 timestamp(s) have a fraction of a second" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        validate_interactions(_inter(timestamp=["10", "20.0"]))
    assert "fraction" not in caplog.text


def test_interactions_with_unlisted_items_and_users_are_kept():
    ds = Dataset("t", _inter(), pd.DataFrame({"item_id": ["a"], "genre": ["x"]}), pd.DataFrame({"user_id": ["1"]}))
    assert sorted(ds.items["item_id"]) == ["a", "b"]
    assert sorted(ds.users["user_id"]) == ["1", "2"]
    assert len(ds.interactions) == 2


def test_timestamps_that_are_not_unix_seconds_stop_with_the_fix():
    nat = _inter(timestamp=pd.to_datetime(["2020-01-01", None]))
    with pytest.raises(DataError, match="timestamp has 1 missing value"):  # NaT once became -2**63
        validate_interactions(nat)
    with pytest.raises(DataError, match="holds booleans"):
        validate_interactions(_inter(timestamp=[True, False]))
    with pytest.raises(DataError, match=r"1 negative value\(s\) \(e.g. -5\)"):
        validate_interactions(_inter(timestamp=[10, -5]))
    with pytest.raises(DataError, match="after the year 9999 .*milliseconds\\? Divide by 1000"):
        validate_interactions(_inter(timestamp=[1_600_000_000_000, 1_600_000_001_000]))
    with pytest.raises(DataError, match="after the year 9999"):
        validate_interactions(_inter(timestamp=[1e20, 10]))  # once overflowed to -2**63


def test_duplicates_are_dropped_and_repeats_and_weights_counted(caplog):
    df = pd.DataFrame({"user_id": ["1", "1", "1", "2"], "item_id": ["a", "a", "a", "b"],
                       "timestamp": [10, 10, 20, 10], "weight": [1.0, 1.0, -1.0, 0.0]})
    with caplog.at_level("WARNING", logger="features.schema"):
        out = validate_interactions(df)
    assert out["timestamp"].tolist() == [10, 20, 10]  # the exact duplicate is gone, the repeat kept
    text = caplog.text
    assert "dropped 1 duplicate interaction(s)" in text and "1 interaction(s) repeat a (user, item) pair" in text
    assert "2 interaction(s) have weight <= 0" in text
    with caplog.at_level("WARNING", logger="features.schema"):
        validate_interactions(_inter(timestamp=[5, 5]))
    assert "every interaction has the same timestamp (5)" in caplog.text
