"""Business rules: what each rule does (order, counts, caps), the chain, determinism, config errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.encoders import FeatureSet
from features.store import FeatureStore
from features.vocab import IdVocab
from ranking import rules as R
from ranking.rule_config import RuleConfigError, RuleSet

ROOT = Path(__file__).resolve().parents[2]
WHERE = "configs/rules/test.yaml"
# Codes: 1 comedy, 2 drama, 3 horror; the first non-zero code is the primary category.
CATS = [[1, 0], [1, 2], [1, 0], [2, 0], [2, 3], [3, 0], [0, 0], [3, 1]]
VECS = [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [-1, 0], [0, -1], [1, 1]]
POP = [5, 1, 2, 8, 3, 9, 7, 4]  # popularity order: 5 3 6 0 7 4 2 1


@pytest.fixture
def cat():
    ids = np.array([f"i{i}" for i in range(8)])
    return R.ItemCatalog(CATS, ["<none>", "comedy", "drama", "horror"], VECS, POP, ids,
                         {"kids": np.array([1, 9, 8, 0, 0, 0, 0, 0])})


def arr(*xs, dtype=np.int64):
    return np.array(xs, dtype=dtype)


ALL = np.arange(8, dtype=np.int64)
DESC = np.linspace(0.9, 0.2, 8).astype(np.float32)  # item i scores DESC[i]
CTX = R.RequestContext()


def test_sort_by_score_breaks_ties_by_lower_index():
    items, scores = R.sort_by_score(arr(5, 2, 7, 1), arr(0.5, 0.9, 0.5, 0.1, dtype=np.float32))
    assert items.tolist() == [2, 5, 7, 1]


def test_exclude_seen_keeps_order(cat):
    items, scores = R.exclude_seen(ALL[::-1], DESC[::-1], cat, R.RequestContext(seen=arr(2, 5)))
    assert items.tolist() == [7, 6, 4, 3, 1, 0] and scores[0] == DESC[7]


def test_block_and_allow_lists_use_external_ids(cat):
    assert R.block_list(ALL, DESC, cat, CTX, ids=("i1", "i6", "gone"))[0].tolist() == [0, 2, 3, 4, 5, 7]
    assert R.allow_list(ALL, DESC, cat, CTX, ids=("i6", "i1"))[0].tolist() == [1, 6]
    assert R.allow_list(ALL, DESC, cat, CTX, ids=())[0].tolist() == ALL.tolist()  # empty: no restriction


def test_category_filter_any_of_include_none_of_exclude(cat):
    assert R.category_filter(ALL, DESC, cat, CTX, include=("drama",), exclude=())[0].tolist() == [1, 3, 4]
    assert R.category_filter(ALL, DESC, cat, CTX, include=("comedy",), exclude=(3,))[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown category 'comdy'; known: comedy, drama, horror"):
        R.category_filter(ALL, DESC, cat, CTX, include=("comdy",), exclude=())


def test_request_filter_takes_ids_or_indices_and_category_names(cat):
    ctx = R.RequestContext(exclude_items=["i0"], include_categories=["comedy"], exclude_categories=["horror"])
    assert R.request_filter(ALL, DESC, cat, ctx)[0].tolist() == [1, 2]
    assert R.request_filter(ALL, DESC, cat, R.RequestContext(exclude_items=arr(0, 7)))[0].tolist() == [1, 2, 3, 4, 5, 6]


def test_category_cap_keeps_best_per_primary_category_in_input_order(cat):
    perm = arr(7, 2, 6, 5, 0, 4, 1, 3)  # unsorted input
    items, scores = R.category_cap(perm, DESC[perm], cat, CTX, max_per_category=1, per_items=0)
    assert items.tolist() == [6, 5, 0, 3]  # comedy 0, drama 3, horror 5 (beats 7), 6 has no category
    assert scores.tolist() == DESC[items].tolist()
    two = R.category_cap(ALL, DESC, cat, CTX, max_per_category=2, per_items=0)[0]
    assert two.tolist() == [0, 1, 3, 4, 5, 6, 7]


def test_category_cap_scales_with_the_list_length(cat):
    # 1 per 2 items of the list: k=2 -> 1 per category, k=3 or 4 -> 2, per_items=0 -> absolute
    assert R.category_cap(ALL, DESC, cat, CTX, max_per_category=1, per_items=2, k=2)[0].tolist() == [0, 3, 5, 6]
    for k in (3, 4):
        got = R.category_cap(ALL, DESC, cat, CTX, max_per_category=1, per_items=2, k=k)[0].tolist()
        assert got == [0, 1, 3, 4, 5, 6, 7]
    assert R.category_cap(ALL, DESC, cat, CTX, max_per_category=1, per_items=0, k=50)[0].tolist() == [0, 3, 5, 6]


def test_exposure_tracker_slides_its_window():
    t = R.ExposureTracker(8, window=3)
    t.record(arr(1, 2))
    t.record(arr(3, 4))  # evicts 1
    assert t.counts.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    t.record(arr(0, 1, 2, 3, 4, 5, 6, 7))  # more than the window: only the last 3 count
    assert t.counts.tolist() == [0, 0, 0, 0, 0, 1, 1, 1] and t.share(arr(7))[0] == pytest.approx(1 / 3)


def test_exposure_cap_never_lets_an_item_pass_its_share(cat):
    t = R.ExposureTracker(8, window=20)
    ctx = R.RequestContext(exposure=t)
    served = set()
    for _ in range(50):
        items, _ = R.exposure_cap(ALL, DESC, cat, ctx, max_share=0.25, window=20)
        t.record(items[:3])
        served |= set(items[:3].tolist())
        assert t.counts.max() <= 5  # 0.25 * 20
    assert len(served) > 3  # the cap spreads impressions beyond the top 3
    assert R.exposure_cap(ALL, DESC, cat, CTX, max_share=0.0, window=20)[0].tolist() == ALL.tolist()  # no tracker
    with pytest.raises(ValueError, match="window=10 but the tracker counts 20; build it with RuleSet.make_tracker"):
        R.exposure_cap(ALL, DESC, cat, ctx, max_share=0.25, window=10)


def test_items_the_exposure_tracker_has_not_seen_are_not_capped_and_filtered_ones_are_not_read(cat):
    """A tracker built before items were added (shorter than the catalog): those items have no
    impressions; the chain's masks read the whole list, so an item an earlier filter drops must not
    make the cap fail either."""
    t = R.ExposureTracker(6, window=4)  # the catalog has 8 items
    t.record(arr(0, 0))
    assert R.exposure_mask(ALL, cat, R.RequestContext(exposure=t), max_share=0.5, window=4).tolist() == \
        [False] + [True] * 7  # item 0 at 2 of 4, items 6 and 7 unknown to the tracker: kept
    rs = RuleSet.from_config({"k": 3, "rules": [{"name": "exclude_seen"},
                                                {"name": "exposure_cap", "max_share": 0.5, "window": 4}]}, "test")
    items, _, _ = rs.apply(ALL, DESC, cat, R.RequestContext(seen=arr(6, 7), exposure=t), 3)
    assert items.tolist() == [1, 2, 3]


def test_boost_is_bounded_and_reorders(cat):
    items, scores = R.boost(arr(0, 1, 2), arr(1.0, 0.9, 0.5, dtype=np.float32), cat, CTX, ids=("i2",), amount=5.0,
                            max_boost=0.45)
    assert items.tolist() == [0, 2, 1] and scores[1] == pytest.approx(0.95)
    ctx = R.RequestContext(promoted=arr(1))
    items, scores = R.boost(arr(0, 1, 2), arr(1.0, 0.9, 0.5, dtype=np.float32), cat, ctx, ids=(), amount=0.2,
                            max_boost=0.3)
    assert items.tolist() == [1, 0, 2] and scores[0] == pytest.approx(1.1)


def test_mmr_trades_relevance_for_diversity(cat):
    items, scores = arr(1, 3, 0), arr(0.95, 0.5, 1.0, dtype=np.float32)
    assert R.mmr(items, scores, cat, CTX, lambda_=1.0)[0].tolist() == [0, 1, 3]
    out, out_scores = R.mmr(items, scores, cat, CTX, lambda_=0.5)
    assert out.tolist() == [0, 3, 1]  # 1 duplicates 0's direction
    assert out_scores.tolist() == pytest.approx([1.0, 0.5, 0.95])  # scores travel with their items
    assert R.mmr(arr(2, 1, 0), arr(0.5, 0.5, 0.5, dtype=np.float32), cat, CTX, lambda_=0.5)[0].tolist() == [0, 1, 2]


def _mmr_by_definition(items, scores, vectors, lambda_, horizon):
    """MMR step by step as its docstring defines it (a reference for the vectorised rule)."""
    order = np.lexsort((items, -scores.astype(np.float64)))
    items, scores = items[order], scores[order]
    s = scores.astype(np.float64)
    rel = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.ones_like(s)
    v = vectors[items]
    picks, rest = [], list(range(len(items)))
    max_sim = [0.0] * len(items)  # each item's highest similarity to a pick so far (0 before any)
    for _ in range(min(horizon or len(items), len(items))):
        def value(i):
            return lambda_ * rel[i] - (1 - lambda_) * max_sim[i]
        best = max(rest, key=lambda i: (value(i), -i))  # first maximum in the sorted list
        picks.append(best)
        rest.remove(best)
        for i in rest:  # the same pairwise products as max over every pick, each computed once
            max_sim[i] = max(max_sim[i], float(v[i] @ v[best]))
    return items[picks + rest]


@pytest.mark.parametrize("lambda_", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("horizon", [None, 5, 1])  # 1 of 30: a row per pick (MMR_ROWS_PER_PICK)
@pytest.mark.parametrize("size", [30, R.MMR_PRODUCT_MAX + 40])  # one similarity product / a row per pick
def test_mmr_matches_its_definition_on_random_lists(lambda_, horizon, size):
    rng = np.random.default_rng(7)
    n = size * 2
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    cat = R.ItemCatalog(np.ones((n, 1), np.int64), ["<none>", "x"], vectors, np.ones(n), np.arange(n).astype(str))
    for _ in range(20 if size < 100 else 2):
        items = rng.choice(n, size=size, replace=False).astype(np.int64)
        scores = rng.random(size).astype(np.float32)
        got = R.mmr(items, scores, cat, CTX, lambda_=lambda_, horizon=horizon)[0]
        assert got.tolist() == _mmr_by_definition(items, scores, cat.vectors, lambda_, horizon).tolist()


def test_a_request_allowing_few_categories_still_gets_k_items(cat):
    """Found by a probe of the server: asked for one category, the per-category cap (5 per 10) cut
    the list to half of k, and backfill, capped alike, could not top it up. The cap is at least an
    even share of k among the categories the request allows."""
    rs = RuleSet.from_config({"k": 4, "rules": [{"name": "category_cap", "max_per_category": 1, "per_items": 2},
                                                {"name": "backfill", "source": "popularity"}]}, "test")
    comedy = R.RequestContext(include_categories=["comedy"])  # items 0, 1, 2 (primary comedy) and 7 (horror)
    assert R.request_filter(ALL, DESC, cat, comedy)[0].tolist() == [0, 1, 2, 7]
    items, _, reasons = rs.apply(ALL, DESC, cat, comedy, 4)
    assert items.tolist() == [0, 1, 2, 7] and reasons == ["ranked"] * 4  # the cap alone would keep 0, 1, 7
    only_comedy = R.RequestContext(exclude_categories=["drama", "horror"])  # all but one: items 0, 2 and 6 (none)
    assert rs.apply(ALL, DESC, cat, only_comedy, 2)[0].tolist() == [0, 2]  # the cap alone: [0, 6]
    both = R.RequestContext(include_categories=["comedy", "drama"])  # two allowed: 2 of 4 per category, as configured
    assert R.category_cap(ALL, DESC, cat, both, max_per_category=1, per_items=2, k=4)[0].tolist() == [0, 1, 3, 4, 5, 6, 7]


def test_category_cap_matches_counting_on_random_lists():
    rng = np.random.default_rng(3)
    n = 50
    cats = rng.integers(0, 4, size=(n, 1))
    cat = R.ItemCatalog(cats, ["<none>", "a", "b", "c"], np.eye(n, 4), np.ones(n), np.arange(n).astype(str))
    for cap in (0, 1, 2, 3):
        for _ in range(20):
            items = rng.choice(n, size=25, replace=False).astype(np.int64)
            scores = rng.integers(0, 5, size=25).astype(np.float32)  # ties: the lower index ranks first
            counts, keep = {}, []
            for i in sorted(range(25), key=lambda j: (-scores[j], items[j])):
                c = cat.primary[items[i]]
                counts[c] = counts.get(c, 0) + 1
                keep.append(c == 0 or counts[c] <= cap)
            expected = items[np.sort(np.array(sorted(range(25), key=lambda j: (-scores[j], items[j])))[keep])]
            got = R.category_cap(items, scores, cat, CTX, max_per_category=cap, per_items=0)[0]
            assert got.tolist() == expected.tolist()


def test_backfill_from_global_and_segment_popularity(cat):
    one, s = arr(0), arr(1.0, dtype=np.float32)
    items, scores = R.backfill(one, s, cat, R.RequestContext(seen=arr(5)), source="popularity", k=4)
    assert items.tolist() == [0, 3, 6, 7] and scores.tolist() == [1.0, 0.0, -1.0, -2.0]
    kids = R.RequestContext(segment="kids")
    assert R.backfill(one, s, cat, kids, source="popularity", k=4)[0].tolist() == [0, 1, 2, 3]
    other = R.RequestContext(segment="unknown")
    assert R.backfill(one, s, cat, other, source="popularity", k=3)[0].tolist() == [0, 5, 3]
    assert R.backfill(ALL, DESC, cat, CTX, source="popularity", k=3)[0].tolist() == ALL.tolist()  # enough already


def test_backfill_from_content_falls_back_to_popularity(cat):
    ctx = R.RequestContext(seen=arr(5), recent_items=arr(5, -1))  # -1 padding is ignored
    assert R.backfill_source(cat, ctx, "content")[0] == "content"
    assert R.backfill(arr(0), arr(1.0, dtype=np.float32), cat, ctx, source="content", k=4)[0].tolist() == [0, 3, 4, 6]
    assert R.backfill_source(cat, R.RequestContext(), "content")[0] == "popularity"


def rule_cfg(*rules, k=4):
    return {"k": k, "rules": list(rules)}


def test_rule_set_gives_category_cap_the_list_length(cat):
    rs = RuleSet.from_config(rule_cfg({"name": "category_cap", "max_per_category": 1, "per_items": 2}), WHERE)
    assert rs.apply(ALL, DESC, cat, CTX, 2)[0].tolist() == [0, 3]  # 1 per category for 2 items
    assert rs.apply(ALL, DESC, cat, CTX, 4)[0].tolist() == [0, 1, 3, 4]  # 2 per category for 4 items


def test_rule_set_on_a_toy_request(cat):
    rs = RuleSet.from_config(rule_cfg({"name": "exclude_seen"}, {"name": "block_list", "ids": ["i1"]},
                                      {"name": "boost", "ids": ["i7"], "amount": 0.5, "max_boost": 0.25},
                                      {"name": "category_cap", "max_per_category": 1, "per_items": 0},
                                      {"name": "backfill", "source": "popularity"}), WHERE)
    ctx = R.RequestContext(seen=arr(2))
    items, scores, reasons = rs.apply(arr(3, 0, 1, 2, 7), arr(0.6, 0.9, 0.8, 0.7, 0.5, dtype=np.float32), cat, ctx, 4)
    # 2 seen, 1 blocked, 7 boosted past 3; backfill skips 5 (horror is capped by 7) and 1 (blocked).
    assert items.tolist() == [0, 7, 3, 6]
    assert reasons == ["ranked", "boosted", "ranked", "backfill:popularity"]
    assert np.all(np.diff(scores) < 0) and scores[1] == pytest.approx(0.75)
    short = rs.apply(arr(3, 0), arr(0.6, 0.9, dtype=np.float32), cat, ctx, 1)
    assert short[0].tolist() == [0] and short[2] == ["ranked"]


def test_fresh_slots_give_the_best_fresh_items_the_last_places(cat):
    now = 1_000_000.0
    first = np.array([10, 10, 10, 10, -1, now - 3 * 86400, 10, -1])  # 4 and 7 never seen, 5 first seen 3 days ago
    ctx = R.RequestContext(first_seen=first, now=now)
    assert R.fresh_items(ALL, ctx, 7).tolist() == [False] * 4 + [True, True, False, True]
    assert R.fresh_items(ALL, ctx, 1).tolist() == [False] * 4 + [True, False, False, True]
    # one slot of 3: the best fresh item below (4, score DESC[4]) takes the last place; 2 follows right after
    items, scores = R.fresh_slots(ALL, DESC, cat, ctx, max_age_days=7, slots=1, k=3)
    assert items.tolist() == [0, 1, 4, 2, 3, 5, 6, 7] and np.array_equal(scores, DESC[items])
    items, _ = R.fresh_slots(ALL, DESC, cat, ctx, max_age_days=7, slots=2, k=3)
    assert items.tolist() == [0, 4, 5, 1, 2, 3, 6, 7]
    items, _ = R.fresh_slots(ALL, DESC, cat, ctx, max_age_days=1, slots=2, k=3)  # 5 is too old now: 7 instead
    assert items.tolist() == [0, 4, 7, 1, 2, 3, 5, 6]
    head_fresh = np.array([4, 0, 1, 2, 3, 5, 6, 7])  # a fresh item already in the first k: nothing moves
    assert R.fresh_slots(head_fresh, DESC[head_fresh], cat, ctx, max_age_days=7, slots=1, k=3)[0].tolist() == \
        head_fresh.tolist()
    for quiet in (dict(slots=0, k=3, ctx=ctx), dict(slots=1, k=3, ctx=CTX), dict(slots=1, k=8, ctx=R.RequestContext(
            first_seen=np.full(8, 10), now=now))):  # no slots, no first-seen times, nothing fresh
        c = quiet.pop("ctx")
        assert R.fresh_slots(ALL, DESC, cat, c, max_age_days=7, **quiet)[0].tolist() == ALL.tolist()


def test_rule_set_marks_the_items_fresh_slots_placed(cat):
    rs = RuleSet.from_config(rule_cfg({"name": "exclude_seen"}, {"name": "mmr", "lambda_": 1.0},
                                      {"name": "fresh_slots", "max_age_days": 7, "slots": 1},
                                      {"name": "backfill", "source": "popularity"}), WHERE)
    first = np.array([10, 10, 10, 10, 10, 10, -1, 10])
    ctx = R.RequestContext(seen=arr(0), first_seen=first, now=1e6)
    items, scores, reasons = rs.apply(ALL, DESC, cat, ctx, 3)
    assert items.tolist() == [1, 2, 6] and reasons == ["ranked", "ranked", "fresh"]
    for later in ({"name": "mmr", "lambda_": 0.5}, {"name": "exclude_seen"}):  # a reorder, a filter
        with pytest.raises(RuleConfigError, match="move fresh_slots after them"):
            RuleSet.from_config(rule_cfg({"name": "fresh_slots", "max_age_days": 7, "slots": 1}, later), WHERE)


def test_backfill_respects_request_and_config_filters(cat):
    rs = RuleSet.from_config(rule_cfg({"name": "category_filter", "include": [], "exclude": ["drama"]},
                                      {"name": "backfill", "source": "popularity"}, k=3), WHERE)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    items, _, reasons = rs.apply(*empty, cat, CTX, 3)  # cold start: nothing ranked
    assert items.tolist() == [5, 6, 0] and reasons == ["backfill:popularity"] * 3
    ctx = R.RequestContext(include_categories=["comedy"])
    assert rs.apply(*empty, cat, ctx, 3)[0].tolist() == [0, 7, 2]


def test_backfill_keeps_the_ranked_items_a_per_k_cap_kept_and_a_longer_list_is_never_shorter(cat):
    """The backfill's admission runs the caps with the request's k, as the chain does: with a cap of
    1 per category per 2 items, k = 4 keeps two comedies; an absolute cap of 1 would drop a ranked one."""
    rs = RuleSet.from_config(rule_cfg({"name": "category_cap", "max_per_category": 1, "per_items": 2},
                                      {"name": "backfill", "source": "popularity"}), WHERE)
    two = R.RequestContext(include_categories=["comedy", "drama"])  # two categories allowed: 2 per category at k=4
    items, _, reasons = rs.apply(arr(0, 1, 2), DESC[:3], cat, two, 4)  # three comedies ranked
    assert items.tolist() == [0, 1, 3, 7]  # 2 is the third comedy: capped; then by popularity 3 (drama), 7 (horror)
    assert reasons == ["ranked", "ranked", "backfill:popularity", "backfill:popularity"]
    lengths = [len(rs.apply(ALL, DESC, cat, CTX, k)[0]) for k in range(1, 9)]
    assert lengths == sorted(lengths) and lengths[-1] == 8, lengths


def test_the_size_of_a_boost_does_not_reorder_the_rest_of_the_list(cat):
    """Promoted items lifted far above the list used to set MMR's relevance scale and squash the other
    scores into a band where similarity alone ordered them (found serving: --promoted scrambled the
    list). They come first whatever the amount; the rest keep one order."""
    def answer(amount):
        rs = RuleSet.from_config(rule_cfg({"name": "boost", "ids": [], "amount": amount, "max_boost": amount},
                                          {"name": "mmr", "lambda_": 0.7}, k=8), WHERE)
        return rs.apply(ALL, DESC, cat, R.RequestContext(promoted=["i6", "i7"]), 8)
    small, large = answer(0.8), answer(50.0)
    # one plain candidate left (nothing sets the scale but the whole list): the promoted still come first
    rs = RuleSet.from_config(rule_cfg({"name": "boost", "ids": [], "amount": 0.5, "max_boost": 0.5},
                                      {"name": "mmr", "lambda_": 0.7}, k=3), WHERE)
    assert rs.apply(arr(0, 1, 2), DESC[:3], cat, R.RequestContext(promoted=["i1", "i2"]), 3)[0].tolist()[:2] == [1, 2]
    assert small[0][:2].tolist() == large[0][:2].tolist() == [6, 7] and small[2][:2] == ["boosted"] * 2
    assert small[0].tolist() == large[0].tolist()


def test_rule_sets_are_deterministic(cat):
    rs = RuleSet.load(ROOT / "configs/rules/diverse.yaml")
    rng = np.random.default_rng(0)
    scores = rng.random(8).astype(np.float32)
    outs = []
    for seed in (0, 1, 2):
        perm = rng.permutation(8)  # the candidates' order does not matter either
        ctx = R.RequestContext(seen=arr(4), recent_items=arr(0), seed=seed, exposure=rs.make_tracker(len(cat)))
        outs.append(rs.apply(ALL[perm], scores[perm], cat, ctx, 5))
    for items, s, reasons in outs[1:]:
        assert items.tolist() == outs[0][0].tolist() and s.tolist() == outs[0][1].tolist() and reasons == outs[0][2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs/rules").glob("*.yaml")), ids=lambda p: p.name)
def test_every_rules_config_loads_and_runs(path, cat):
    rs = RuleSet.load(path)
    rs.check_catalog(cat)
    ctx = R.RequestContext(seen=arr(0), exposure=rs.make_tracker(len(cat)))
    items, scores, reasons = rs.apply(ALL, DESC, cat, ctx, rs.k)
    assert 0 not in items.tolist() and len(items) == len(reasons) == len(set(items.tolist())) <= rs.k


GOOD = {"name": "exposure_cap", "max_share": 0.05, "window": 100}


@pytest.mark.parametrize("cfg, match", [
    (rule_cfg({"name": "mmmr"}), r"unknown rule 'mmmr' \(rules\[0\]\) in configs/rules/test.yaml; known rules: "
                                 r"exclude_seen, block_list"),
    (rule_cfg({"name": "mmr", "lambda": 0.5}), r"rule 'mmr' .* unknown parameter\(s\) \['lambda'\]; known: lambda_"),
    (rule_cfg({"name": "boost", "ids": []}),
     r"missing parameter\(s\) \['amount', 'max_boost'\]; add e.g. `amount: 0.1"),
    (rule_cfg({**GOOD, "max_share": "0.05"}), r"'exposure_cap' .* parameter 'max_share' = '0.05' is not a number; "
                                              r"write e.g. `max_share: 0.05` \(no quotes\)"),
    (rule_cfg({**GOOD, "max_share": True}), r"'max_share' = True is not a number"),
    (rule_cfg({**GOOD, "max_share": 1.5}), r"'max_share' = 1.5 is out of range; it must be in \[0, 1\]"),
    (rule_cfg({"name": "mmr", "lambda_": -0.1}), r"'mmr' .* 'lambda_' = -0.1 is out of range; it must be in \[0, 1\]"),
    (rule_cfg({"name": "mmr", "lambda_": float("nan")}), r"'lambda_' = nan is not a number"),
    (rule_cfg({"name": "category_cap", "max_per_category": -1, "per_items": 10}), r"'max_per_category' = -1 is out of range; "
                                                                 r"it must be >= 0"),
    (rule_cfg({"name": "category_cap", "max_per_category": 2.5, "per_items": 10}), r"'max_per_category' = 2.5 is not a whole number"),
    (rule_cfg({**GOOD, "window": 0}), r"'window' = 0 is out of range; it must be >= 1"),
    (rule_cfg({**GOOD, "max_share": 0.001}), r"max_share \* window = 0.1 < 1, so no item could ever be shown"),
    (rule_cfg({"name": "boost", "ids": [], "amount": 0.1, "max_boost": -0.2}), r"'max_boost' = -0.2 is out of range"),
    (rule_cfg({"name": "boost", "ids": [], "amount": -1, "max_boost": 0.2}), r"'amount' = -1 is out of range"),
    (rule_cfg({"name": "block_list", "ids": "i1"}), r"'ids' = 'i1' is not a list of ids"),
    (rule_cfg({"name": "category_filter", "include": [1.5], "exclude": []}),
     r"'include' = \[1.5\] is not a list of names"),
    (rule_cfg({"name": "backfill", "source": "random"}), r"'source' = 'random' is not one of: popularity, content"),
    (rule_cfg({"name": "backfill", "source": "content"}, {"name": "exclude_seen"}), r"move it to the end"),
    (rule_cfg({"name": "mmr", "lambda_": 0.5}, {"name": "boost", "ids": [], "amount": 0.1, "max_boost": 0.1}),
     r"move boost before mmr"),
    (rule_cfg({"name": "exclude_seen"}, {"name": "exclude_seen"}), r"'exclude_seen' appears 2 times"),
    (rule_cfg("exclude_seen"), r"rules\[0\] .* is 'exclude_seen'; each rule is a mapping with a name"),
    (rule_cfg({"name": "exclude_seen"}, k=0), r"k = 0 .* must be a whole number > 0"),
    ({"k": 10, "rules": "exclude_seen"}, r"it must be a list"),
    ({"k": 10, "rules": [], "extra": 1}, r"has keys \['extra', 'k', 'rules'\]; it needs exactly `k` and `rules`"),
])
def test_bad_config_stops_with_a_clear_error(cfg, match):
    with pytest.raises(RuleConfigError, match=match):
        RuleSet.from_config(cfg, WHERE)


def test_ids_given_as_numbers_are_external_ids():
    rs = RuleSet.from_config(rule_cfg({"name": "block_list", "ids": [50, "i1"]}), WHERE)
    assert rs.rules[0].params["ids"] == ("50", "i1")


def test_check_catalog_names_unknown_categories_and_logs_unknown_ids(cat, caplog):
    bad = RuleSet.from_config(rule_cfg({"name": "category_filter", "include": [], "exclude": ["horor"]}), WHERE)
    with pytest.raises(RuleConfigError, match=r"'category_filter' .* parameter 'exclude': unknown category 'horor'"):
        bad.check_catalog(cat)
    RuleSet.from_config(rule_cfg({"name": "block_list", "ids": ["i1", "zz"]}), WHERE).check_catalog(cat)
    assert "not in the catalog: ['zz']" in caplog.text


@pytest.mark.parametrize("items, scores, k, match", [
    ([0, 1], [0.5, 0.4], 0, "k = 0 must be a whole number > 0"),
    ([0, 1], [0.5], 3, r"items \(2,\) and scores \(1,\) must be 1-D and of equal length"),
    ([0, 9], [0.5, 0.4], 3, r"catalog indices in 0..7; got 0..9"),
    ([0, 1], [0.5, float("nan")], 3, "scores contain 1 NaN"),
])
def test_apply_rejects_malformed_requests(cat, items, scores, k, match):
    rs = RuleSet.from_config(rule_cfg({"name": "exclude_seen"}), WHERE)
    with pytest.raises(ValueError, match=match):
        rs.apply(items, scores, cat, CTX, k)


def test_catalog_checks_shapes_and_codes():
    with pytest.raises(ValueError, match="popularity has 2 rows but categories has 8"):
        R.ItemCatalog(CATS, ["<none>", "a", "b", "c"], VECS, [1, 2], np.array([f"i{i}" for i in range(8)]))
    with pytest.raises(ValueError, match="codes up to 3 but category_names has 2 names"):
        R.ItemCatalog(CATS, ["<none>", "a"], VECS, POP, np.array([f"i{i}" for i in range(8)]))


def test_catalog_from_feature_store():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "genres": ["x|y", "", "y"]})
    fs = FeatureSet.from_config({"item": {"genres": {"kind": "multi_categorical", "max_len": 2}}}, WHERE)
    fs.encoders["item"]["genres"].fit(items["genres"])
    table = fs.transform("item", items)
    store = FeatureStore(IdVocab(["u"]), IdVocab(items["item_id"]), fs, {}, table, None, None, None,
                         np.array([3, 1, 2]))
    c = R.ItemCatalog.from_store(store, np.eye(3, dtype=np.float32), "genres")
    assert c.category_names[:2] == ["<none>", "<unknown>"] and len(c) == 3
    assert [c.category_names[p] for p in c.primary] == ["x", "<none>", "y"]
    assert c.item_indices(["c", "zz"]).tolist() == [2]


def _one_rule_at_a_time(rs: RuleSet, items, scores, catalog, ctx, k):
    """The chain as its rules define it: each rule function on the previous one's whole output (no
    masks ANDed, no sort skipped): what RuleSet.apply must equal."""
    from ranking.rule_config import RULES
    items, scores = R.request_filter(*R.sort_by_score(items, scores), catalog, ctx)
    boosted = np.zeros(0, np.int64)
    for j, r in enumerate(rs.rules):
        if r.role == "backfill":
            return r(items[:k], scores[:k], catalog, ctx, k=k, admit=rs._admit(catalog, ctx, k))
        extra = {"k": k} if RULES[r.name].takes_k else {}
        if r.name == "mmr":
            last = all(later.role == "backfill" or later.name == "fresh_slots" for later in rs.rules[j + 1:])
            extra = {"horizon": k} if last else {}
            if len(boosted):
                extra["boosted"] = boosted
        items, scores = r(items, scores, catalog, ctx, **extra)
        if r.name == "boost" and min(r.params["amount"], r.params["max_boost"]) > 0:
            boosted = np.union1d(boosted, R.promoted_items(catalog, ctx, r.params["ids"]))
    return items[:k], scores[:k]


CHAINS = [
    [{"name": "exclude_seen"}, {"name": "block_list", "ids": []}, {"name": "category_filter", "include": [], "exclude": []},
     {"name": "boost", "ids": [], "amount": 0.1, "max_boost": 0.2}, {"name": "exposure_cap", "max_share": 0.05, "window": 40},
     {"name": "category_cap", "max_per_category": 2, "per_items": 5}, {"name": "mmr", "lambda_": 0.7},
     {"name": "backfill", "source": "popularity"}],
    [{"name": "block_list", "ids": ["j3", "j8"]}, {"name": "exclude_seen"}, {"name": "allow_list", "ids": []},
     {"name": "category_filter", "include": ["c1", "c2", "c3"], "exclude": ["c4"]},
     {"name": "boost", "ids": ["j5", "j9"], "amount": 0.3, "max_boost": 0.2},
     {"name": "category_cap", "max_per_category": 1, "per_items": 0}, {"name": "exposure_cap", "max_share": 0.1, "window": 40},
     {"name": "mmr", "lambda_": 0.3}, {"name": "fresh_slots", "max_age_days": 2, "slots": 2},
     {"name": "backfill", "source": "content"}],
    [{"name": "allow_list", "ids": [f"j{i}" for i in range(0, 60, 2)]}, {"name": "exposure_cap", "max_share": 0.05, "window": 40},
     {"name": "category_cap", "max_per_category": 3, "per_items": 10}, {"name": "exclude_seen"}],
]


@pytest.mark.parametrize("chain", range(len(CHAINS)))
def test_the_chain_equals_its_rules_applied_one_at_a_time(chain):
    """RuleSet.apply ANDs consecutive filters' masks, skips a boost with nothing to promote and the
    sorts of a list already in order: the same items and scores as each rule on the whole list in turn."""
    rng = np.random.default_rng(chain)
    n = 60
    cats = rng.integers(0, 6, (n, 2))
    catalog = R.ItemCatalog(cats, ["<none>", "c1", "c2", "c3", "c4", "c5"], rng.normal(size=(n, 4)),
                            rng.integers(1, 50, n), np.array([f"j{i}" for i in range(n)]),
                            blocked=rng.random(n) < 0.05)
    rs = RuleSet.from_config(rule_cfg(*CHAINS[chain], k=8), WHERE)
    for trial in range(40):
        tracker = rs.make_tracker(n)
        if tracker is not None:
            tracker.record(rng.integers(0, n, 200))  # some items at their cap
        ctx = R.RequestContext(seen=rng.choice(n, rng.integers(0, 15), replace=False),
                               exclude_items=[f"j{i}" for i in rng.choice(n, 2)] if trial % 3 == 0 else (),
                               exclude_categories=["c5"] if trial % 4 == 0 else (),
                               promoted=["j7"] if trial % 2 else (), recent_items=rng.choice(n, 3),
                               exposure=tracker, first_seen=rng.integers(-1, 100, n) * 3600, now=100 * 3600.0)
        items = rng.choice(n, rng.integers(0, 50), replace=False)
        scores = rng.choice(np.linspace(0, 1, 12), len(items)).astype(np.float32)  # ties too
        want = _one_rule_at_a_time(rs, items, scores, catalog, ctx, 8)
        got = rs.apply(items, scores, catalog, ctx, 8)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist(), trial
