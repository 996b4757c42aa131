"""Business rules: pure post-processing of one request's ranked candidates.

Every rule is a function ``rule(items, scores, catalog, ctx, **params) -> (items, scores)`` over
numpy arrays: ``items`` (C,) int64 catalog indices and ``scores`` (C,) float32. Filters and caps
keep the order they are given; rules that reorder (``boost``, ``mmr``) sort by score, ties by
lower item index. No rule draws random numbers, so the output depends only on the inputs
(``ctx.seed`` is carried for future rules that need randomness; none does today).

Rules are configured and chained by :class:`ranking.rule_config.RuleSet` (configs/rules/*.yaml).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from features.vocab import IdVocab

Admit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
MMR_PRODUCT_MAX = 256  # mmr: one (C, C) similarity product up to this many candidates, a row per pick above
MMR_ROWS_PER_PICK = 16  # mmr: a row per pick, not the product, while picks * this <= candidates
# (10 picks of 190: 39 against 58 us; 20 picks: 79 against 66 us)


@dataclass(eq=False)
class ItemCatalog:
    """Item data the rules read, indexed by dense catalog index 0..N-1.

    Attributes:
        categories: (N, M) int64 category codes; 0 is padding. The first non-zero code of a row
            is the item's primary category (used by ``category_cap``).
        category_names: code -> name; index 0 is ``"<none>"``.
        vectors: (N, F) item embeddings for MMR and content backfill; rows are L2-normalised on
            construction (zero rows stay zero).
        popularity: (N,) interaction counts (global backfill).
        item_ids: (N,) external string ids (block/allow lists, request exclusions).
        segment_popularity: segment name -> (N,) counts, for per-segment backfill.
    """

    categories: np.ndarray
    category_names: list[str]
    vectors: np.ndarray
    popularity: np.ndarray
    item_ids: np.ndarray
    segment_popularity: dict[str, np.ndarray] = field(default_factory=dict)
    blocked: np.ndarray | None = None  # (N,) bool: items blocked while serving (pipeline/catalog.py); None: none
    primary: np.ndarray = field(init=False, repr=False)  # (N,) first non-zero code, 0 if none
    _ids: IdVocab = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.categories = np.asarray(self.categories, dtype=np.int64)
        if self.categories.ndim == 1:
            self.categories = self.categories[:, None]
        n = len(self.categories)
        v = np.asarray(self.vectors, dtype=np.float32).reshape(n, -1)
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        self.vectors = v / np.where(norm > 0, norm, 1.0)
        self.popularity = np.asarray(self.popularity, dtype=np.float64)
        self.segment_popularity = {s: np.asarray(p, dtype=np.float64) for s, p in self.segment_popularity.items()}
        for name, arr in [("popularity", self.popularity), ("item_ids", self.item_ids),
                          *((f"segment_popularity[{s!r}]", p) for s, p in self.segment_popularity.items())]:
            if len(arr) != n:
                raise ValueError(f"ItemCatalog.{name} has {len(arr)} rows but categories has {n}; give one per item.")
        top = int(self.categories.max(initial=0))
        if self.categories.min(initial=0) < 0 or top >= len(self.category_names):
            raise ValueError(f"ItemCatalog.categories holds codes up to {top} but category_names has "
                             f"{len(self.category_names)} names; codes must lie in 0..len(category_names)-1.")
        self._ids = IdVocab(self.item_ids)
        self.blocked = np.zeros(n, bool) if self.blocked is None else np.asarray(self.blocked, dtype=bool)
        if len(self.blocked) != n:
            raise ValueError(f"ItemCatalog.blocked has {len(self.blocked)} rows but categories has {n}; give one per item.")
        first = (self.categories != 0).argmax(axis=1)
        self.primary = self.categories[np.arange(n), first] if n else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.categories)

    @classmethod
    def from_store(cls, store, vectors: np.ndarray, category_feature: str) -> "ItemCatalog":
        """Catalog from a :class:`features.store.FeatureStore` and item-tower embeddings.

        ``category_feature`` names a categorical or multi-categorical item feature (e.g.
        ``genres``); its encoded codes are used as they are, so the reserved out-of-vocabulary
        code of a multi-categorical feature is named ``"<unknown>"``.
        """
        enc = store.features.encoders["item"][category_feature]
        reserved = ["<none>"] if enc.spec.kind == "categorical" else ["<none>", "<unknown>"]
        return cls(store.item_table[category_feature], reserved + list(enc.state["vocab"]), vectors,
                   store.popularity, store.items.ids)

    def item_indices(self, values: Sequence | np.ndarray) -> np.ndarray:
        """External string ids, or int catalog indices, -> int64 indices; unknown ones are dropped."""
        arr = np.asarray(values)
        if arr.size == 0:
            return np.zeros(0, np.int64)
        idx = arr.astype(np.int64) if arr.dtype.kind in "iu" else self._ids.lookup(arr.ravel())
        return idx[(idx >= 0) & (idx < len(self))]

    def category_codes(self, values: Sequence) -> np.ndarray:
        """Category names (str) or codes (int) -> int64 codes.

        Raises:
            ValueError: a name or code that is not a category of this catalog.
        """
        codes = []
        for v in values:
            code = self.category_names.index(v) if isinstance(v, str) and v in self.category_names else v
            if isinstance(code, str) or not 0 < int(code) < len(self.category_names):
                raise ValueError(f"unknown category {v!r}; known: {', '.join(self.category_names[1:])}.")
            codes.append(int(code))
        return np.asarray(codes, dtype=np.int64)


class ExposureTracker:
    """Impressions per item over the last ``window`` served items (a ring buffer).

    State lives with the caller (one tracker per serving process); ``exposure_cap`` reads it and
    the caller calls :meth:`record` with what it served.
    """

    def __init__(self, n_items: int, window: int):
        self.window = int(window)
        self.counts = np.zeros(n_items, dtype=np.int64)  # (N,) impressions in the window
        self._ring = np.full(self.window, -1, dtype=np.int64)
        self._pos = 0

    def record(self, items: np.ndarray) -> None:
        """Add served items, evicting the oldest impressions beyond the window."""
        items = np.asarray(items, dtype=np.int64)[-self.window:]
        slots = (self._pos + np.arange(len(items))) % self.window
        old = self._ring[slots]
        np.subtract.at(self.counts, old[old >= 0], 1)
        np.add.at(self.counts, items, 1)
        self._ring[slots] = items
        self._pos = (self._pos + len(items)) % self.window

    def share(self, items: np.ndarray) -> np.ndarray:
        """Share of the window each item takes (count / window; lenient while it fills up)."""
        return self.counts[items] / self.window


@dataclass
class RequestContext:
    """What one request carries besides its candidates.

    Item lists take external string ids or int catalog indices; category lists take names or
    codes. ``exposure`` is the caller's tracker (None: nothing to cap, e.g. offline evaluation).
    ``first_seen``: each catalog item's first interaction time (Unix s, -1 for none yet) and ``now``
    the request's time, for :func:`fresh_slots` (None: no item counts as fresh).
    """

    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exclude_items: Sequence = ()
    include_categories: Sequence = ()
    exclude_categories: Sequence = ()
    segment: str | None = None
    recent_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    promoted: Sequence = ()
    seed: int = 0
    exposure: ExposureTracker | None = None
    first_seen: np.ndarray | None = None
    now: float | None = None


def member(values: np.ndarray, pool) -> np.ndarray:
    """``np.isin(values, pool)`` for integer arrays, by one sort of ``pool`` and a binary search
    (np.isin's sort of both arrays costs ~70 us per call; this runs a served request's filters)."""
    values = np.asarray(values)
    pool = np.asarray(pool, dtype=np.int64).ravel()
    if not len(pool) or not values.size:
        return np.zeros(values.shape, dtype=bool)
    pool = np.sort(pool)
    return pool[np.minimum(np.searchsorted(pool, values), len(pool) - 1)] == values


def promoted_items(catalog: ItemCatalog, ctx: RequestContext, ids: Sequence[str]) -> np.ndarray:
    """Catalog indices promoted by the rule's ``ids`` and the request's ``promoted``, sorted."""
    return np.union1d(catalog.item_indices(ids), catalog.item_indices(ctx.promoted))


def sort_by_score(items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best first; ties go to the lower item index."""
    order = np.lexsort((items, -scores.astype(np.float64)))
    return items[order], scores[order]


def apply_mask(items, scores, mask):
    """The items (and scores) ``mask`` keeps; None keeps every item (no copy)."""
    return (items, scores) if mask is None else (items[mask], scores[mask])


def and_masks(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Two keep-masks together (None: keeps every item)."""
    return b if a is None else a if b is None else a & b


def _category_mask(catalog, items, include, exclude) -> np.ndarray | None:
    """Items with any category in ``include`` (when given) and none in ``exclude`` (None: no condition)."""
    if not len(include) and not len(exclude):
        return None
    mask = np.ones(len(items), dtype=bool)
    cats = catalog.categories[items]  # (C, M)
    if len(include):
        mask &= member(cats, catalog.category_codes(include)).any(axis=1)
    if len(exclude):
        mask &= ~member(cats, catalog.category_codes(exclude)).any(axis=1)
    return mask


# Filters decide item by item, so each is a keep-mask (None: keeps every item) and the rule is that
# mask applied; RuleSet.apply ANDs the masks of consecutive filters and copies the list once.

def request_mask(items, catalog: ItemCatalog, ctx: RequestContext) -> np.ndarray:
    """:func:`request_filter`'s keep-mask."""
    mask = ~catalog.blocked[items]
    if len(ctx.exclude_items):
        mask &= ~member(items, catalog.item_indices(ctx.exclude_items))
    return and_masks(mask, _category_mask(catalog, items, ctx.include_categories, ctx.exclude_categories))


def request_filter(items, scores, catalog: ItemCatalog, ctx: RequestContext):
    """The request's own filters, always applied: ``exclude_items``, category include/exclude, and
    the items blocked in the catalog (so every route and the backfill skip them)."""
    return apply_mask(items, scores, request_mask(items, catalog, ctx))


def seen_mask(items, catalog: ItemCatalog, ctx: RequestContext) -> np.ndarray | None:
    """:func:`exclude_seen`'s keep-mask."""
    return ~member(items, ctx.seen) if len(ctx.seen) else None


def exclude_seen(items, scores, catalog: ItemCatalog, ctx: RequestContext):
    """Drop items the user has already seen (``ctx.seen``)."""
    return apply_mask(items, scores, seen_mask(items, catalog, ctx))


def block_mask(items, catalog: ItemCatalog, ctx: RequestContext, *, ids: Sequence[str]) -> np.ndarray | None:
    """:func:`block_list`'s keep-mask."""
    return ~member(items, catalog.item_indices(ids)) if len(ids) else None


def block_list(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, ids: Sequence[str]):
    """Drop items whose external id is in ``ids`` (ids not in the catalog are ignored)."""
    return apply_mask(items, scores, block_mask(items, catalog, ctx, ids=ids))


def allow_mask(items, catalog: ItemCatalog, ctx: RequestContext, *, ids: Sequence[str]) -> np.ndarray | None:
    """:func:`allow_list`'s keep-mask."""
    return member(items, catalog.item_indices(ids)) if len(ids) else None


def allow_list(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, ids: Sequence[str]):
    """Keep only items whose external id is in ``ids``; an empty list allows everything."""
    return apply_mask(items, scores, allow_mask(items, catalog, ctx, ids=ids))


def category_filter_mask(items, catalog: ItemCatalog, ctx: RequestContext, *, include: Sequence,
                         exclude: Sequence) -> np.ndarray | None:
    """:func:`category_filter`'s keep-mask."""
    return _category_mask(catalog, items, include, exclude)


def category_filter(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, include: Sequence, exclude: Sequence):
    """Keep items with any category in ``include`` (empty: all) and none in ``exclude``."""
    return apply_mask(items, scores, _category_mask(catalog, items, include, exclude))


def category_cap(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, max_per_category: int,
                 per_items: int, k: int | None = None, presorted: bool = False):
    """Keep at most ``max_per_category`` items per primary category for every ``per_items`` items of
    the list asked for (cap = max_per_category * ceil(k / per_items); ``per_items`` 0 or no ``k``:
    the cap is absolute): the best-scoring ones.

    Items without a category are not capped; survivors keep their input order. ``presorted``: the
    items are already best first (:func:`sort_by_score`'s order), so the sort is skipped.

    With a ``k``, a request that allows only a few categories (``include_categories``, or all but its
    ``exclude_categories``) gets at least an even share of the k per category: asked for Action
    films only, 5 per 10 would cut a list of 10 to 5 that backfill, capped alike, cannot top up.
    """
    if per_items and k:
        max_per_category = max_per_category * math.ceil(k / per_items)
        allowed = (len(set(ctx.include_categories)) if len(ctx.include_categories)
                   else len(catalog.category_names) - 1 - len(set(ctx.exclude_categories)))
        max_per_category = max(max_per_category, math.ceil(k / max(allowed, 1)))
    order = np.arange(len(items)) if presorted else np.lexsort((items, -scores.astype(np.float64)))
    prim = catalog.primary[items if presorted else items[order]]  # best first
    by_cat = np.argsort(prim, kind="stable")
    grouped = prim[by_cat]
    pos = np.arange(len(grouped))
    new = np.ones(len(grouped), dtype=bool)
    new[1:] = grouped[1:] != grouped[:-1]
    rank = pos - np.maximum.accumulate(np.where(new, pos, 0))  # place within its category, best first
    ok = np.empty(len(items), dtype=bool)
    ok[order[by_cat]] = (grouped == 0) | (rank < max_per_category)
    return apply_mask(items, scores, ok)


def exposure_cap(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, max_share: float, window: int):
    """Drop items that already hold ``max_share`` of the last ``window`` impressions.

    An item with ``count`` impressions is kept only while ``count + 1 <= max_share * window``, so
    serving it never pushes its share past ``max_share``. No tracker in ``ctx``: nothing to cap.

    Raises:
        ValueError: the tracker counts a different window than the rule is configured for.
    """
    return apply_mask(items, scores, exposure_mask(items, catalog, ctx, max_share=max_share, window=window))


def exposure_mask(items, catalog: ItemCatalog, ctx: RequestContext, *, max_share: float,
                  window: int) -> np.ndarray | None:
    """:func:`exposure_cap`'s keep-mask (it decides item by item, like a filter)."""
    if ctx.exposure is None:
        return None
    if ctx.exposure.window != window:
        raise ValueError(f"exposure_cap is configured for window={window} but the tracker counts "
                         f"{ctx.exposure.window}; build it with RuleSet.make_tracker(n_items).")
    counts, limit = ctx.exposure.counts, np.floor(max_share * window + 1e-9)
    if len(items) and items.max() >= len(counts):  # items added after the tracker was built: no impressions yet
        known = items < len(counts)
        shown = np.zeros(len(items), counts.dtype)
        shown[known] = counts[items[known]]
        return shown < limit
    return counts[items] < limit


def boost(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, ids: Sequence[str], amount: float,
          max_boost: float):
    """Add ``min(amount, max_boost)`` to the scores of promoted items, then sort by score.

    Promoted items are ``ids`` (external ids from config) plus ``ctx.promoted``. The boost is
    additive in score units and bounded: no item gains more than ``max_boost``. The pipeline adds
    promoted items retrieval did not bring to the candidates (``Pipeline.promoted_rows``), so they
    are here with a ranker score.
    """
    bump = np.float32(min(amount, max_boost))
    if not len(ids) and not len(ctx.promoted):  # nothing promoted: the list stays as sorted
        return sort_by_score(items, scores.astype(np.float32))
    hit = member(items, promoted_items(catalog, ctx, ids))
    return sort_by_score(items, np.where(hit, scores + bump, scores).astype(np.float32))


def mmr(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, lambda_: float, horizon: int | None = None,
        boosted: np.ndarray | None = None, presorted: bool = False):
    """Maximal marginal relevance: greedily reorder for relevance and diversity.

    Each step takes the item maximising ``lambda_ * rel - (1 - lambda_) * max_sim``, where ``rel``
    is the score min-max normalised within the list and ``max_sim`` the highest cosine similarity
    to an item already taken. Ties go to the higher score, then the lower item index. Scores are
    returned unchanged, in the new order.

    ``horizon``: only the first ``horizon`` places are chosen greedily, the rest follow in score
    order (:meth:`ranking.rule_config.RuleSet.apply` passes ``k`` when nothing after this rule can
    drop an item, so the answer is the same at O(k x C) instead of O(C^2); lists longer than
    ``MMR_PRODUCT_MAX``, or with few picks, compute one similarity row per pick).

    ``boosted``: items a boost rule lifted; their scores do not set the top of the scale (else two
    promoted items 0.1 above a list spread over 0.01 squash it into a band where similarity alone
    orders it). They rank above 1 on it, so they come first, and the others keep the order they have
    without the promotion.

    ``presorted``: the items are already in :func:`sort_by_score`'s order (the sort is skipped).
    """
    if not presorted:
        items, scores = sort_by_score(items, scores)
    if len(items) < 2:
        return items, scores
    s = scores.astype(np.float64)
    lo, hi = s.min(), s.max()
    if boosted is not None and len(boosted):
        plain = ~member(items, boosted)
        if plain.any() and s[plain].max() > lo:  # (plain scores all equal: the whole list sets the scale)
            hi = s[plain].max()
    rel = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
    gain = lambda_ * rel
    steps = len(items) if horizon is None else min(horizon, len(items))
    vec = catalog.vectors[items]  # (C, F)
    # value_i = gain_i - (1 - lambda_) * max(0, sim to each taken item). gain - c * x falls as x
    # grows (in floating point too), so value after a pick j is min(value, gain - c * sim(., j)).
    # Up to MMR_PRODUCT_MAX candidates one (C, C) product serves every step (two array calls a
    # step, not four) unless the picks are few (MMR_ROWS_PER_PICK: the served k of ~200); otherwise
    # each pick computes its own row (O(steps x C), not O(C^2)). The product rounds differently
    # from row by row: a float32 near-tie may go the other way.
    c = 1.0 - lambda_
    product = steps * MMR_ROWS_PER_PICK > len(items) and len(items) <= MMR_PRODUCT_MAX
    drop = gain[None, :] - c * (vec @ vec.T).astype(np.float64) if product else None
    value = gain.copy()
    picks = np.empty(steps, dtype=np.int64)
    for step in range(steps):
        j = int(value.argmax())  # first maximum = best score, lower index (list is sorted); the method, not np.argmax: ~5 us less
        picks[step] = j
        np.minimum(value, drop[j] if drop is not None else gain - c * (vec @ vec[j]).astype(np.float64), out=value)
        value[j] = -np.inf
    taken = np.zeros(len(items), dtype=bool)
    taken[picks] = True
    order = np.concatenate([picks, (~taken).nonzero()[0]])
    return items[order], scores[order]


def fresh_items(items: np.ndarray, ctx: RequestContext, max_age_days: float) -> np.ndarray:
    """(C,) bool: items with no interaction yet, or whose first one is at most ``max_age_days`` before
    the request (``ctx.first_seen``, ``ctx.now``); all False without them."""
    if ctx.first_seen is None or ctx.now is None or not len(items):
        return np.zeros(len(items), dtype=bool)
    first = np.full(len(items), -1, dtype=np.int64)
    known = items < len(ctx.first_seen)
    first[known] = ctx.first_seen[items[known]]
    return (first < 0) | (first >= ctx.now - max_age_days * 86400.0)


def fresh_slots(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, max_age_days: float, slots: int,
                k: int | None = None):
    """Keep up to ``slots`` of the first ``k`` places for fresh items (:func:`fresh_items`): a new
    item has no popularity or co-occurrence yet, so a ranker that trusts them places it low, and it
    never gets the impressions that would teach it otherwise (exploration for cold items).

    When fewer than ``slots`` of the first ``k`` are fresh, the best-scoring fresh items below them
    take the last places of the ``k`` (ties to the lower item index); the items they displace follow
    right after, in their order. Nothing is dropped and scores are unchanged; with no fresh item
    below the first ``k`` the list is left as it is. A ``category_cap`` before it keeps only the best
    few of each category among all candidates: a fresh item of a crowded category is gone by then.
    """
    n = len(items)
    k = n if k is None else min(k, n)
    if not slots or k == 0:
        return items, scores
    fresh = fresh_items(items, ctx, max_age_days)
    need = min(slots, k) - int(fresh[:k].sum())
    below = np.flatnonzero(fresh[k:]) + k
    if need <= 0 or not len(below):
        return items, scores
    movers = below[np.lexsort((items[below], -scores[below].astype(np.float64)))][:need]
    displaced = np.flatnonzero(~fresh[:k])[-len(movers):]  # the last non-fresh places of the head
    rest = np.setdiff1d(np.arange(k, n), movers)
    order = np.concatenate([np.setdiff1d(np.arange(k), displaced), movers, displaced, rest])
    return items[order], scores[order]


def backfill_source(catalog: ItemCatalog, ctx: RequestContext, source: str) -> tuple[str, np.ndarray]:
    """The source backfill really uses and its (N,) item scores.

    ``content``: cosine to the mean vector of ``ctx.recent_items``; a request with no recent
    items falls back to ``popularity``: the segment's counts when ``ctx.segment`` is known to the
    catalog, else global counts.
    """
    recent = np.asarray(ctx.recent_items, dtype=np.int64)
    recent = recent[(recent >= 0) & (recent < len(catalog))]
    if source == "content" and len(recent):
        return "content", catalog.vectors @ catalog.vectors[recent].mean(axis=0)
    return "popularity", catalog.segment_popularity.get(ctx.segment, catalog.popularity)


def _top(values: np.ndarray, allowed: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` best allowed values, best first, ties to the lower index."""
    idx = np.flatnonzero(allowed)
    v = values[idx]
    if m < len(idx):
        cut = v >= np.partition(v, len(v) - m)[len(v) - m]
        idx, v = idx[cut], v[cut]
    return idx[np.lexsort((idx, -v))][:m]


def backfill(items, scores, catalog: ItemCatalog, ctx: RequestContext, *, source: str, k: int,
             admit: Admit | None = None):
    """Top up a list shorter than ``k`` from popularity or content similarity.

    Backfill items skip the list's items and ``ctx.seen``, must pass ``admit`` (the rule set's
    filters and caps, applied to the whole list, which must keep the list's order) and come
    after every listed item with scores below them (``min(scores) - 1, - 2, ...``: order only).
    """
    if len(items) >= k:
        return items, scores
    _, value = backfill_source(catalog, ctx, source)
    blocked = np.zeros(len(catalog), dtype=bool)
    blocked[items] = True
    blocked[catalog.item_indices(np.asarray(ctx.seen, dtype=np.int64))] = True
    floor = float(scores.min()) if len(scores) else 0.0
    m = min(len(catalog), 4 * k)
    while True:
        pool = _top(value, ~blocked, m)
        out_items = np.concatenate([items, pool]).astype(np.int64)
        out_scores = np.concatenate([scores, floor - 1.0 - np.arange(len(pool))]).astype(np.float32)
        if admit is not None:
            out_items, out_scores = admit(out_items, out_scores)
        if len(out_items) >= k or m >= len(catalog):
            return out_items[:k], out_scores[:k]
        m = min(len(catalog), 4 * m)
