"""Declarative rule sets: configs/rules/*.yaml, validated when loaded, applied per request.

A config is ``k`` (default list length) and an ordered list of rules, each ``{name: <rule>,
<param>: <value>, ...}``. Every parameter is required (defaults live in the YAML files only):

=================  ==========================================  ========================
rule               parameters                                  does
=================  ==========================================  ========================
exclude_seen       -                                           drop ``ctx.seen``
block_list         ids: [external ids]                         drop these items
allow_list         ids: [external ids]                         keep only these (empty: all)
category_filter    include: [names], exclude: [names]          any-of include, none-of exclude
exposure_cap       max_share: 0..1, window: int > 0            cap each item's share of impressions
boost              ids: [...], amount: >= 0, max_boost: >= 0   +min(amount, max_boost) to promoted
category_cap       max_per_category: int >= 0, per_items: int  per primary category, for every per_items
                   >= 0                                        items of the list (0: absolute)
mmr                lambda_: 0..1                               1 = pure relevance, 0 = pure diversity
fresh_slots        max_age_days: >= 0, slots: int >= 0         up to ``slots`` of the k places for items
                                                               with no interaction yet or first seen at
                                                               most max_age_days ago (last but backfill)
backfill           source: popularity | content                top up to k (must be last)
=================  ==========================================  ========================

The request's own filters (``ctx.exclude_items``, category include/exclude) always apply first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from ranking import rules as R

log = logging.getLogger(__name__)


class RuleConfigError(ValueError):
    """A bad rule config: the message names the file, the rule, the parameter, the value and the fix."""


@dataclass(frozen=True)
class Param:
    """One rule parameter: ``kind`` is number | count | ids | categories | choice."""

    kind: str
    example: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleSpec:
    """A rule function, its parameters, and its role: filter | cap | reorder | backfill.
    ``takes_k``: the function also gets the list length asked for (keyword ``k``). ``mask``: for a rule
    that decides item by item, its keep-mask function ``mask(items, catalog, ctx, **params)`` (no
    scores; it returns None to keep every item)."""

    fn: Callable
    params: dict[str, Param]
    role: str
    takes_k: bool = False
    mask: Callable | None = None


_IDS = Param("ids", '["item_42"]')
RULES: dict[str, RuleSpec] = {
    "exclude_seen": RuleSpec(R.exclude_seen, {}, "filter", mask=R.seen_mask),
    "block_list": RuleSpec(R.block_list, {"ids": _IDS}, "filter", mask=R.block_mask),
    "allow_list": RuleSpec(R.allow_list, {"ids": _IDS}, "filter", mask=R.allow_mask),
    "category_filter": RuleSpec(R.category_filter, {"include": Param("categories", "[Comedy]"),
                                                    "exclude": Param("categories", "[Horror]")}, "filter",
                                    mask=R.category_filter_mask),
    "exposure_cap": RuleSpec(R.exposure_cap, {"max_share": Param("number", "0.05", 0.0, 1.0),
                                              "window": Param("count", "10000", 1)}, "filter",
                                 mask=R.exposure_mask),
    "category_cap": RuleSpec(R.category_cap, {"max_per_category": Param("count", "4", 0),
                                              "per_items": Param("count", "10", 0)}, "cap", takes_k=True),
    "boost": RuleSpec(R.boost, {"ids": _IDS, "amount": Param("number", "0.1", 0.0),
                                "max_boost": Param("number", "0.2", 0.0)}, "reorder"),
    "mmr": RuleSpec(R.mmr, {"lambda_": Param("number", "0.7", 0.0, 1.0)}, "reorder"),
    "fresh_slots": RuleSpec(R.fresh_slots, {"max_age_days": Param("number", "7", 0.0),
                                            "slots": Param("count", "1", 0)}, "reorder", takes_k=True),
    "backfill": RuleSpec(R.backfill, {"source": Param("choice", "popularity", choices=("popularity", "content"))},
                         "backfill"),
}


def _check_value(v, p: Param, name: str, at: str):
    """Validate and normalise parameter ``name`` = ``v``; ``at`` (rule and file) prefixes errors."""
    at = f"{at}: parameter '{name}'"
    if p.kind in ("number", "count"):
        whole = p.kind == "count"
        ok_type = isinstance(v, int) if whole else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or (not whole and not math.isfinite(v)):
            what = "a whole number" if whole else "a number"
            raise RuleConfigError(f"{at} = {v!r} is not {what}; write e.g. `{name}: {p.example}` (no quotes).")
        if (p.low is not None and v < p.low) or (p.high is not None and v > p.high):
            bounds = f"in [{p.low:g}, {p.high:g}]" if p.high is not None else f">= {p.low:g}"
            raise RuleConfigError(f"{at} = {v!r} is out of range; it must be {bounds}, e.g. {p.example}.")
        return v if whole else float(v)
    if p.kind == "choice":
        if v not in p.choices:
            raise RuleConfigError(f"{at} = {v!r} is not one of: {', '.join(p.choices)}.")
        return v
    if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in v):
        raise RuleConfigError(f"{at} = {v!r} is not a list of {'ids' if p.kind == 'ids' else 'names'}; "
                              f"write e.g. {p.example} (or [] for none).")
    # YAML reads `ids: [50]` as a number; external ids are strings, so 50 means "50".
    return tuple(str(x) for x in v) if p.kind == "ids" else tuple(v)


@dataclass(frozen=True)
class Rule:
    """One configured rule: a name from :data:`RULES` and its validated parameters."""

    name: str
    params: dict

    @property
    def role(self) -> str:
        return RULES[self.name].role

    def __call__(self, items, scores, catalog, ctx, **extra):
        return RULES[self.name].fn(items, scores, catalog, ctx, **self.params, **extra)


def _parse_rule(entry, i: int, where: str) -> Rule:
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise RuleConfigError(f"rules[{i}] in {where} is {entry!r}; each rule is a mapping with a name, "
                              f"e.g. {{name: exclude_seen}}.")
    name, params = entry["name"], {k: v for k, v in entry.items() if k != "name"}
    if name not in RULES:
        raise RuleConfigError(f"unknown rule {name!r} (rules[{i}]) in {where}; known rules: {', '.join(RULES)}.")
    spec, at = RULES[name], f"rule '{name}' (rules[{i}]) in {where}"
    unknown, missing = sorted(set(params) - set(spec.params)), [p for p in spec.params if p not in params]
    if unknown:
        raise RuleConfigError(f"{at} has unknown parameter(s) {unknown}; known: {', '.join(spec.params) or 'none'}.")
    if missing:
        fix = ", ".join(f"{p}: {spec.params[p].example}" for p in missing)
        raise RuleConfigError(f"{at} is missing parameter(s) {missing}; add e.g. `{fix}`.")
    return Rule(name, {p: _check_value(v, spec.params[p], p, at) for p, v in params.items()})


def _check_order(rules: list[Rule], where: str) -> None:
    names = [r.name for r in rules]
    for n in set(names):
        if names.count(n) > 1:
            raise RuleConfigError(f"rule {n!r} appears {names.count(n)} times in {where}; merge them into one entry.")
    if "backfill" in names and names[-1] != "backfill":
        raise RuleConfigError(f"rule 'backfill' is rules[{names.index('backfill')}] in {where}; move it to the end "
                              f"(it tops the final list up to k).")
    if "boost" in names and "mmr" in names and names.index("boost") > names.index("mmr"):
        raise RuleConfigError(f"rule 'boost' comes after 'mmr' in {where} and would undo its diversification "
                              f"(boost re-sorts by score); move boost before mmr.")
    if "fresh_slots" in names:  # only backfill after it: a later filter would drop a placed item, a reorder move it
        late = [n for n in names[names.index("fresh_slots") + 1:] if n != "backfill"]
        if late:
            raise RuleConfigError(f"rule 'fresh_slots' comes before {late} in {where}, which would reorder or drop "
                                  f"the items it placed; move fresh_slots after them (before backfill).")
    for r in rules:
        if r.name == "exposure_cap" and r.params["max_share"] * r.params["window"] < 1:
            raise RuleConfigError(f"rule 'exposure_cap' in {where}: max_share * window = "
                                  f"{r.params['max_share'] * r.params['window']:g} < 1, so no item could ever be "
                                  f"shown; raise max_share or window.")


@dataclass(frozen=True)
class RuleSet:
    """An ordered, validated chain of rules; build with :meth:`from_config` or :meth:`load`."""

    k: int
    rules: tuple[Rule, ...]
    where: str

    @classmethod
    def from_config(cls, cfg: Mapping | DictConfig, where: str) -> "RuleSet":
        """Validate a ``{k: int, rules: [...]}`` mapping (``where`` names its file in errors).

        Raises:
            RuleConfigError: unknown rule or parameter, missing parameter, wrong type, value out
                of range, or rules in an order that cannot work.
        """
        if isinstance(cfg, (DictConfig, ListConfig)):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping) or set(cfg) != {"k", "rules"}:
            got = sorted(cfg) if isinstance(cfg, Mapping) else type(cfg).__name__
            raise RuleConfigError(f"rule config {where} has keys {got}; it needs exactly `k` and `rules`.")
        k = cfg["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise RuleConfigError(f"k = {k!r} in {where} must be a whole number > 0, e.g. `k: 10`.")
        if not isinstance(cfg["rules"], (list, tuple)):
            raise RuleConfigError(f"rules in {where} is {cfg['rules']!r}; it must be a list, e.g. "
                                  f"`rules: [{{name: exclude_seen}}]`.")
        rules = [_parse_rule(e, i, where) for i, e in enumerate(cfg["rules"])]
        _check_order(rules, where)
        return cls(k, tuple(rules), where)

    @classmethod
    def load(cls, path: str | Path) -> "RuleSet":
        """Read and validate a YAML rule config."""
        return cls.from_config(OmegaConf.load(path), where=str(path))

    def check_catalog(self, catalog: R.ItemCatalog) -> None:
        """Check config names against a catalog (call once at load, not per request).

        Raises:
            RuleConfigError: a category name or code the catalog does not know. Unknown item ids
                are only logged: a blocked or promoted item may have left the catalog.
        """
        for i, r in enumerate(self.rules):
            for p in ("include", "exclude"):
                try:
                    catalog.category_codes(r.params.get(p, ()))
                except ValueError as e:
                    raise RuleConfigError(f"rule '{r.name}' (rules[{i}]) in {self.where}: parameter '{p}': {e}") from e
            ids = r.params.get("ids", ())
            unknown = [x for x in ids if not len(catalog.item_indices([x]))]
            if unknown:
                log.warning("rule '%s' in %s names %d item id(s) not in the catalog: %s", r.name, self.where,
                            len(unknown), unknown[:10])

    def admissible(self, items: np.ndarray, catalog: R.ItemCatalog, ctx: R.RequestContext) -> np.ndarray:
        """``items`` that the request's filters and the configured filters keep, in their order (no caps,
        no reordering): e.g. promoted items, before they join the candidates."""
        items, scores = R.request_filter(np.asarray(items, np.int64), np.zeros(len(items), np.float32), catalog, ctx)
        for r in self.rules:
            if r.role == "filter":
                items, scores = r(items, scores, catalog, ctx)
        return items

    def make_tracker(self, n_items: int) -> R.ExposureTracker | None:
        """An exposure tracker with the configured window; None when no exposure_cap is configured."""
        cap = next((r for r in self.rules if r.name == "exposure_cap"), None)
        return None if cap is None else R.ExposureTracker(n_items, cap.params["window"])

    def _admit(self, catalog, ctx, k: int) -> R.Admit:
        """Request filters + configured filters and caps, for backfill candidates; a cap sized by the
        list length gets the same ``k`` as in the chain (else it would be the absolute cap, and drop
        ranked items the chain kept from the whole list)."""
        def admit(items, scores):
            items, scores = R.request_filter(items, scores, catalog, ctx)
            for r in self.rules:
                if r.role in ("filter", "cap"):
                    items, scores = r(items, scores, catalog, ctx, **({"k": k} if RULES[r.name].takes_k else {}))
            return items, scores
        return admit

    def apply(self, items, scores, catalog: R.ItemCatalog, ctx: R.RequestContext,
              k: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Run the chain on one request's candidates.

        Args:
            items: (C,) int64 candidate catalog indices, in any order.
            scores: (C,) ranker scores (higher is better).
            catalog: item data.
            ctx: the request.
            k: list length wanted (``self.k`` is the configured default).

        Returns:
            (<=k,) items, their float32 scores, and a reason per item: ``ranked``, ``boosted``,
            ``fresh`` (placed by ``fresh_slots``), ``backfill:popularity`` or ``backfill:content``.

        Raises:
            ValueError: k is not a positive int, or items/scores are malformed (shape, range, NaN).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k = {k!r} must be a whole number > 0.")
        items, scores = np.asarray(items, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        if items.ndim != 1 or items.shape != scores.shape:
            raise ValueError(f"items {items.shape} and scores {scores.shape} must be 1-D and of equal length.")
        if len(items) and (items.min() < 0 or items.max() >= len(catalog)):
            raise ValueError(f"candidate items must be catalog indices in 0..{len(catalog) - 1}; "
                             f"got {items.min()}..{items.max()}.")
        if np.isnan(scores).any():
            raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN value(s); fix the ranker output.")
        items, scores = R.sort_by_score(items, scores)
        first = np.unique(items, return_index=True)[1]
        if len(first) < len(items):  # duplicates: keep the best-scoring copy
            first = np.sort(first)
            items, scores = items[first], scores[first]
        # Filters decide item by item: consecutive ones AND their keep-masks and the list is cut once
        # (before the next rule that is not a filter). ``in_order``: the list is in sort_by_score's
        # order (filters and caps keep it, boost sorts), so boost with nothing promoted leaves it as
        # it is and the next rules skip their own sort.
        keep, in_order = R.request_mask(items, catalog, ctx), True
        boosted, fresh, ranked, source = np.zeros(0, np.int64), np.zeros(0, np.int64), None, None
        for j, r in enumerate(self.rules):
            spec = RULES[r.name]
            if spec.mask is not None:
                keep = R.and_masks(keep, spec.mask(items, catalog, ctx, **r.params))
                continue
            promotes = r.name == "boost" and bool(len(r.params["ids"]) or len(ctx.promoted))
            if r.name == "boost" and in_order and not promotes:
                continue
            items, scores = R.apply_mask(items, scores, keep)
            keep = None
            if r.role == "backfill":
                ranked = items[:k]
                source = R.backfill_source(catalog, ctx, r.params["source"])[0]
                items, scores = r(items[:k], scores[:k], catalog, ctx, k=k, admit=self._admit(catalog, ctx, k))
                in_order = False  # backfill scores count down from the list's last: equal in float32 at large scores
                continue
            extra = {"k": k} if spec.takes_k else {}
            if r.name == "mmr" and all(later.role == "backfill" or later.name == "fresh_slots"
                                       for later in self.rules[j + 1:]):
                extra = {"horizon": k}  # nothing after it drops an item: only the first k places matter
            if r.name == "mmr" and len(boosted):
                extra["boosted"] = boosted  # promoted items do not set the relevance scale
            if r.name in ("mmr", "category_cap"):
                extra["presorted"] = in_order
            head = items[:k] if r.name == "fresh_slots" else None
            items, scores = r(items, scores, catalog, ctx, **extra)
            in_order = r.name == "boost" or (in_order and r.role == "cap")
            if head is not None:
                fresh = np.union1d(fresh, np.setdiff1d(items[:k], head))  # moved into the list by the rule
            if promotes and min(r.params["amount"], r.params["max_boost"]) > 0:
                boosted = np.union1d(boosted, R.promoted_items(catalog, ctx, r.params["ids"]))
        items, scores = R.apply_mask(items, scores, keep)
        items, scores = items[:k], scores[:k]
        is_ranked = np.ones(len(items), bool) if ranked is None else R.member(items, ranked)
        is_boosted, is_fresh = R.member(items, boosted), R.member(items, fresh)
        reasons = [("fresh" if f else "boosted" if b else "ranked") if rk else f"backfill:{source}"
                   for rk, b, f in zip(is_ranked, is_boosted, is_fresh)]
        return items, scores, reasons
