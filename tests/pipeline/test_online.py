"""Live events applied to a loaded pipeline (pipeline/online.py): the next answer knows them."""

import numpy as np
import pandas as pd

from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.online import OnlineState
from pipeline.pipeline import Request
from pipeline.refresh import refresh


def events_for(run, n_users: int = 5, per_user: int = 3):
    """In-order events after the end of the run's data: a few unseen items for some users, one newcomer."""
    art = RunArtifacts(run)
    store, log = art.load_store(), pd.read_parquet(art.path("interactions"))
    t0 = int(log["timestamp"].max()) + 3600
    rows = []
    for j, user in enumerate(log["user_id"].drop_duplicates().astype(str).iloc[:n_users]):
        u = store.users.lookup([user])[0]
        unseen = [str(i) for i in store.items.ids if store.seen[u, store.items.lookup([i])[0]] == 0][:per_user]
        rows += [(user, item, t0 + 60 * (j * per_user + k)) for k, item in enumerate(unseen)]
    rows += [("newcomer", str(store.items.ids[0]), t0 + 10_000), ("newcomer", str(store.items.ids[1]), t0 + 10_001)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_online_events_give_the_state_a_refresh_would_build(tiny_deployed_run, tmp_path):
    events = events_for(tiny_deployed_run)
    pipe = load_pipeline(tiny_deployed_run)
    online = OnlineState(pipe)
    # in two batches, out of order within each: placed by their timestamps
    half = len(events) // 2
    c1 = online.apply(events.iloc[:half].sample(frac=1, random_state=0))
    c2 = online.apply(events.iloc[half:].sample(frac=1, random_state=1))
    assert c1["applied"] + c2["applied"] == len(events) and c1["late"] + c2["late"] == 0
    assert c1["new_users"] + c2["new_users"] == 1

    refresh(tiny_deployed_run, events, tmp_path / "fresh", rebuild=True)  # the full rebuild
    rebuilt = RunArtifacts(tmp_path / "fresh").load_store()
    live = pipe.store
    order = rebuilt.users.lookup(live.users.ids)  # the same users, maybe another order
    assert (order >= 0).all() and len(live.users) == len(rebuilt.users)
    np.testing.assert_array_equal(live.recent, rebuilt.recent[order])
    np.testing.assert_array_equal(live.last_ts, rebuilt.last_ts[order])
    np.testing.assert_array_equal(live.popularity, rebuilt.popularity)
    np.testing.assert_array_equal(pipe.catalog.popularity, rebuilt.popularity)  # the rules' backfill reads this copy
    np.testing.assert_array_equal(live.seen_rows(np.arange(len(live.users))).toarray(), rebuilt.seen[order].toarray())
    fresh_features = load_pipeline(tmp_path / "fresh").features
    np.testing.assert_array_equal(pipe.features.item_first_ts, fresh_features.item_first_ts)
    items, ts = np.arange(len(live.items)), np.full(len(live.items), int(events["timestamp"].max()) + 1)
    np.testing.assert_array_equal(pipe.features.recent_counts(items, ts), fresh_features.recent_counts(items, ts))


def test_recent_counts_kept_for_one_request_time_follow_live_events(tiny_deployed_run):
    """A served request's candidates share one time: their recent counts are kept per item for it, the
    same as counted afresh, until the time changes or an event arrives."""
    f = load_pipeline(tiny_deployed_run).features
    t = int(f.item_first_ts.max()) + 10
    items = np.arange(len(f.item_first_ts))
    first = f.recent_counts(items[:10], np.full(10, t))  # kept for ten items, then the whole catalog
    np.testing.assert_array_equal(first, f._count(items[:10], np.full(10, t)))
    kept = f.recent_counts(items, np.full(len(items), t))
    np.testing.assert_array_equal(kept, f._count(items, np.full(len(items), t)))
    mixed = np.where(items % 2 == 0, t, t - 86_400 * 3)  # rows with their own times: counted as they are
    np.testing.assert_array_equal(f.recent_counts(items, mixed), f._count(items, mixed))
    f.add_events(np.array([3, 3, 5]), np.array([t - 5, t + 5, t - 1]))  # t + 5: not before t, not counted
    after = f.recent_counts(items, np.full(len(items), t))
    assert after[3] == kept[3] + 1 and after[5] == kept[5] + 1
    np.testing.assert_array_equal(np.delete(after, [3, 5]), np.delete(kept, [3, 5]))
    later = f.recent_counts(items, np.full(len(items), t + 6))
    np.testing.assert_array_equal(later, f._count(items, np.full(len(items), t + 6)))


def test_one_row_of_seen_items_equals_the_batch_gather(tiny_deployed_run):
    store = load_pipeline(tiny_deployed_run).store
    batch = store.seen_rows(np.array([2, -1, 0]))
    for b, u in enumerate([2, -1, 0]):
        one = store.seen_rows(np.array([u]))
        np.testing.assert_array_equal(one.row(0), batch.row(b))
        assert one.indptr.tolist() == [0, len(batch.row(b))] and one.shape == (1, batch.shape[1])


def test_the_next_answer_knows_the_event(tiny_deployed_run):
    pipe = load_pipeline(tiny_deployed_run)
    online = OnlineState(pipe)
    t = int(pipe.store.last_ts.max()) + 3600
    user = str(pipe.store.users.ids[0])
    first = pipe.recommend([Request(user, 10, t)])[0]
    online.apply(pd.DataFrame({"user_id": [user], "item_id": [first.item_ids[0]], "timestamp": [t]}))
    after = pipe.recommend([Request(user, 10, t + 1)])[0]
    assert first.item_ids[0] not in after.item_ids  # consumed: never recommended again
    u = pipe.store.users.lookup([user])[0]
    assert pipe.store.recent[u, -1] == pipe.store.items.lookup([first.item_ids[0]])[0] and pipe.store.last_ts[u] == t
    # a user the run never saw becomes known with one event
    assert pipe.recommend([Request("brand-new", 5, t)])[0].route == "cold_user"
    online.apply(pd.DataFrame({"user_id": ["brand-new"], "item_id": [first.item_ids[1]], "timestamp": [t]}))
    rec = pipe.recommend([Request("brand-new", 5, t + 1)])[0]
    assert rec.route == "known_user" and first.item_ids[1] not in rec.item_ids


def test_late_and_unknown_events_are_counted_not_sequenced(tiny_deployed_run):
    pipe = load_pipeline(tiny_deployed_run)
    online = OnlineState(pipe)
    u = int(np.argmax(pipe.store.last_ts))
    user, last = str(pipe.store.users.ids[u]), int(pipe.store.last_ts[u])
    unseen = next(i for i in range(len(pipe.store.items)) if i not in set(pipe.store.seen_items(u).tolist()))
    recent = pipe.store.recent[u].copy()
    pop = int(pipe.store.popularity[unseen])
    counts = online.apply(pd.DataFrame({"user_id": [user, user], "item_id": [str(pipe.store.items.ids[unseen]), "nope"],
                                        "timestamp": [last - 86_400, last]}))
    assert counts == {"applied": 1, "late": 1, "new_users": 0, "unknown_items": 1}
    np.testing.assert_array_equal(pipe.store.recent[u], recent)  # not in the sequence
    assert pipe.store.last_ts[u] == last and unseen in pipe.store.seen_items(u)  # but seen, and counted
    assert pipe.store.popularity[unseen] == pop + 1
    assert online.apply(pd.DataFrame(columns=["user_id", "item_id", "timestamp"]))["applied"] == 0


def test_seen_overlay_compacts_into_the_csr(tiny_deployed_run):
    store = RunArtifacts(tiny_deployed_run).load_store()
    users = np.array([0, 1, -1])
    before = store.seen_rows(users).toarray()
    item = int(np.flatnonzero(before[0] == 0)[0])
    store.seen_delta[0] = np.array([item])
    overlay = store.seen_rows(users).toarray()
    assert overlay[0, item] == 1 and overlay[2].sum() == 0 and item in store.seen_items(0)
    store.compact_seen()
    assert store.seen_delta == {} and store.seen[0, item] == 1
    np.testing.assert_array_equal(store.seen_rows(users).toarray(), overlay)


def test_most_popular_follows_live_events_after_the_resort_interval(tiny_deployed_run, monkeypatch):
    import features.store as store_module

    pipe = load_pipeline(tiny_deployed_run)
    online = OnlineState(pipe)
    top = int(pipe.store.most_popular(1)[0])
    least = int(np.argmin(pipe.store.popularity))
    t = int(pipe.store.last_ts.max()) + 60
    gap = int(pipe.store.popularity[top] - pipe.store.popularity[least]) + 1
    online.apply(pd.DataFrame({"user_id": [f"fan-{j}" for j in range(gap)], "item_id": [str(pipe.store.items.ids[least])] * gap,
                               "timestamp": [t] * gap}))
    monkeypatch.setattr(store_module, "RESORT_S", 0.0)
    assert int(pipe.store.most_popular(1)[0]) == least  # re-sorted, though the last sort was a moment ago


def test_an_empty_or_all_duplicate_refresh_reports_nothing_new(tiny_deployed_run, tmp_path):
    log = pd.read_parquet(RunArtifacts(tiny_deployed_run).path("interactions"))
    report = refresh(tiny_deployed_run, log.iloc[:5], tmp_path / "again")
    assert report == {**report, "received": 5, "accepted": 0, "duplicates": 5, "new_users": 0, "late": 0}


def test_the_popularity_backfill_follows_live_events(tiny_deployed_run):
    """Found by a probe of the server: the rules' backfill read the catalog's copy of popularity, which
    events never changed, so a cold list topped up by popularity kept the snapshot's order."""
    from ranking import rules as R

    pipe = load_pipeline(tiny_deployed_run)
    online = OnlineState(pipe)
    least = int(np.argmin(pipe.catalog.popularity))
    gap = int(pipe.catalog.popularity.max() - pipe.catalog.popularity[least]) + 1
    t = int(pipe.store.last_ts.max()) + 60
    online.apply(pd.DataFrame({"user_id": [f"fan-{j}" for j in range(gap)],
                               "item_id": [str(pipe.store.items.ids[least])] * gap, "timestamp": [t] * gap}))
    _, value = R.backfill_source(pipe.catalog, R.RequestContext(), "popularity")
    assert int(np.argmax(value)) == least and pipe.catalog.popularity[least] == pipe.store.popularity[least]
    empty = R.backfill(np.zeros(0, np.int64), np.zeros(0, np.float32), pipe.catalog, R.RequestContext(), source="popularity", k=1)
    assert empty[0].tolist() == [least]
