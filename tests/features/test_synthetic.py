"""The synthetic generator plants the structure it promises: popularity, taste, context, cold items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import Dataset
from features.synthetic import generate_synthetic

PARAMS = dict(
    n_users=800, n_items=1500, n_interactions=40_000, n_categories=12, latent_dim=8,
    popularity_exponent=1.0, taste_concentration=0.3, cold_item_share=0.1,
    start_time=1_704_067_200, days=28, seed=11,
)


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate_synthetic(**PARAMS)


@pytest.fixture(scope="module")
def joined(ds) -> pd.DataFrame:
    """Interactions with the user's segment, the item's category and created_at, and the UTC hour."""
    out = ds.interactions.merge(ds.users[["user_id", "segment"]], on="user_id")
    out = out.merge(ds.items[["item_id", "category", "created_at"]], on="item_id")
    out["hour"] = (out["timestamp"] % 86_400) // 3600
    return out


def test_same_seed_same_tables_other_seed_differs():
    a, b = generate_synthetic(**PARAMS), generate_synthetic(**PARAMS)
    for table in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table))
    assert a.meta == b.meta
    c = generate_synthetic(**{**PARAMS, "seed": 12})
    assert not a.interactions["item_id"].equals(c.interactions["item_id"])


def test_column_contract(ds):
    it, items, users = ds.interactions, ds.items, ds.users
    assert list(it.columns) == ["user_id", "item_id", "timestamp"] and len(it) == PARAMS["n_interactions"]
    assert list(items.columns) == ["item_id", "category", "genres", "price", "quality", "title", "created_at"]
    assert list(users.columns) == ["user_id", "age", "segment", "country"]
    assert len(items) == PARAMS["n_items"] and items["item_id"].is_unique and items["item_id"].str.startswith("i").all()
    assert len(users) == PARAMS["n_users"] and users["user_id"].is_unique and users["user_id"].str.startswith("u").all()
    assert it["timestamp"].dtype == np.int64 and it["timestamp"].is_monotonic_increasing
    end = PARAMS["start_time"] + PARAMS["days"] * 86_400
    assert it["timestamp"].between(PARAMS["start_time"], end - 1).all()
    genres = items["genres"].str.split("|")
    assert (genres.str[0] == items["category"]).all()
    assert genres.map(lambda g: 1 <= len(g) <= 3 and len(set(g)) == len(g)).all()
    assert items["title"].str.split(" ").str.len().between(2, 4).all()
    assert items["quality"].between(0, 1).all() and (items["price"] > 0).all()
    assert items["created_at"].dtype == np.int64 and users["age"].dtype == np.int64
    assert set(users["segment"]) == set(ds.meta["segment_categories"])
    assert items["category"].nunique() == PARAMS["n_categories"]


def test_popularity_is_skewed_by_exponent(ds):
    def top_decile_share(d: Dataset) -> float:
        counts = d.interactions["item_id"].value_counts().reindex(d.items["item_id"], fill_value=0)
        top = np.sort(counts.to_numpy())[::-1][: len(counts) // 10]
        return top.sum() / counts.sum()

    flat = generate_synthetic(**{**PARAMS, "popularity_exponent": 0.0})
    # Even with uniform popularity, peaked tastes make some items busier: compare, not only threshold.
    assert top_decile_share(ds) > 0.45
    assert top_decile_share(ds) > top_decile_share(flat) + 0.15


def test_price_and_title_words_follow_category(ds):
    items = ds.items
    level = np.log(items["price"]).groupby(items["category"]).mean()
    assert level.max() - level.min() > 1.0  # category price levels spread over log(5)..log(100)
    words = items.assign(word=items["title"].str.split(" ")).explode("word")
    categories_per_word = words.groupby("word")["category"].nunique()
    assert categories_per_word.median() == 1  # most words belong to one category's vocabulary


def test_users_concentrate_on_their_top_categories(joined):
    def top2_share(df: pd.DataFrame) -> float:
        counts = df.groupby(["user_id", "category"]).size()
        active = counts.groupby(level=0).sum() >= 20
        per_user = counts.groupby(level=0).apply(lambda c: np.sort(c.to_numpy())[-2:].sum() / c.sum())
        return float(per_user[active].mean())

    rng = np.random.default_rng(0)
    shuffled = joined.assign(user_id=rng.permutation(joined["user_id"].to_numpy()))
    assert top2_share(joined) > 0.6
    assert top2_share(joined) > top2_share(shuffled) + 0.25


def test_segment_predicts_category(ds, joined):
    for segment, favoured in ds.meta["segment_categories"].items():
        in_favoured = joined["category"].isin(favoured)
        mine = in_favoured[joined["segment"] == segment].mean()
        others = in_favoured[joined["segment"] != segment].mean()
        assert mine > 1.5 * others, (segment, mine, others)


def test_cold_items_are_in_catalog_without_interactions(ds):
    cold = ds.meta["cold_items"]
    assert len(cold) == int(PARAMS["cold_item_share"] * PARAMS["n_items"])
    assert set(cold) <= set(ds.items["item_id"])
    assert not ds.interactions["item_id"].isin(cold).any()


def test_hour_of_day_differs_by_segment(joined):
    hist = pd.crosstab(joined["segment"], joined["hour"], normalize="index")
    lunch, evening, night = hist.loc["lunchtime"], hist.loc["evening"], hist.loc["night_owl"]
    assert lunch[11:14].sum() > 0.45 and evening[11:14].sum() < 0.15
    assert evening[19:23].sum() > 0.45 and night[[23, 0, 1, 2]].sum() > 0.45
    assert 0.5 * (lunch - evening).abs().sum() > 0.5  # total variation distance


def test_weekend_rhythm_differs_by_segment(joined):
    weekend = ((joined["timestamp"] // 86_400 + 3) % 7) >= 5
    share = weekend.groupby(joined["segment"]).mean()
    assert share["weekender"] > 0.45 and share["lunchtime"] < 0.2


def test_category_leans_toward_the_hour(ds, joined):
    parts = ["night", "morning", "afternoon", "evening"]
    cat_part = joined["category"].map({c: parts.index(p) for c, p in ds.meta["category_daypart"].items()})
    cat_part = cat_part.to_numpy()
    hour_part = (joined["hour"] // 6).to_numpy()
    rng = np.random.default_rng(0)
    baseline = hour_part.copy()
    for idx in joined.groupby("segment").indices.values():  # shuffle hours within segment only
        baseline[idx] = rng.permutation(hour_part[idx])
    assert (cat_part == hour_part).mean() > (cat_part == baseline).mean() + 0.015


def test_interactions_follow_item_creation(joined):
    assert (joined["timestamp"] >= joined["created_at"]).all()
    new = joined["created_at"] > PARAMS["start_time"]
    assert new.mean() > 0.01  # items released during the window are consumed too


@pytest.mark.parametrize(
    "overrides",
    [
        dict(n_categories=1, n_items=1, cold_item_share=0.0, latent_dim=1),
        dict(n_categories=30, n_items=7, latent_dim=16, days=1, start_time=1_704_150_000),
        dict(cold_item_share=0.95, popularity_exponent=3.0, taste_concentration=0.001),
    ],
)
def test_edge_sizes_still_valid(overrides):
    d = generate_synthetic(**{**PARAMS, "n_interactions": 2000, **overrides})
    assert len(d.interactions) == 2000
    assert d.interactions["item_id"].isin(d.items["item_id"]).all() and len(d.items) == d.meta["params"]["n_items"]
    assert not d.interactions["item_id"].isin(d.meta["cold_items"]).any()


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n_users", 0), ("n_items", 0), ("n_items", 2.5), ("n_interactions", -1), ("n_categories", 0),
        ("latent_dim", 0), ("days", 0), ("start_time", -5), ("popularity_exponent", -0.5),
        ("popularity_exponent", float("nan")), ("taste_concentration", 0.0), ("taste_concentration", float("inf")),
        ("cold_item_share", 1.0), ("cold_item_share", -0.1), ("n_users", True),
    ],
)
def test_bad_params_name_the_parameter(param, value):
    with pytest.raises(ValueError, match=param):
        generate_synthetic(**{**PARAMS, param: value})
