"""Deterministic train / valid / test splits of an interactions table.

- ``temporal_user`` (default): per user, the last ``test_share`` of interactions by time are test;
  the last ``valid_share`` of what remains is validation.
- ``temporal_global``: one time cut for everyone (test after it), validation just before it.
- ``random_user``: per user random ``ratios`` (default 8:1:1, RecBole's protocol), seeded.

Validation is always carved from train, never from test. ``cold_item_share`` > 0 holds a random
share of items out of train and valid entirely: all their interactions go to test, and their ids
are listed in ``Split.cold_items`` (the cold-item slice of every report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.schema import DataError

METHODS = ("temporal_user", "temporal_global", "random_user")


@dataclass
class Split:
    """The three parts of a split, each with the interactions table's columns."""

    name: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    cold_items: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    # item_id as tie-breaker makes equal timestamps deterministic.
    return df.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)


def _tail_counts(n: np.ndarray, share: float) -> np.ndarray:
    """How many of each user's last interactions go to the held-out part: floor(n*share), at least
    1 when the user has 3 or more, never all of them."""
    k = np.floor(n * share).astype(np.int64)
    k = np.where((k == 0) & (n >= 3) & (share > 0), 1, k)
    return np.minimum(k, np.maximum(n - 1, 0))


def _per_user_tail(df: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split an ordered frame into (head, tail) with the tail being each user's last share."""
    if len(df) == 0:
        return df, df
    grp = df.groupby("user_id", sort=False)
    n = grp["item_id"].transform("size").to_numpy()
    pos = grp.cumcount().to_numpy()
    tail = pos >= n - _tail_counts(n, share)
    return df[~tail].reset_index(drop=True), df[tail].reset_index(drop=True)


def _recbole_counts(tot: np.ndarray, ratios: list[float]) -> np.ndarray:
    """RecBole's split_by_ratio counts per group (valid/test get one when their share rounds to 0)."""
    r = np.asarray(ratios, dtype=np.float64) / np.sum(ratios)
    cnt = np.floor(r[None, :] * tot[:, None]).astype(np.int64)
    cnt[:, 0] = tot - cnt[:, 1:].sum(axis=1)
    for j in range(1, len(r)):
        col = len(r) - j
        bump = (cnt[:, 0] > 1) & (r[col] * tot > 0) & (r[col] * tot < 1)
        cnt[bump, col] += 1
        cnt[bump, 0] -= 1
    return cnt


def _random_user(df: pd.DataFrame, ratios: list[float], seed: int) -> tuple[pd.DataFrame, ...]:
    rng = np.random.default_rng(seed)
    df = df.iloc[rng.permutation(len(df))].sort_values("user_id", kind="stable").reset_index(drop=True)
    grp = df.groupby("user_id", sort=False)
    n = grp["item_id"].transform("size").to_numpy()
    pos = grp.cumcount().to_numpy()
    cnt = _recbole_counts(n, ratios)  # (rows, 3): the row's user's counts
    part = np.where(pos < cnt[:, 0], 0, np.where(pos < cnt[:, 0] + cnt[:, 1], 1, 2))
    return tuple(_ordered(df[part == p]) for p in range(3))


def make_split(
    interactions: pd.DataFrame,
    method: str,
    test_share: float,
    valid_share: float,
    ratios: list[float],
    cold_item_share: float,
    seed: int,
) -> Split:
    """Split interactions deterministically.

    Args:
        interactions: a validated interactions table.
        method: one of ``temporal_user``, ``temporal_global``, ``random_user``.
        test_share: share of each user's (or all) interactions held out as test (temporal methods).
        valid_share: share of the remaining train held out as validation (temporal methods).
        ratios: train/valid/test ratios for ``random_user``.
        cold_item_share: share of items whose interactions all go to test.
        seed: seed for random choices (random split, cold items).
    """
    if method not in METHODS:
        raise DataError(f"unknown split method {method!r}; known: {', '.join(METHODS)} (configs/split/*.yaml).")
    for nm, v in (("test_share", test_share), ("valid_share", valid_share), ("cold_item_share", cold_item_share)):
        if not 0.0 <= float(v) < 1.0:
            raise DataError(f"split.{nm}={v} is outside [0, 1); use a share such as 0.2.")
    if method == "random_user" and (len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0):
        raise DataError(f"split.ratios={list(ratios)} must be three non-negative numbers (train, valid, test), e.g. [0.8, 0.1, 0.1].")

    df = _ordered(interactions)
    cold = np.array([], dtype=object)
    if cold_item_share > 0:
        items = np.sort(df["item_id"].unique().astype(str))
        rng = np.random.default_rng(seed + 1)
        n_cold = int(round(cold_item_share * len(items)))
        cold = np.sort(rng.choice(items, size=n_cold, replace=False)).astype(object)
    is_cold = df["item_id"].isin(cold).to_numpy()
    warm, cold_rows = df[~is_cold].reset_index(drop=True), df[is_cold].reset_index(drop=True)

    if method == "temporal_user":
        train, test = _per_user_tail(warm, test_share)
        train, valid = _per_user_tail(train, valid_share)
    elif method == "temporal_global":
        ts = warm["timestamp"].to_numpy()
        t_test = np.quantile(ts, 1.0 - test_share) if test_share > 0 else np.inf
        t_valid = np.quantile(ts, (1.0 - test_share) * (1.0 - valid_share)) if valid_share > 0 else t_test
        train = warm[ts < t_valid].reset_index(drop=True)
        valid = warm[(ts >= t_valid) & (ts < t_test)].reset_index(drop=True)
        test = warm[ts >= t_test].reset_index(drop=True)
    else:
        train, valid, test = _random_user(warm, list(ratios), seed)
    if len(cold_rows):
        test = _ordered(pd.concat([test, cold_rows], ignore_index=True))
    if len(train) == 0:
        raise DataError(f"split {method!r} left no training interactions; lower test_share/valid_share or use more data.")
    for part, rows, share in (("valid", valid, "valid_share"), ("test", test, "test_share")):
        if len(rows) == 0 and (float(valid_share if part == "valid" else test_share) > 0 or method == "random_user"):
            raise DataError(f"split {method!r} left no {part} interactions ({len(df):,} interactions, "
                            f"{df['user_id'].nunique():,} users; a user with too few interactions keeps them all in "
                            f"train); use more data, or raise split.{share if method != 'random_user' else 'ratios'}.")
    return Split(method, train, valid, test, cold)
