"""Feature encoders: declared in config, fit on the training split only, saved and loaded unchanged.

Kinds (``data.features.<entity>.<name>.kind``):
- ``categorical``: one value -> int64 index; 0 is out-of-vocabulary / missing.
- ``multi_categorical``: ``sep``-joined values -> (max_len,) int64; 0 pad, 1 out-of-vocabulary.
- ``text``: lower-cased word tokens -> (max_len,) int64; 0 pad, 1 out-of-vocabulary.
- ``numeric``: float standardised with train mean/std (optional ``log1p``); missing -> 0. The
  encoding is clipped to the training range widened by its own width (at least one std) on each
  side (:meth:`FeatureEncoder.z_bounds`); a catalog record or a request attribute more than
  ``UNBOUNDED_Z`` standard deviations from the training mean is refused
  (:meth:`FeatureEncoder.value_range`: an absurd number once reached the towers as inf).
- ``context``: derived from a timestamp: ``hour`` (1..24) or ``day_of_week`` (1..7); 0 unknown.

Unknown values never raise: they map to the out-of-vocabulary slot.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import DataError

KINDS = ("categorical", "multi_categorical", "text", "numeric", "context")
CONTEXT_FIELDS = ("hour", "day_of_week")
PAD, OOV = 0, 1
SMALL_BATCH = 32  # up to this many values, categorical lookups go through a dict (no pandas index per call)
UNBOUNDED_Z = 1e6  # std from the mean: a numeric value beyond is refused from a record or request (absurd, not new)
_TOKEN = re.compile(r"[a-z0-9']+")


@dataclass
class FeatureSpec:
    """One declared feature."""

    name: str
    kind: str
    column: str | None = None  # source column; defaults to name
    sep: str = "|"
    max_len: int = 8
    min_count: int = 1
    max_vocab: int = 50_000
    log1p: bool = False

    @property
    def source(self) -> str:
        return self.column or self.name


def _option_problem(opt: str, v) -> str | None:
    """What a feature option's value must be, when it is not (None: fine)."""
    whole = isinstance(v, int) and not isinstance(v, bool)
    if opt in ("max_len", "min_count", "max_vocab") and not (whole and v >= 1):
        return "a whole number >= 1"
    if opt == "sep" and not (isinstance(v, str) and v):
        return "a non-empty string (e.g. '|')"
    if opt == "column" and not (v is None or (isinstance(v, str) and v)):
        return "a column name"
    if opt == "log1p" and not isinstance(v, bool):
        return "true or false"
    return None


def parse_specs(block: dict | None, entity: str, where: str) -> list[FeatureSpec]:
    """Parse ``{name: {kind: ..., ...}}`` from config, with errors naming the file and the fix."""
    specs = []
    for name, opts in (block or {}).items():
        opts = dict(opts or {})
        kind = opts.pop("kind", None)
        if kind not in KINDS:
            raise DataError(f"feature {entity}.{name} in {where} has kind {kind!r}; known kinds: {', '.join(KINDS)}.")
        allowed = set(FeatureSpec.__dataclass_fields__) - {"name", "kind"}
        bad = set(opts) - allowed
        if bad:
            raise DataError(f"feature {entity}.{name} in {where} has unknown option(s) {sorted(bad)}; known: {sorted(allowed)}.")
        for opt, v in opts.items():
            problem = _option_problem(opt, v)
            if problem:
                raise DataError(f"feature {entity}.{name} in {where}: {opt}={v!r} must be {problem}.")
        spec = FeatureSpec(name=str(name), kind=kind, **opts)
        if kind == "context" and spec.source not in CONTEXT_FIELDS:
            raise DataError(f"context feature {name!r} in {where} must be one of {CONTEXT_FIELDS} (set column: hour).")
        specs.append(spec)
    return specs


def _tokens(value, spec: FeatureSpec) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if spec.kind == "text":
        return _TOKEN.findall(str(value).lower())
    return [t for t in str(value).split(spec.sep) if t]


class FeatureEncoder:
    """Fits and applies one :class:`FeatureSpec`."""

    def __init__(self, spec: FeatureSpec, state: dict | None = None):
        self.spec = spec
        self.state = state or {}
        self._lookup = {v: i for i, v in enumerate(self.state.get("vocab", []))}

    @property
    def cardinality(self) -> int:
        """Embedding rows needed (vocab + reserved slots); 0 for numeric."""
        k = self.spec.kind
        if k == "categorical":
            return len(self.state["vocab"]) + 1
        if k in ("multi_categorical", "text"):
            return len(self.state["vocab"]) + 2
        if k == "context":
            return 25 if self.spec.source == "hour" else 8
        return 0

    def z_bounds(self) -> tuple[float, float]:
        """A numeric feature's encoded range, where ``transform`` clips: the training values' (``lo``,
        ``hi``) widened by their width, at least 1 (one std), on each side; +-UNBOUNDED_Z without them
        (an encoder fit before they were kept, or a column with no number in training)."""
        if "lo" not in self.state:
            return -UNBOUNDED_Z, UNBOUNDED_Z
        lo, hi = self.state["lo"], self.state["hi"]
        width = max(hi - lo, 1.0)
        return lo - width, hi + width

    def value_range(self) -> tuple[float, float] | None:
        """The raw values a numeric feature accepts from a catalog record or a request attribute: within
        ``UNBOUNDED_Z`` standard deviations of the training mean (a new item priced above every
        training one is fine: its encoding is clipped; 1e308 is not); None for other kinds."""
        if self.spec.kind != "numeric":
            return None
        lo, hi = (z * self.state["std"] + self.state["mean"] for z in (-UNBOUNDED_Z, UNBOUNDED_Z))
        if self.spec.log1p:  # x = log1p(max(raw, 0)): any raw value at or below 0 encodes as 0
            lo = -math.inf if lo <= 0 else math.expm1(lo)
            hi = math.expm1(hi) if hi < 700 else math.inf
        return lo, hi

    def fit(self, values: pd.Series) -> "FeatureEncoder":
        k = self.spec.kind
        if k == "categorical":
            counts = Counter(str(v) for v in values.dropna())
            vocab = sorted([v for v, c in counts.items() if c >= self.spec.min_count], key=lambda v: (-counts[v], v))
            self.state = {"vocab": vocab[: self.spec.max_vocab]}
        elif k in ("multi_categorical", "text"):
            counts = Counter(t for v in values for t in _tokens(v, self.spec))
            vocab = sorted([v for v, c in counts.items() if c >= self.spec.min_count], key=lambda v: (-counts[v], v))
            self.state = {"vocab": vocab[: self.spec.max_vocab]}
        elif k == "numeric":
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            if self.spec.log1p:
                x = np.log1p(np.clip(x, 0, None))
            x = x[np.isfinite(x)]
            mean = float(x.mean()) if len(x) else 0.0
            std = float(x.std()) if len(x) > 1 else 1.0
            std = std if std > 1e-12 else 1.0
            z = (x - mean) / std
            self.state = {"mean": mean, "std": std}
            if len(z):  # the training range (encoded), for the clip in transform
                self.state.update(lo=float(z.min()), hi=float(z.max()))
        self._lookup = {v: i for i, v in enumerate(self.state.get("vocab", []))}
        return self

    def transform(self, values: pd.Series) -> np.ndarray:
        """Encode values: (N,) int64 / float32, or (N, max_len) int64 for token kinds."""
        k = self.spec.kind
        if k == "categorical":
            if len(values) <= SMALL_BATCH:  # a request's or a live batch's few rows: the dict, not an O(vocab) index
                get = self._lookup.get
                return np.fromiter((0 if pd.isna(v) else get(str(v), -1) + 1 for v in values.tolist()),
                                   np.int64, len(values))
            idx = pd.Index(self.state["vocab"]).get_indexer(values.astype(object).where(values.notna(), None).astype(str))
            out = np.where(idx >= 0, idx + 1, 0).astype(np.int64)
            return np.where(values.isna().to_numpy(), 0, out)
        if k in ("multi_categorical", "text"):
            out = np.zeros((len(values), self.spec.max_len), dtype=np.int64)
            for r, v in enumerate(values):
                toks = _tokens(v, self.spec)[: self.spec.max_len]
                out[r, : len(toks)] = [self._lookup.get(t, -1) + 2 if t in self._lookup else OOV for t in toks]
            return out
        if k == "numeric":
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            if self.spec.log1p:
                x = np.log1p(np.clip(x, 0, None))
            z = (x - self.state["mean"]) / self.state["std"]
            lo, hi = self.z_bounds()
            return np.where(np.isfinite(z), np.clip(z, lo, hi), 0.0).astype(np.float32)
        return context_from_timestamp(values.to_numpy(), self.spec.source)


def context_from_timestamp(ts: np.ndarray, field: str) -> np.ndarray:
    """UTC hour (1..24) or day of week (1..7, Monday=1) from Unix seconds; 0 when unknown."""
    ts = np.asarray(ts)
    if ts.dtype.kind == "i" or (ts.dtype.kind == "u" and ts.dtype.itemsize < 8):  # the serving path: whole
        # seconds, all known, exact (the float path rounds above 2**53 s; uint64 would wrap in int64)
        t = ts.astype(np.int64, copy=False)
        v = (t // 3600) % 24 + 1 if field == "hour" else ((t // 86400) + 3) % 7 + 1
        return v if t.ndim else np.asarray(v)  # a 0-d input: a 0-d array, as the float path gives
    if ts.dtype.kind == "f":  # numbers already (pandas costs ~0.1 ms a call)
        t = ts.astype(np.float64, copy=False)
    else:
        t = pd.to_numeric(pd.Series(ts), errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(t)
    t = np.where(ok, t, 0).astype(np.int64)
    if field == "hour":
        v = (t // 3600) % 24 + 1
    else:
        v = ((t // 86400) + 3) % 7 + 1  # 1970-01-01 was a Thursday
    return np.where(ok, v, 0).astype(np.int64)


class FeatureSet:
    """All encoders of one dataset (user, item, context groups), fit together and saved as JSON."""

    def __init__(self, specs: dict[str, list[FeatureSpec]], encoders: dict[str, dict[str, FeatureEncoder]] | None = None):
        self.specs = specs
        self.encoders = encoders or {g: {s.name: FeatureEncoder(s) for s in ss} for g, ss in specs.items()}

    @classmethod
    def from_config(cls, block: dict, where: str) -> "FeatureSet":
        unknown = set(block or {}) - {"user", "item", "context"}
        if unknown:
            raise DataError(f"unknown feature group(s) {sorted(unknown)} in {where}; known: user, item, context.")
        return cls({g: parse_specs((block or {}).get(g), g, where) for g in ("user", "item", "context")})

    def check_columns(self, users: pd.DataFrame, items: pd.DataFrame, where: str) -> None:
        """Every declared user/item feature must name an existing column."""
        for group, table in (("user", users), ("item", items)):
            for s in self.specs[group]:
                if s.source not in table.columns:
                    raise DataError(
                        f"unknown feature '{s.source}' ({group}.{s.name}) in {where}; "
                        f"known {group} columns: {', '.join(map(str, table.columns))}."
                    )

    def fit(self, users: pd.DataFrame, items: pd.DataFrame, train: pd.DataFrame) -> "FeatureSet":
        """Fit on the rows of users/items that appear in the training interactions only."""
        tu = users[users["user_id"].isin(train["user_id"])]
        ti = items[items["item_id"].isin(train["item_id"])]
        for s in self.specs["user"]:
            self.encoders["user"][s.name].fit(tu[s.source])
        for s in self.specs["item"]:
            self.encoders["item"][s.name].fit(ti[s.source])
        for s in self.specs["context"]:
            self.encoders["context"][s.name].fit(train["timestamp"])
        return self

    def transform(self, group: str, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """Encode a users/items table (group ``user``/``item``) or a frame with ``timestamp`` (``context``)."""
        out = {}
        for s in self.specs[group]:
            col = table["timestamp"] if group == "context" else table[s.source]
            out[s.name] = self.encoders[group][s.name].transform(col)
        return out

    def numeric_ranges(self, group: str) -> dict[str, tuple[float, float]]:
        """Per source column of ``group`` read by a numeric feature, the raw values accepted from a
        catalog record or a request (:meth:`FeatureEncoder.value_range`; the intersection when
        several numeric features read the column)."""
        out: dict[str, tuple[float, float]] = {}
        for s in self.specs[group]:
            if s.kind != "numeric":
                continue
            r = self.encoders[group][s.name].value_range()
            old = out.get(s.source)
            out[s.source] = r if old is None else (max(old[0], r[0]), min(old[1], r[1]))
        return out

    def cardinalities(self, group: str) -> dict[str, int]:
        return {n: e.cardinality for n, e in self.encoders[group].items()}

    def save(self, path: str | Path) -> None:
        data = {g: [{"spec": asdict(e.spec), "state": e.state} for e in encs.values()] for g, encs in self.encoders.items()}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        data = json.loads(Path(path).read_text())
        specs, encoders = {}, {}
        for g, rows in data.items():
            specs[g] = [FeatureSpec(**r["spec"]) for r in rows]
            encoders[g] = {r["spec"]["name"]: FeatureEncoder(FeatureSpec(**r["spec"]), r["state"]) for r in rows}
        return cls(specs, encoders)
