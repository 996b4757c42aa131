"""Synthetic recommender data whose structure is known, for tests and benchmarks.

Every signal a model should find is planted on purpose:
- popularity: Zipf-like item weights (``popularity_exponent``) and log-normal user activity;
- taste: each user holds a Dirichlet distribution over categories, biased toward the categories
  their segment favours, and one over ``latent_dim`` latent styles that cut across categories;
- context: each segment has its own hour-of-day and weekend rhythm, and the category of an
  interaction leans toward categories that suit its hour of day;
- catalog: items appear over time and are only consumed after ``created_at``; a share of the
  catalog is cold (no interactions at all); titles use per-category words, prices per-category
  levels, and quality follows popularity.

Sampling is vectorised: items of a group (category x style, category, all) are sorted by creation
time, so the items available at time ``t`` are a prefix of the group; one ``searchsorted`` over
cumulative popularity then draws from that prefix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import Dataset

_DAY = 86_400
# name, hour-of-day peaks (UTC), weekend day weight (weekday = 1), mean age, share of users
_SEGMENTS = (
    ("commuter", (8.0, 18.5), 0.5, 38, 0.25),
    ("lunchtime", (12.5, 12.5), 0.4, 42, 0.20),
    ("evening", (20.5, 20.5), 1.2, 31, 0.25),
    ("night_owl", (0.5, 0.5), 1.3, 24, 0.15),
    ("weekender", (10.5, 15.5), 3.0, 47, 0.15),
)
_COUNTRIES = (("US", 0.35), ("GB", 0.12), ("DE", 0.12), ("FR", 0.1), ("BR", 0.1), ("IN", 0.12), ("JP", 0.09))
_DAYPARTS = ("night", "morning", "afternoon", "evening")  # 6-hour blocks of the UTC day
_CATEGORY_NAMES = (
    "action", "comedy", "drama", "documentary", "kids", "music", "sports", "science",
    "travel", "food", "horror", "romance", "history", "fantasy", "crime", "animation",
)
_SHARED_WORDS = ("the", "new", "best", "great", "little", "last", "first", "lost", "big", "secret", "story", "one")
_SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sa", "vi", "dor", "el", "qua", "zu", "bin", "ta", "nor", "fe", "ix")
_WORDS_PER_CATEGORY = 12
_CATEGORY_WORD_SHARE = 0.75  # the rest of a title's words come from _SHARED_WORDS
_SEGMENT_BOOST = 4.0  # a favoured category gets 1 + boost times the prior mass of another
_HOUR_SD = 1.5  # hours around a segment's peak
_BACKGROUND_HOUR_SHARE = 0.1  # interactions at a uniform hour, whatever the segment
_HOUR_TILT = 0.5  # chance that a category unsuited to the hour is redrawn from the user's taste
_POPULARITY_PICK_SHARE = 0.05  # interactions that ignore taste and follow popularity only
_PREEXISTING_SHARE = 0.7  # items created before start_time; the rest arrive during the window


def _check_params(**params) -> None:
    for key in ("n_users", "n_items", "n_interactions", "n_categories", "latent_dim", "days", "start_time"):
        v, low = params[key], 0 if key == "start_time" else 1
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {v!r}")
    for key, low, high, rule in (
        ("popularity_exponent", 0.0, np.inf, "a finite number >= 0 (0 = uniform popularity)"),
        ("taste_concentration", 0.0, np.inf, "a finite number > 0"),
        ("cold_item_share", 0.0, 1.0, "in [0, 1) so that some items get interactions"),
    ):
        v = params[key]
        ok = isinstance(v, (int, float, np.number)) and np.isfinite(v) and low <= v < high
        if not ok or (key == "taste_concentration" and v == 0):
            raise ValueError(f"{key} must be {rule}, got {v!r}")


def _strings(values: pa.Array) -> pd.Series:  # Arrow-backed ``str``: no round trip through Python objects
    return pd.Series(values, dtype="str")


def _category_names(n_categories: int) -> list[str]:
    return [_CATEGORY_NAMES[c] if c < len(_CATEGORY_NAMES) else f"category{c}" for c in range(n_categories)]


def _prefixed_ids(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "").cast(pa.large_string())


def _sample_rows(probs: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column index per entry of ``rows``, drawn from that row of ``probs`` (R, K).

    Row ``r``'s cumulative distribution is shifted to ``(r, r + 1]`` and all rows are laid end to
    end, so a single ``searchsorted`` serves every draw at once.
    """
    n_rows, k = probs.shape
    cum = np.cumsum(probs, axis=1, dtype=np.float64)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    flat = (cum + np.arange(n_rows)[:, None]).ravel()
    pos = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
    return np.clip(pos - rows.astype(np.int64) * k, 0, k - 1)


def _dirichlet_rows(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Dirichlet draw per row of ``alpha`` (R, K); rows may differ, unlike ``rng.dirichlet``."""
    g = rng.gamma(alpha)
    total = g.sum(axis=1, keepdims=True)
    # With tiny concentrations every gamma draw of a row can underflow to 0: fall back to the prior.
    g = np.where(total > 0, g, alpha)
    return g / g.sum(axis=1, keepdims=True)


class _PrefixSampler:
    """Draws items of a group in proportion to weight, among the items created by time ``t``."""

    def __init__(self, group: np.ndarray, created: np.ndarray, weight: np.ndarray, n_groups: int):
        order = np.lexsort((created, group))
        self.items = order
        self.t0 = int(created.min())
        self.span = int(created.max()) - self.t0 + 2
        self.key = group[order].astype(np.int64) * self.span + (created[order] - self.t0)
        self.cum = np.concatenate(([0.0], np.cumsum(weight[order], dtype=np.float64)))
        self.start = np.searchsorted(group[order], np.arange(n_groups + 1))

    def sample(self, group: np.ndarray, t: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Item index per draw and whether the draw's group had any item by then (else ignore it)."""
        start = self.start[group]
        end = np.searchsorted(self.key, group * self.span + np.clip(t - self.t0, -1, self.span - 1), side="right")
        lo, hi = self.cum[start], self.cum[end]
        pos = np.searchsorted(self.cum, lo + r * (hi - lo), side="right") - 1
        pos = np.clip(pos, start, np.maximum(end - 1, start))
        return self.items[np.minimum(pos, len(self.items) - 1)], end > start


def _make_items(rng, n_items, n_categories, latent_dim, popularity_exponent, cold_item_share, start_time, days):
    """The items table plus the arrays that drive sampling: category, style, weight, created_at, warm mask."""
    cat_names = pa.array(_category_names(n_categories))
    category = rng.choice(n_categories, n_items, p=rng.dirichlet(np.full(n_categories, 5.0)))
    style = rng.integers(0, latent_dim, n_items)
    weight = np.empty(n_items)
    weight[rng.permutation(n_items)] = np.arange(1, n_items + 1, dtype=np.float64) ** -popularity_exponent
    warm = np.ones(n_items, dtype=bool)
    warm[rng.choice(n_items, int(cold_item_share * n_items), replace=False)] = False
    created = np.where(
        rng.random(n_items) < _PREEXISTING_SHARE,
        start_time - rng.integers(1, 365 * _DAY, n_items),
        start_time + rng.integers(0, days * _DAY, n_items),
    )
    # The most popular warm item predates the window, so every interaction has some item to pick.
    top = np.flatnonzero(warm)[np.argmax(weight[warm])]
    created[top] = min(created[top], start_time - _DAY)

    n_genres = np.minimum(rng.integers(1, 4, n_items), n_categories)
    o1 = rng.integers(1, max(n_categories, 2), n_items)
    o2 = rng.integers(1, max(n_categories - 1, 2), n_items)
    o2 = o2 + (o2 >= o1)  # distinct from the primary (offset 0) and from the second genre
    genre_cols = [
        cat_names.take(pa.array((category + o) % n_categories, mask=n_genres <= j)) for j, o in ((1, o1), (2, o2))
    ]
    genres = pc.binary_join_element_wise(cat_names.take(category), *genre_cols, "|", null_handling="skip")

    syll = rng.integers(0, len(_SYLLABLES), (n_categories * _WORDS_PER_CATEGORY, 3))
    syll_arrays = [pa.array(np.asarray(_SYLLABLES)[syll[:, j]]) for j in range(3)]
    syll_arrays[2] = pc.if_else(pa.array(rng.random(len(syll)) < 0.5), syll_arrays[2], None)
    own_words = pc.binary_join_element_wise(*syll_arrays, "", null_handling="skip")
    vocab = pa.concat_arrays([own_words, pa.array(_SHARED_WORDS)])  # category c owns rows c*W .. (c+1)*W-1
    n_words = rng.integers(2, 5, n_items)
    words = []
    for j in range(4):
        own = category * _WORDS_PER_CATEGORY + rng.integers(0, _WORDS_PER_CATEGORY, n_items)
        shared = n_categories * _WORDS_PER_CATEGORY + rng.integers(0, len(_SHARED_WORDS), n_items)
        idx = np.where(rng.random(n_items) < _CATEGORY_WORD_SHARE, own, shared)
        words.append(vocab.take(pa.array(idx, mask=n_words <= j)))
    title = pc.binary_join_element_wise(*words, " ", null_handling="skip")

    log_price_level = rng.uniform(np.log(5.0), np.log(100.0), n_categories)
    price = np.round(np.exp(log_price_level[category] + 0.5 * rng.standard_normal(n_items)), 2)
    log_w = np.log(weight)
    z = (log_w - log_w.mean()) / (log_w.std() + 1e-12)
    quality = np.round(1.0 / (1.0 + np.exp(-(0.8 * z + 0.8 * rng.standard_normal(n_items)))), 4)
    items = pd.DataFrame({
        "item_id": _strings(_prefixed_ids("i", n_items)), "category": _strings(cat_names.take(category)),
        "genres": _strings(genres), "price": price, "quality": quality, "title": _strings(title),
        "created_at": created.astype(np.int64),
    })
    return items, category, style, weight, created, warm


def _make_users(rng, n_users, n_categories, latent_dim, taste_concentration):
    """The users table plus segment per user and taste matrices over categories and styles."""
    n_seg = len(_SEGMENTS)
    segment = rng.choice(n_seg, n_users, p=[s[4] for s in _SEGMENTS])
    favoured_by = rng.permutation(n_categories) % n_seg  # the segment that favours each category
    prior = 1.0 + _SEGMENT_BOOST * (favoured_by[None, :] == np.arange(n_seg)[:, None])
    prior /= prior.sum(axis=1, keepdims=True)  # (S, C)
    taste = _dirichlet_rows(taste_concentration * n_categories * prior[segment], rng)  # (U, C)
    style_taste = _dirichlet_rows(np.full((n_users, latent_dim), float(taste_concentration)), rng)  # (U, L)
    ages = np.array([s[3] for s in _SEGMENTS], dtype=np.float64)
    codes, probs = zip(*_COUNTRIES)
    users = pd.DataFrame({
        "user_id": _strings(_prefixed_ids("u", n_users)),
        "age": np.clip(np.round(ages[segment] + 8.0 * rng.standard_normal(n_users)), 16, 80).astype(np.int64),
        "segment": _strings(pa.array([s[0] for s in _SEGMENTS]).take(segment)),
        "country": _strings(pa.array(codes).take(rng.choice(len(codes), n_users, p=np.asarray(probs) / sum(probs)))),
    })
    return users, segment, favoured_by, taste, style_taste


def _sample_times(rng, segment: np.ndarray, start_time: int, days: int) -> np.ndarray:
    """Unix seconds in ``[start_time, start_time + days * 86400)`` with each segment's day and hour rhythm."""
    end_time = start_time + days * _DAY
    first_day = start_time // _DAY
    weekday = (first_day + np.arange(days + 1) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    weekend_weight = np.array([s[2] for s in _SEGMENTS])
    day_probs = np.where(weekday[None, :] >= 5, weekend_weight[:, None], 1.0)  # (S, days + 1)
    peaks = np.array([s[1] for s in _SEGMENTS])  # (S, 2)
    t = np.empty(len(segment), dtype=np.int64)
    todo = np.arange(len(segment))
    while todo.size:  # redraw the few times that fall outside the window (a partial first/last day)
        seg, m = segment[todo], todo.size
        day = _sample_rows(day_probs, seg, rng)
        hour = peaks[seg, rng.integers(0, 2, m)] + _HOUR_SD * rng.standard_normal(m)
        hour = np.where(rng.random(m) < _BACKGROUND_HOUR_SHARE, 24.0 * rng.random(m), hour)
        second = np.floor(hour * 3600).astype(np.int64) % _DAY
        t[todo] = (first_day + day) * _DAY + second
        todo = todo[(t[todo] < start_time) | (t[todo] >= end_time)]
    return t


def generate_synthetic(
    n_users: int = 1000,
    n_items: int = 2000,
    n_interactions: int = 20_000,
    n_categories: int = 12,
    latent_dim: int = 8,
    popularity_exponent: float = 1.0,
    taste_concentration: float = 0.3,
    cold_item_share: float = 0.05,
    start_time: int = 1_704_067_200,
    days: int = 28,
    seed: int = 0,
    name: str = "synthetic",
) -> Dataset:
    """Generate a dataset with planted popularity, taste, context and cold-start structure.

    Args:
        n_users: Rows of the users table (ids ``u0``...); a user may end up with no interactions.
        n_items: Rows of the items table (ids ``i0``...), cold items included.
        n_interactions: Rows of the interactions table, sorted by timestamp.
        n_categories: Number of item categories (primary genre of each item).
        latent_dim: Number of latent styles: every item has one, every user a Dirichlet taste over
            them, so there is collaborative signal beyond category and popularity.
        popularity_exponent: Zipf exponent of item popularity (0 = uniform; 1 = classic Zipf).
        taste_concentration: Mean Dirichlet concentration per category/style; small values give
            users a few favourite categories, large values pull them toward their segment's prior.
        cold_item_share: Share of items, in [0, 1), that never get an interaction.
        start_time: Unix seconds at which the interaction window opens.
        days: Length of the interaction window in days.
        seed: Seed of the single ``numpy.random.Generator``; same seed, same tables.
        name: Dataset name for reports.

    Returns:
        A validated :class:`features.schema.Dataset`; ``meta`` holds the parameters, the cold item
        ids, the categories each segment favours and each category's daypart.

    Raises:
        ValueError: A parameter is out of range; the message names it.
    """
    params = dict(
        n_users=n_users, n_items=n_items, n_interactions=n_interactions, n_categories=n_categories,
        latent_dim=latent_dim, popularity_exponent=popularity_exponent,
        taste_concentration=taste_concentration, cold_item_share=cold_item_share,
        start_time=start_time, days=days, seed=seed,
    )
    _check_params(**params)
    rng = np.random.default_rng(seed)
    items, item_cat, item_style, weight, created, warm = _make_items(
        rng, n_items, n_categories, latent_dim, popularity_exponent, cold_item_share, start_time, days
    )
    users, segment, favoured_by, taste, style_taste = _make_users(
        rng, n_users, n_categories, latent_dim, taste_concentration
    )
    category_daypart = rng.permutation(n_categories) % len(_DAYPARTS)  # balanced across dayparts

    activity = rng.lognormal(0.0, 1.0, n_users)
    # Grouped by user (the final sort is by time): the per-user draws below then read memory in order.
    user = np.repeat(np.arange(n_users), rng.multinomial(n_interactions, activity / activity.sum()))
    t = _sample_times(rng, segment[user], start_time, days)
    hour_daypart = (t % _DAY) // (_DAY // len(_DAYPARTS))
    first, second = _sample_rows(taste, user, rng), _sample_rows(taste, user, rng)
    redraw = (category_daypart[first] != hour_daypart) & (rng.random(n_interactions) < _HOUR_TILT)
    cat = np.where(redraw, second, first)
    style = _sample_rows(style_taste, user, rng)

    w = np.flatnonzero(warm)  # cold items are never candidates
    item = np.full(n_interactions, -1, dtype=np.int64)
    todo = np.flatnonzero(rng.random(n_interactions) >= _POPULARITY_PICK_SHARE)
    # Finest groups first; a draw whose group has no item yet at its time falls back to the next.
    for item_group, group, n_groups in (
        (item_cat * latent_dim + item_style, cat * latent_dim + style, n_categories * latent_dim),
        (item_cat, cat, n_categories),
        (np.zeros(n_items, dtype=np.int64), np.zeros(n_interactions, dtype=np.int64), 1),
    ):
        if n_groups == 1:  # popularity-only picks, and draws whose category had no item yet
            todo = np.flatnonzero(item < 0)
        sampler = _PrefixSampler(item_group[w], created[w], weight[w], n_groups)
        pick, ok = sampler.sample(group[todo], t[todo], rng.random(todo.size))
        item[todo[ok]] = w[pick[ok]]
        todo = todo[~ok]

    order = np.argsort(t, kind="stable")
    user_ids, item_ids = _prefixed_ids("u", n_users), _prefixed_ids("i", n_items)
    interactions = pd.DataFrame({
        "user_id": _strings(user_ids.take(pa.array(user[order]))),
        "item_id": _strings(item_ids.take(pa.array(item[order]))),
        "timestamp": t[order],
    })
    names = _category_names(n_categories)
    meta = {
        "generator": "features.synthetic.generate_synthetic",
        "params": params,
        "cold_items": items["item_id"][~warm].tolist(),
        "segment_categories": {
            s[0]: [names[c] for c in np.flatnonzero(favoured_by == k)] for k, s in enumerate(_SEGMENTS)
        },
        "category_daypart": {names[c]: _DAYPARTS[d] for c, d in enumerate(category_daypart)},
    }
    return Dataset(name=name, interactions=interactions, items=items, users=users, meta=meta)
