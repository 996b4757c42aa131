"""Catalog changes applied to a loaded pipeline (pipeline/catalog.py): new items online, blocks, user attributes."""

import numpy as np
import pandas as pd
import pytest

from events.catalog import REASONS, check_catalog
from inference.models import TorchModel
from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.catalog import OnlineCatalog, catalog_schema
from pipeline.online import OnlineState
from pipeline.pipeline import Request, RequestError
from retrieval.towers import item_embeddings


def records(*rows):
    return pd.DataFrame([{"op": op, "entity_id": i, "attributes": a} for op, i, a in rows])


@pytest.fixture
def live(tiny_deployed_run):
    art = RunArtifacts(tiny_deployed_run)
    pipe = load_pipeline(tiny_deployed_run)
    towers = art.load_towers(pipe.store)
    return pipe, OnlineCatalog(pipe, TorchModel(towers.item_tower), {}), towers


def raw_item(tiny_prepared, item_id: str) -> dict:
    """An item's raw attributes (the generator's table, the same data the run saw)."""
    row = tiny_prepared.dataset.items.set_index("item_id").loc[item_id]
    return {k: (None if pd.isna(v) else (float(v) if isinstance(v, (int, float, np.number)) else str(v)))
            for k, v in row.items()}


def test_a_new_item_gets_the_offline_item_tower_embedding_and_is_retrieved(live, tiny_prepared):
    pipe, catalog, towers = live
    source = str(pipe.store.items.ids[7])
    attrs = raw_item(tiny_prepared, source)
    n0 = len(pipe.store.items)
    assert catalog.apply(records(("upsert_item", "new-1", attrs))) == {
        "new_items": 1, "updated_items": 0, "blocked": 0, "unblocked": 0, "users": 0}
    # a block of an id the catalog lacks (a replayed old record) is applied as neither (it read "unblocked")
    counts = catalog.apply(records(("block", "never-there", {}), ("block", "new-1", {}), ("unblock", "new-1", {})))
    assert (counts["blocked"], counts["unblocked"]) == (0, 1)  # one record per id: the last one wins
    counts = catalog.apply(records(("block", "never-there", {}), ("block", "new-1", {})))
    assert (counts["blocked"], counts["unblocked"]) == (1, 0)
    catalog.apply(records(("unblock", "new-1", {})))
    new = int(pipe.store.items.lookup(["new-1"])[0])
    assert new == n0 and len(pipe.catalog) == n0 + 1 and pipe.retriever.index.ntotal == n0 + 1
    # offline: the item tower on the stored encoded row of the same attributes, with an unknown id (code 0)
    row = {k: v[7:8].copy() for k, v in pipe.store.item_table.items()}
    row["item_id"][:] = 0
    expected = item_embeddings(towers, row)[0]
    np.testing.assert_allclose(pipe.retriever.item_embeddings[new], expected, atol=1e-6)
    np.testing.assert_allclose(pipe.features.item_embeddings[new], expected, atol=1e-6)
    for name, col in pipe.store.item_table.items():
        if name != "item_id":
            np.testing.assert_array_equal(col[new], col[7])  # content features = the source item's
    np.testing.assert_array_equal(pipe.catalog.categories[new], pipe.catalog.categories[7])
    # retrieved for a query near it: its own vector is its nearest neighbour
    _, top = pipe.retriever.search(expected[None], 3)
    assert top[0, 0] == new
    # retrieved for the user whose taste (query) is nearest to it, among the candidates the ranker scores
    t = int(pipe.store.last_ts.max()) + 60
    users = np.arange(len(pipe.store.users))
    queries = pipe.retriever.embed_requests(users, np.full(len(users), t))
    assert new in pipe.rank(np.array([int(np.argmax(queries @ expected))]), np.array([t]))[0][0]
    # and served: an item of a genre the run never saw (its category is the encoder's "<unknown>"),
    # asked for by a request for that category, is the answer of that user, from the ranked candidates
    catalog.apply(records(("upsert_item", "new-2", {**attrs, "genres": "no-such-genre"})))
    new2 = int(pipe.store.items.lookup(["new-2"])[0])
    category = pipe.catalog.category_names[int(pipe.catalog.primary[new2])]
    assert category == "<unknown>"
    fan = str(pipe.store.users.ids[int(np.argmax(queries @ pipe.retriever.item_embeddings[new2]))])
    answer = pipe.recommend([Request(fan, 10, t, include_categories=[category])])[0]
    assert answer.item_ids[:1] == ["new-2"] and answer.reasons[0] == "ranked"
    # events on it are applied like any other
    OnlineState(pipe).apply(pd.DataFrame({"user_id": ["u-x"], "item_id": ["new-1"], "timestamp": [t]}))
    assert pipe.store.popularity[new] == 1 and pipe.features.item_first_ts[new] == t
    assert "new-1" not in pipe.recommend([Request("u-x", pipe.max_k, t + 1)])[0].item_ids  # seen now


def test_a_fresh_slot_puts_a_new_item_in_the_answer_that_ranked_it_low(live, tiny_prepared):
    from ranking.rule_config import RuleSet

    pipe, catalog, _ = live
    attrs = raw_item(tiny_prepared, str(pipe.store.items.ids[7]))
    catalog.apply(records(("upsert_item", "new-1", attrs)))
    new = int(pipe.store.items.lookup(["new-1"])[0])
    t = int(pipe.store.last_ts.max()) + 60
    users = np.arange(len(pipe.store.users))
    queries = pipe.retriever.embed_requests(users, np.full(len(users), t))
    fan = str(pipe.store.users.ids[int(np.argmax(queries @ pipe.retriever.item_embeddings[new]))])
    assert "new-1" not in pipe.recommend([Request(fan, 10, t)])[0].item_ids  # a candidate, scored low: no popularity
    # no category_cap: it keeps the best few of each category among all candidates, a new item of a
    # crowded category (scored low) would be gone before any later rule
    cfg = {"k": 10, "rules": [{"name": "exclude_seen"}, {"name": "mmr", "lambda_": 0.9},
                              {"name": "fresh_slots", "max_age_days": 7, "slots": 1},
                              {"name": "backfill", "source": "popularity"}]}
    fresh = pipe.variant(rules=RuleSet.from_config(cfg, "test"))
    plain = pipe.variant(rules=RuleSet.from_config({**cfg, "rules": cfg["rules"][:2] + cfg["rules"][3:]}, "test"))
    # every other item first seen long ago (the tiny catalog is all recent): the new item is the one fresh item
    pipe.features.item_first_ts[:new] = t - 365 * 86400
    before = plain.recommend([Request(fan, 10, t)])[0]
    answer = fresh.recommend([Request(fan, 10, t)])[0]
    assert "new-1" not in before.item_ids
    assert answer.item_ids[-1] == "new-1" and answer.reasons[-1] == "fresh"
    assert answer.item_ids[:9] == before.item_ids[:9] and answer.reasons[:9] == before.reasons[:9]  # the tenth gave way
    # once it has interactions older than max_age_days it is not fresh any more: the plain answer again
    later = t + 30 * 86400
    pipe.features.item_first_ts[new] = t
    assert "new-1" not in fresh.recommend([Request(fan, 10, later)])[0].item_ids


def test_an_update_re_embeds_the_item_and_replaces_its_vector(live, tiny_prepared):
    pipe, catalog, towers = live
    a, b = str(pipe.store.items.ids[3]), str(pipe.store.items.ids[11])
    before = pipe.retriever.item_embeddings[3].copy()
    n0 = pipe.retriever.index.ntotal
    attrs_b = {k: v for k, v in raw_item(tiny_prepared, b).items() if k != "title"}
    assert catalog.apply(records(("upsert_item", a, attrs_b)))["updated_items"] == 1
    assert pipe.retriever.index.ntotal == n0 and len(pipe.store.items) == n0
    for name, col in pipe.store.item_table.items():
        if name not in ("item_id", "title"):
            np.testing.assert_array_equal(col[3], col[11])  # b's content, a's id code and title kept
    row = {k: v[3:4] for k, v in pipe.store.item_table.items()}
    np.testing.assert_allclose(pipe.retriever.item_embeddings[3], item_embeddings(towers, row)[0], atol=1e-6)
    assert not np.allclose(pipe.retriever.item_embeddings[3], before)
    _, top = pipe.retriever.search(pipe.retriever.item_embeddings[3][None], 1)
    assert top[0, 0] == 3  # the index holds the new vector under the same id
    catalog.apply(records(("upsert_item", a, {"title": "Renamed"})))
    assert catalog.titles[a] == "Renamed"
    catalog.apply(records(("upsert_item", a, {"title": None})))  # cleared: the served title too (found by a probe)
    assert a not in catalog.titles


def test_block_leaves_every_route_at_once_and_unblock_restores(live):
    pipe, catalog, _ = live
    t = int(pipe.store.last_ts.max()) + 60
    user = str(pipe.store.users.ids[0])
    asks = [Request(user, 10, t), Request("cold-one", 10, t), Request("cold-two", 10, t, recent_items=[str(pipe.store.items.ids[5])])]
    popular = str(pipe.store.items.ids[int(pipe.store.most_popular(1)[0])])
    genre = pipe.catalog.category_names[int(pipe.catalog.primary[pipe.store.items.lookup([popular])[0]])]
    asks += [Request("cold-three", pipe.max_k, t), Request("cold-four", pipe.max_k, t, include_categories=[genre])]
    answers = pipe.recommend(asks)
    assert any(r.startswith("backfill") for r in answers[-1].reasons) and popular in answers[-1].item_ids
    targets = sorted({a.item_ids[0] for a in answers[:3]} | {popular})
    catalog.apply(records(*[("block", i, {}) for i in targets]))
    for ask in asks:  # known user, cold user, session, the longest list, a list topped up by backfill
        assert not set(targets) & set(pipe.recommend([ask])[0].item_ids)
    catalog.apply(records(*[("unblock", i, {}) for i in targets]))
    assert [a.item_ids for a in pipe.recommend(asks)] == [a.item_ids for a in answers]


def test_stored_user_attributes_equal_the_same_attributes_per_request(live):
    pipe, catalog, _ = live
    t = int(pipe.store.last_ts.max()) + 60
    attrs = {"age": 61.0, "segment": str(pipe.store.features.encoders["user"]["segment"].state["vocab"][0]),
             "country": "nowhere"}  # an unknown value: out of vocabulary
    per_request = pipe.recommend([Request("walk-in", 10, t, attributes=attrs)])[0]
    plain = pipe.recommend([Request("walk-in", 10, t)])[0]
    catalog.apply(records(("upsert_user", "walk-in", attrs)))
    stored = pipe.recommend([Request("walk-in", 10, t)])[0]
    assert (stored.item_ids, stored.scores) == (per_request.item_ids, per_request.scores)
    # what the models see: the stored attributes reach the user tower (the cold route's score may be the prior alone)
    ts, nobody = np.array([t]), np.array([-1])
    with_stored = pipe.retriever.embed_requests(nobody, ts, None, pipe._attributes([Request("walk-in", 10, t)]))
    given = pipe.retriever.embed_requests(nobody, ts, None, pipe._attributes([Request("x", 10, t, attributes=attrs)]))
    np.testing.assert_array_equal(with_stored, given)
    assert not np.allclose(with_stored, pipe.retriever.embed_requests(nobody, ts))
    assert plain.route == stored.route == "cold_user"
    # the first event makes the user known with those attributes
    OnlineState(pipe).apply(pd.DataFrame({"user_id": ["walk-in"], "item_id": [stored.item_ids[0]], "timestamp": [t]}))
    u = int(pipe.store.users.lookup(["walk-in"])[0])
    enc = pipe.store.features.transform("user", pd.DataFrame([{"user_id": "walk-in", **attrs}]))
    for name in ("age", "segment", "country"):
        np.testing.assert_array_equal(pipe.store.user_table[name][u], enc[name][0])
    # a known user's stored attributes change their row (user tower and ranker user features)
    known = str(pipe.store.users.ids[2])
    k = int(pipe.store.users.lookup([known])[0])
    catalog.apply(records(("upsert_user", known, {"age": 99.0})))
    assert pipe.store.user_table["age"][k] == pytest.approx(
        pipe.store.features.transform("user", pd.DataFrame([{"user_id": known, "age": 99.0, "segment": None,
                                                              "country": None}]))["age"][0])


def test_bad_records_each_get_their_reason(live):
    pipe, _, _ = live
    schema = catalog_schema(pipe.store.features)
    item = str(pipe.store.items.ids[0])
    rows = [("upsert_item", "fresh", '{"category": "3", "price": 9.5}'),    # ok
            ("upsert_item", "", "{}"),                                       # missing_id
            ("upsert_item", "x" * 300, "{}"),                                # id_too_long
            ("delete", item, "{}"),                                          # unknown_op
            ("upsert_item", "y", "{not json"),                               # malformed_attributes
            ("upsert_item", "y", '{"colour": "red"}'),                       # unknown_attribute
            ("upsert_item", "y", '{"price": "cheap"}'),                      # bad_value
            ("upsert_item", "y", '{"title": "' + "a" * 1001 + '"}'),         # value_too_long
            ("block", item, '{"price": 1}'),                                 # unexpected_attributes
            ("block", "never-seen", ""),                                     # unknown_item
            ("upsert_item", "fresh", "{}"),                                  # duplicate_in_batch
            ("block", "fresh", None),                                        # ok: upserted earlier in the batch
            ("upsert_user", "u-9", '{"age": 30, "country": "FR"}'),          # ok
            ("upsert_user", "u-8", '{"genres": "x"}'),                       # unknown_attribute (an item column)
            ("upsert_item", "z", '{"' + "k" * 10 + '": 1, ' + ", ".join(f'"a{j}": 1' for j in range(70)) + "}"),
            ("upsert_item", b"x\xff", "{}"),                                # bad_encoding (id)
            ("upsert_item", b"x\xfe", "{}"),                                # bad_encoding (not merged with the one above)
            ("upsert_item", "w", b'{"title": "caf\xe9"}'),                  # bad_encoding (Latin-1 attributes)
            ("upsert_item", "s", '{"title": "\\udc80"}'),                   # bad_encoding (a lone surrogate in JSON)
            ("upsert_item", "v", '{"quality": 1e308}'),                      # bad_value: absurd (10^6 std away)
            ("upsert_user", "u-7", '{"age": -1e30}'),                        # bad_value
            ("upsert_item", "n", '{"price": 1' + "0" * 400 + "}"),           # bad_value: an int no float holds
            ("upsert_item", "d", "[" * 100_000 + "]" * 100_000),            # malformed_attributes: nested too deep
            ("upsert_item", "e", '{"title": ' + "[" * 50_000 + "]" * 50_000 + "}"),  # the same inside an object
            ("upsert_item", "x\x00y", "{}")]                                 # bad_encoding: a NUL inside an id
    ops, ids, attrs = zip(*rows)
    accepted, status = check_catalog(ops, ids, attrs, schema, pipe.store.items, 1.7e9)
    assert status == ["ok", "missing_id", "id_too_long", "unknown_op", "malformed_attributes", "unknown_attribute",
                      "bad_value", "value_too_long", "unexpected_attributes", "unknown_item", "duplicate_in_batch",
                      "ok", "ok", "unknown_attribute", "too_many_attributes",
                      "bad_encoding", "bad_encoding", "bad_encoding", "bad_encoding", "bad_value", "bad_value",
                      "bad_value", "malformed_attributes", "malformed_attributes", "bad_encoding"]
    assert set(status) - {"ok"} == set(REASONS)
    # and what was wrong with each record: every rejected one says, no accepted one does
    details = []
    assert check_catalog(ops, ids, attrs, schema, pipe.store.items, 1.7e9, details)[1] == status
    assert [bool(d) for d in details] == [s != "ok" for s in status]
    assert details[5].startswith("'colour' is not an attribute of items; known: ") and "price" in details[5]
    assert details[13].startswith("'genres' is not an attribute of users; known: ")
    assert details[6].startswith("price='cheap': a finite number") and details[3].startswith("op 'delete'; known: ")
    assert "never-seen" in details[9] and details[7] == "title: 1001 characters; at most 1000"
    # blank text is "not given", numeric or categorical (as in a request): accepted, nothing stored for it
    blank, blank_status = check_catalog(["upsert_user", "upsert_item"], ["u-1", "b"], ['{"age": "", "country": "  "}',
                                        '{"price": " ", "category": "3"}'], schema, pipe.store.items, 1.7e9)
    assert blank_status == ["ok", "ok"] and blank[0]["attributes"] == {} and blank[1]["attributes"] == {"category": "3"}
    # a log1p column takes any finite number (its log is clipped to the widened training range)
    assert check_catalog(["upsert_item"], ["p"], ['{"price": 1e308}'], schema, pipe.store.items, 1.7e9)[1] == ["ok"]
    assert [r["position"] for r in accepted] == [0, 11, 12]
    assert accepted[0]["attributes"] == {"category": "3", "price": 9.5} and accepted[2]["attributes"]["age"] == 30.0
    with pytest.raises(ValueError, match="one value per record"):
        check_catalog(["block"], [], None, schema, pipe.store.items, 1.7e9)


def test_numeric_request_attributes_are_numbers_in_the_features_range(live):
    """A request's numeric attribute that is not a number, or is beyond what the feature accepts, is a
    RequestError naming it (it was read as missing, or reached the user tower as inf)."""
    pipe, _, _ = live
    t = int(pipe.store.last_ts.max()) + 60
    lo, hi = pipe.store.features.numeric_ranges("user")["age"]
    for bad in ("abc", "nan", "inf", True):  # not a number: no bounds in the message (they read as a range to use)
        with pytest.raises(RequestError, match=r"user attribute 'age' is .*; send a finite number \(e.g. age="):
            pipe.recommend([Request("walk-in", 5, t, attributes={"age": bad})])
    for bad in ("1e308", str(hi * 2 + 1)):  # absurd: the bounds, said as such
        with pytest.raises(RequestError, match=r"'age' is .*: more than 10\^6 standard deviations .* number in \["):
            pipe.recommend([Request("walk-in", 5, t, attributes={"age": bad})])
    ok = pipe.recommend([Request("walk-in", 5, t, attributes={"age": str(hi)})])[0]
    assert ok.route == "cold_user" and len(ok.item_ids) == 5
    assert pipe.recommend([Request("walk-in", 5, t, attributes={"age": None})])[0].item_ids  # None: missing


def test_a_blank_request_attribute_is_not_given_numeric_or_categorical(live):
    """``age=`` / ``country=`` on the wire: not given, for both kinds (a blank numeric one was refused
    while a blank categorical one reached the encoder as the text ""), and a stored value stays."""
    pipe, catalog, _ = live
    t = int(pipe.store.last_ts.max()) + 60
    plain = pipe.recommend([Request("walk-in-b", 10, t)])[0]
    for blank in ({"age": ""}, {"age": "  "}, {"country": ""}, {"age": "", "country": " ", "segment": None}):
        got = pipe.recommend([Request("walk-in-b", 10, t, attributes=blank)])[0]
        assert (got.item_ids, got.scores) == (plain.item_ids, plain.scores)
    ts, nobody = np.array([t]), np.array([-1])
    catalog.apply(records(("upsert_user", "walk-in-b", {"age": 61.0})))
    stored = pipe.retriever.embed_requests(nobody, ts, None, pipe._attributes([Request("walk-in-b", 10, t)]))
    blank = pipe.retriever.embed_requests(nobody, ts, None, pipe._attributes([Request("walk-in-b", 10, t,
                                                                                        attributes={"age": ""})]))
    np.testing.assert_array_equal(stored, blank)  # the stored age, not wiped by the blank


def test_a_block_flag_per_item_is_required():
    from ranking.rules import ItemCatalog

    with pytest.raises(ValueError, match="ItemCatalog.blocked has 1 rows but categories has 2"):
        ItemCatalog(np.zeros((2, 1), np.int64), ["<none>"], np.ones((2, 2)), np.ones(2), np.array(["a", "b"]),
                    blocked=np.zeros(1, bool))
    assert not ItemCatalog(np.zeros((2, 1), np.int64), ["<none>"], np.ones((2, 2)), np.ones(2),
                           np.array(["a", "b"])).blocked.any()
