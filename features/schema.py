"""The data contract: a dataset is three tables, validated before any work.

interactions: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64 seconds), optional ``weight``.
items:        ``item_id`` (str, unique) + attribute columns.
users:        ``user_id`` (str, unique) + attribute columns.

External ids are strings everywhere a user can see them; dense integer indices are internal
(see :mod:`features.vocab`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


log = logging.getLogger(__name__)
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, as requests (serving/request.py)


class DataError(ValueError):
    """Bad input data: the message names the problem and the fix."""


@dataclass
class Dataset:
    """Three validated tables plus a name (for reports) and free-form metadata."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.interactions = validate_interactions(self.interactions, self.name)
        self.items = validate_entity_table(self.items, "item_id", "items", self.name)
        self.users = validate_entity_table(self.users, "user_id", "users", self.name)
        unknown_items = ~fast_isin(self.interactions["item_id"], self.items["item_id"])
        if unknown_items.any():
            # An interaction with an item that has no row is kept: the item gets a row of
            # missing attributes, so no data is silently dropped.
            extra = pd.DataFrame({"item_id": self.interactions.loc[unknown_items, "item_id"].unique()})
            if len(self.items):
                log.warning("%s: %d interacted item(s) have no row in the items table (e.g. %r); they are added "
                            "with missing attributes", self.name, len(extra), extra["item_id"].iloc[0])
            self.items = pd.concat([self.items, extra], ignore_index=True)
        unknown_users = ~fast_isin(self.interactions["user_id"], self.users["user_id"])
        if unknown_users.any():
            extra = pd.DataFrame({"user_id": self.interactions.loc[unknown_users, "user_id"].unique()})
            self.users = pd.concat([self.users, extra], ignore_index=True)

    def summary(self) -> str:
        it = self.interactions
        return (
            f"{self.name}: {len(it):,} interactions, {it['user_id'].nunique():,} users, "
            f"{it['item_id'].nunique():,} items with interactions, {len(self.items):,} items in catalog"
        )


def fast_isin(values: pd.Series, universe: pd.Series) -> np.ndarray:
    """``values.isin(universe)`` for string columns via Arrow (4x faster on millions of ids)."""
    return pc.is_in(pa.array(values.astype(str).array), value_set=pa.array(universe.astype(str).array)).to_numpy(
        zero_copy_only=False
    )


def _require_columns(df: pd.DataFrame, required: list[str], table: str, source: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: {table} table is missing column(s) {missing}; found {list(df.columns)}. "
            f"Rename the columns or map them in the data config (with data=custom: data.loader.columns.{missing[0]}=<your column>)."
        )


# In an id: a NUL, a tab or a line break is no one's id; also Unicode's line breaks (NEL U+0085 among
# the C1 controls, U+2028, U+2029), which split a line in many readers as "\n" does.
# (U+2028 / U+2029 as the characters themselves: pyarrow's regex engine has no \u escape)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f" "\u2028\u2029]")


MAX_ID_LENGTH = 256  # characters of an id: data, requests, events and catalog records alike


def with_control_characters(ids: pd.Series) -> pd.Series:
    """(bool) which ids hold a :data:`CONTROL_CHARACTERS` character (missing ones: False)."""
    return ids.astype(str).str.contains(CONTROL_CHARACTERS.pattern, regex=True).where(ids.notna(), False).astype(bool)


def _as_str_ids(s: pd.Series, col: str, table: str, source: str) -> pd.Series:
    if s.isna().any():
        n = int(s.isna().sum())
        raise DataError(f"{source}: {table}.{col} has {n} missing value(s); every row needs an id.")
    if pd.api.types.is_bool_dtype(s) or (s.dtype == object and s.map(lambda v: isinstance(v, (bool, np.bool_))).any()):
        raise DataError(f"{source}: {table}.{col} holds booleans; ids must be strings or integers (True would be "
                        "the id 'True').")
    if pd.api.types.is_float_dtype(s):
        # ids read as floats (e.g. from CSV with blanks) would render as '12.0': convert exactly.
        if not np.all(np.mod(s.to_numpy(), 1) == 0):
            raise DataError(f"{source}: {table}.{col} holds non-integer numbers; ids must be strings or integers.")
        s = s.astype(np.int64)
    out = s.astype(str).str.strip()  # as events, catalog records and requests read ids: " 9 " is user 9
    if (out.str.len() == 0).any():
        raise DataError(f"{source}: {table}.{col} has empty id(s); every row needs a non-empty id.")
    distinct = pd.Series(pd.unique(out))  # each id checked once (10M rows hold ~1M ids)
    long = distinct.str.len() > MAX_ID_LENGTH
    if long.any():  # trained, such an id could never be asked for: requests, events and the catalog refuse it
        raise DataError(f"{source}: {table}.{col} has {int(long.sum())} id(s) longer than {MAX_ID_LENGTH} characters "
                        f"(e.g. {distinct[long].iloc[0][:40]!r}..., {len(distinct[long].iloc[0])} characters): requests, "
                        "events and catalog records refuse such ids, so it could never be served; shorten or map them.")
    control = with_control_characters(distinct)
    if control.any():
        raise DataError(f"{source}: {table}.{col} has {int(control.sum())} id(s) with control characters (e.g. "
                        f"{distinct[control].iloc[0]!r}: a NUL or a line break inside an id); fix or drop those rows.")
    return out


def warn_nonpositive_weights(weight: pd.Series, source: str, rows: str = "interaction(s)") -> None:
    """Say how many rows carry weight <= 0 (a "dislike"): weights do not weigh training or the served
    state, so every row counts as a positive (train.py's data and recsys-refresh's table alike)."""
    n = int((pd.to_numeric(weight, errors="coerce") <= 0).sum())
    if n:
        log.warning("%s: %d %s have weight <= 0; every interaction counts as a positive (implicit feedback: "
                    "weight does not weigh training): drop dislikes first", source, n, rows)


def validate_interactions(df: pd.DataFrame, source: str = "dataset") -> pd.DataFrame:
    """Check and normalise an interactions table (copy); raise DataError naming any problem."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: interactions must be a pandas DataFrame, got {type(df).__name__}.")
    _require_columns(df, ["user_id", "item_id", "timestamp"], "interactions", source)
    if len(df) == 0:
        raise DataError(f"{source}: interactions table is empty; a dataset needs at least one interaction.")
    out = pd.DataFrame(
        {
            "user_id": _as_str_ids(df["user_id"], "user_id", "interactions", source),
            "item_id": _as_str_ids(df["item_id"], "item_id", "interactions", source),
        }
    )
    ts = df["timestamp"]
    if ts.isna().any():  # before any conversion: a datetime's NaT would become -2**63
        raise DataError(f"{source}: interactions.timestamp has {int(ts.isna().sum())} missing value(s).")
    if pd.api.types.is_bool_dtype(ts):
        raise DataError(f"{source}: interactions.timestamp holds booleans; it must be Unix seconds.")
    fractional = np.zeros(len(ts), bool)  # a fraction of a second: truncated to whole seconds, said below
    if pd.api.types.is_datetime64_any_dtype(ts):
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert(None)
        fractional = (ts != ts.dt.floor("s")).to_numpy()
        ts = ts.dt.as_unit("s").astype("int64")
    elif not pd.api.types.is_numeric_dtype(ts):
        conv = pd.to_numeric(ts, errors="coerce")
        bad = conv.isna() & ts.notna()
        if bad.any():
            example = ts[bad].iloc[0]
            raise DataError(
                f"{source}: interactions.timestamp must be integer seconds; {int(bad.sum())} value(s) are "
                f"not numeric (e.g. {example!r}). Convert them to Unix seconds first."
            )
        ts = conv
    seconds = ts.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(seconds)):
        raise DataError(f"{source}: interactions.timestamp has non-finite values.")
    if (seconds < 0).any():  # -1 means "none" in the feature tables
        raise DataError(f"{source}: interactions.timestamp has {int((seconds < 0).sum())} negative value(s) "
                        f"(e.g. {seconds[seconds < 0][0]:g}); it must be Unix seconds >= 0.")
    if (seconds > MAX_TIMESTAMP).any():
        raise DataError(f"{source}: interactions.timestamp has {int((seconds > MAX_TIMESTAMP).sum())} value(s) after "
                        f"the year 9999 (e.g. {seconds[seconds > MAX_TIMESTAMP][0]:g}); milliseconds? Divide by 1000: "
                        "timestamps are Unix seconds.")
    fractional = fractional | (seconds != np.floor(seconds))
    if fractional.any():
        log.warning("%s: %d timestamp(s) have a fraction of a second (e.g. %s); truncated to whole Unix seconds, "
                    "the resolution of the model's time features and of the temporal split", source,
                    int(fractional.sum()), df["timestamp"].iloc[int(np.argmax(fractional))])
    out["timestamp"] = ts.astype(np.int64).to_numpy()
    if len(out) > 1 and out["timestamp"].nunique() == 1:
        log.warning("%s: every interaction has the same timestamp (%d): temporal splits and the recency features "
                    "cannot tell them apart", source, out["timestamp"].iloc[0])
    if "weight" in df.columns:
        w = pd.to_numeric(df["weight"], errors="coerce")
        if w.isna().any() or not np.all(np.isfinite(w.to_numpy(dtype=np.float64))):
            raise DataError(f"{source}: interactions.weight must be finite numbers; found missing or non-numeric values.")
        out["weight"] = w.astype(np.float32).to_numpy()
        warn_nonpositive_weights(w, source)
    for c in df.columns:
        if c not in out.columns:
            out[c] = df[c].to_numpy()
    out = out.reset_index(drop=True)
    dup = out.duplicated(["user_id", "item_id", "timestamp"])
    if dup.any():  # the same event twice: as the event log dedupes it
        log.warning("%s: dropped %d duplicate interaction(s) (the same user, item and timestamp as an earlier "
                    "row; the first is kept)", source, int(dup.sum()))
        out = out[~dup.to_numpy()].reset_index(drop=True)
    repeats = int(out.duplicated(["user_id", "item_id"]).sum())
    if repeats:
        log.warning("%s: %d interaction(s) repeat a (user, item) pair at another time; kept. A repeat that a split "
                    "puts in valid or test cannot be recommended (seen items are excluded), which lowers the "
                    "metrics: keep one row per pair if repeats are not what you want to predict", source, repeats)
    return out


def validate_entity_table(df: pd.DataFrame, key: str, table: str, source: str = "dataset") -> pd.DataFrame:
    """Check an items or users table: key column present, non-empty, unique string ids."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: {table} must be a pandas DataFrame, got {type(df).__name__}.")
    _require_columns(df, [key], table, source)
    out = df.copy()
    if len(out) == 0:
        out[key] = out[key].astype(str)
        return out.reset_index(drop=True)
    out[key] = _as_str_ids(out[key], key, table, source)
    dup = out[key].duplicated(keep=False)
    if dup.any():
        examples = sorted(out.loc[dup, key].unique())[:5]
        raise DataError(
            f"{source}: {table} table has {int(out[key].duplicated().sum())} duplicate {key}(s), e.g. {examples}; "
            f"each {key} must appear once. Deduplicate the table before loading."
        )
    return out.reset_index(drop=True)
