"""Deploy on all the data, and refresh the served state with new interactions (no retraining)."""

import numpy as np
import pandas as pd
import pytest

from features.schema import DataError
from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.pipeline import Request
from pipeline.refresh import main as refresh_main
from pipeline.refresh import refresh


def test_deployed_state_saw_every_interaction_and_models_did_not(tiny_deployed_run):
    art = RunArtifacts(tiny_deployed_run)
    m = art.manifest()["artifacts"]
    log = pd.read_parquet(art.path("interactions"))
    assert m["store"]["saw"]["interactions"] == len(log) == m["ranker_features"]["saw"]["interactions"]
    assert m["store"]["deployed"] is True
    paths = art.manifest()["deployed_paths"]
    assert paths["items"] == len(art.item_ids()) and 0 <= paths["items_content_only"] < paths["items"]
    assert paths["users_attribute_path"] == paths["users"] - log["user_id"].nunique()
    # the towers saw the train split only: fewer interactions, and nothing after the end of all data
    assert m["two_tower"]["saw"]["interactions"] < len(log)
    assert m["store"]["saw"]["last_timestamp"] == int(log["timestamp"].max())
    store = art.load_store()
    # every user's latest interaction is in the served history and seen set
    last = log.sort_values(["user_id", "timestamp", "item_id"]).groupby("user_id").tail(1)
    u, i = store.users.lookup(last["user_id"]), store.items.lookup(last["item_id"])
    assert (store.recent[u, -1] == i).all()
    assert (np.asarray(store.seen[u, i]).ravel() > 0).all()
    assert (store.last_ts[u] == last["timestamp"].to_numpy()).all()


def test_refresh_adds_new_interactions_and_counts_what_it_drops(tiny_deployed_run, tmp_path):
    art = RunArtifacts(tiny_deployed_run)
    store = art.load_store()
    log = pd.read_parquet(art.path("interactions"))
    user = str(log["user_id"].iloc[0])
    unseen = next(str(i) for i in store.items.ids if store.seen[store.users.lookup([user])[0], store.items.lookup([i])[0]] == 0)
    t = int(log["timestamp"].max()) + 3600
    new = pd.DataFrame({
        "user_id": [user, "newcomer", "newcomer", user, user, None, user],
        "item_id": [unseen, unseen, str(store.items.ids[1]), "no-such-item", unseen, unseen,
                    str(log["item_id"].iloc[0])],
        "timestamp": [t, t + 1, t + 2, t, t, t, "yesterday"],
    })
    new = pd.concat([new, log.iloc[:2].astype({"timestamp": object})], ignore_index=True)  # two known rows
    report = refresh(tiny_deployed_run, new, tmp_path / "fresh")
    assert report == {**report, "received": 9, "accepted": 3, "unknown_items": 1, "malformed": 2, "duplicates": 3,
                      "new_users": 1, "before_training": 0}
    fresh = RunArtifacts(tmp_path / "fresh")
    s2 = fresh.load_store()
    u = s2.users.lookup([user])[0]
    assert s2.recent[u, -1] == s2.items.lookup([unseen])[0] and s2.last_ts[u] == t
    assert len(pd.read_parquet(fresh.path("interactions"))) == len(log) + 3
    # the next answer knows: the item just consumed is not recommended again; the newcomer is known
    pipe = load_pipeline(tmp_path / "fresh")
    rec = pipe.recommend([Request(user, 20, t + 10), Request("newcomer", 5, t + 10)])
    assert unseen not in rec[0].item_ids
    assert rec[1].route == "known_user"
    before = load_pipeline(tiny_deployed_run).recommend([Request("newcomer", 5, t + 10)])[0]
    assert before.route == "cold_user"  # the original run is untouched


def test_a_table_refresh_of_a_run_without_a_log_cursor_keeps_the_served_events_cut(tiny_deployed_run, tmp_path):
    """Found by an on-call probe: a run deployed without the log serves the events logged after its store
    was written; a refresh from a table (no log read) wrote a new store, the served tail then started at
    the refresh, and every live event logged before it was applied by neither: users known from live
    events became cold after the swap. The refresh keeps the refreshed store's cut (``events_after``)."""
    import time

    from events.log import EventLog
    from serving.event_log import events_cut, snapshot_tail

    art = RunArtifacts(tiny_deployed_run)
    before = art.manifest()["artifacts"]["store"]
    assert "event_log" not in before and events_cut(before, 1.0) == 1.0  # no cut of its own: the write time
    log = pd.read_parquet(art.path("interactions"))
    item, t = str(art.item_ids()[0]), int(log["timestamp"].max()) + 3600
    with EventLog(tmp_path / "elog" / "events", durability="normal") as elog:  # served live, before the refresh
        elog.append_events([{"event_id": "live", "user_id": "walk-in", "item_id": item, "timestamp": float(t),
                             "type": "click"}])
    time.sleep(0.05)
    refresh(tiny_deployed_run, pd.DataFrame({"user_id": ["batch"], "item_id": [item], "timestamp": [t]}),
            tmp_path / "r")
    after = RunArtifacts(tmp_path / "r").manifest()["artifacts"]["store"]
    assert after["written_at_unix"] > after["events_after"] == before["written_at_unix"]
    tail = snapshot_tail(tmp_path / "elog" / "events", after, after["written_at_unix"])
    assert tail.read_new()["event_id"].tolist() == ["live"]  # what the refreshed server's tail applies
    refresh(tmp_path / "r", pd.DataFrame({"user_id": ["batch"], "item_id": [item], "timestamp": [t + 1]}))
    assert RunArtifacts(tmp_path / "r").manifest()["artifacts"]["store"]["events_after"] == before["written_at_unix"]


def test_refresh_command_errors_are_clear(tiny_deployed_run, tmp_path, capsys, caplog):
    (tmp_path / "bad.csv").write_text("user,item\n1,2\n")
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--interactions", str(tmp_path / "bad.csv"),
                         "--out-dir", str(tmp_path / "x")]) == 2
    assert "lack column(s) ['user_id', 'item_id', 'timestamp']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # a failed refresh leaves no copy that would block its retry
    (tmp_path / "mine").mkdir()  # a folder the user made: kept, only the artifacts copied into it go
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--interactions", str(tmp_path / "bad.csv"),
                         "--out-dir", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "mine" / "artifacts").exists()
    (tmp_path / "header.csv").write_text("user_id,item_id,timestamp\n")  # the wrong file, most likely
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--interactions", str(tmp_path / "header.csv"),
                         "--out-dir", str(tmp_path / "y")]) == 2
    assert "has a header but no rows: nothing to refresh" in capsys.readouterr().err and not (tmp_path / "y").exists()
    # a weight column is not read: a "dislike" would count as a positive without a word (found by a probe)
    (tmp_path / "weighted.csv").write_text("user_id,item_id,timestamp,weight\nu,1,-5,-1\n")
    import logging
    with caplog.at_level(logging.WARNING, logger="pipeline.refresh"):
        refresh_main(["--run-dir", str(tiny_deployed_run), "--interactions", str(tmp_path / "weighted.csv"),
                      "--out-dir", str(tmp_path / "z")])
    assert "1 row(s) have weight <= 0; every interaction counts as a positive" in caplog.text
    with pytest.raises(DataError, match="exists; choose a new directory"):
        refresh(tiny_deployed_run, pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "timestamp": [1]}),
                tiny_deployed_run)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        refresh(tmp_path / "nowhere", pd.DataFrame())


def test_refresh_strips_ids_and_counts_impossible_timestamps_as_malformed(tiny_deployed_run, tmp_path):
    art = RunArtifacts(tiny_deployed_run)
    log = pd.read_parquet(art.path("interactions"))
    user, item = str(log["user_id"].iloc[0]), str(art.item_ids()[3])
    t = int(log["timestamp"].max()) + 3600
    new = pd.DataFrame({"user_id": [f"  {user} ", user, user, user, "   "],
                        "item_id": [f" {item}", item, item, item, item],
                        "timestamp": [t, 1e19, -5, float("inf"), t + 1]})
    report = refresh(tiny_deployed_run, new, tmp_path / "fresh")
    # " u " is user u (no second user), " i" is item i (not unknown); 1e19 / -5 / inf / a blank id: malformed
    assert report == {**report, "received": 5, "accepted": 1, "malformed": 4, "unknown_items": 0, "new_users": 0}
    stored = pd.read_parquet(RunArtifacts(tmp_path / "fresh").path("interactions"))
    assert stored["timestamp"].min() >= 0 and (stored["user_id"] == user).sum() == (log["user_id"] == user).sum() + 1


def test_refresh_reads_float_ids_as_integers_and_refuses_future_and_over_long_rows(tiny_deployed_run, tmp_path):
    """A parquet float id 196.0 is "196" (as training and batch read it), never a new user "196.0"; a
    timestamp more than a day ahead (it would pin the user's newest history slot) and an id longer than
    a request may name are malformed; a table whose every row is malformed is refused, nothing written."""
    import time

    art = RunArtifacts(tiny_deployed_run)
    log = pd.read_parquet(art.path("interactions"))
    item = str(art.item_ids()[3])
    t = int(log["timestamp"].max()) + 3600
    new = pd.DataFrame({"user_id": [196.0, 196.0, 196.5], "item_id": [item] * 3,  # a float column, as parquet has it
                        "timestamp": [t, time.time() + 2 * 86_400, t + 1]})
    report = refresh(tiny_deployed_run, new, tmp_path / "fresh")
    assert report == {**report, "received": 3, "accepted": 1, "malformed": 2, "unknown_items": 0, "new_users": 1}
    stored = pd.read_parquet(RunArtifacts(tmp_path / "fresh").path("interactions"))
    assert (stored["user_id"] == "196").sum() == 1 and not stored["user_id"].isin(["196.0", "196.5"]).any()
    long_id = pd.DataFrame({"user_id": ["u" * 300, "u" * 256], "item_id": [item] * 2, "timestamp": [t, t]})
    assert refresh(tmp_path / "fresh", long_id)["malformed"] == 1  # 256 characters: the most a request names
    rows = len(pd.read_parquet(RunArtifacts(tmp_path / "fresh").path("interactions")))
    with pytest.raises(DataError, match="none of the 2 new rows can be used.*look like milliseconds"):
        refresh(tmp_path / "fresh", pd.DataFrame({"user_id": ["196"] * 2, "item_id": [item] * 2,
                                                  "timestamp": [t * 1000, t * 1000 + 1]}))
    assert len(pd.read_parquet(RunArtifacts(tmp_path / "fresh").path("interactions"))) == rows


def test_a_refresh_that_fails_while_writing_leaves_the_run_as_it_was_and_can_run_again(tiny_deployed_run, tmp_path,
                                                                                        monkeypatch):
    """The three artifacts are written aside and swapped in together: a failed write (a full disk) changes
    nothing, so running the same refresh again counts its rows once."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_deployed_run, run)
    art = RunArtifacts(run)
    log = pd.read_parquet(art.path("interactions"))
    user, t = str(log["user_id"].iloc[0]), int(log["timestamp"].max()) + 3600
    new = pd.DataFrame({"user_id": [user] * 3, "item_id": [str(i) for i in art.item_ids()[:3]],
                        "timestamp": [t, t + 1, t + 2]})
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    real = pd.DataFrame.to_parquet

    def full_disk(self, path, *a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(OSError, match="No space left"):
        refresh(run, new)
    after = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before  # the store and ranker features were written aside, then removed
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    store = art.path("store")
    store.rename(store.with_name(store.name + ".old"))  # killed between the swap's two renames
    assert refresh(run, new)["accepted"] == 3  # the set-aside folder is put back first
    keys = len(art.load_pipeline().features.event_keys)
    assert refresh(run, new)["accepted"] == 0  # the same rows again: duplicates, nothing counted twice
    assert len(art.load_pipeline().features.event_keys) == keys


def test_refresh_refuses_a_folder_that_is_not_an_event_log_and_keeps_its_cursor(tiny_deployed_run, tmp_path, capsys):
    from events.log import EventLog

    art = RunArtifacts(tiny_deployed_run)
    t = int(pd.read_parquet(art.path("interactions"))["timestamp"].max()) + 3600
    with EventLog(tmp_path / "logs" / "host1", durability="normal") as elog:
        elog.append_events([{"event_id": "e1", "user_id": "x", "item_id": str(art.item_ids()[0]),
                             "timestamp": float(t), "type": "click"}])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a log")
    for wrong in (tmp_path / "logs", tmp_path / "notes"):  # one level too high; a folder of other files
        assert refresh_main(["--run-dir", str(tiny_deployed_run), "--events", str(wrong), "--out-dir",
                             str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "holds no event log" in err and "--events DIR" in err, err
        assert not (tmp_path / "out").exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    for damage in (b"not a database" * 100, b""):  # garbage; an empty (cut-short) file: the same advice
        (junk / "segment-000001.sqlite").write_bytes(damage)
        assert refresh_main(["--run-dir", str(tiny_deployed_run), "--events", str(junk), "--out-dir",
                             str(tmp_path / "out")]) == 2
        assert "a segment could not be read" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "rows.csv").write_text(f"user_id,item_id,timestamp\nx,{art.item_ids()[0]},{t}\n")
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--interactions", str(tmp_path / "rows.csv"),
                         "--out-dir", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"


def test_deploy_retrains_the_ranker_on_both_windows(tiny_deployed_run):
    m = RunArtifacts(tiny_deployed_run).manifest()["artifacts"]
    ranker, towers = m["ranker"], m["two_tower"]
    assert ranker["retrained_at_deploy"] is True
    # lists from the validation and test windows, both later than everything the towers were trained on
    assert ranker["saw"]["interactions"] > 0 and ranker["saw"]["last_timestamp"] == m["store"]["saw"]["last_timestamp"]
    assert towers["saw"]["interactions"] + ranker["saw"]["interactions"] == m["store"]["saw"]["interactions"]


def test_rows_older_than_the_training_data_are_counted_and_kept_as_history(tiny_deployed_run, tmp_path):
    art = RunArtifacts(tiny_deployed_run)
    store, log = art.load_store(), pd.read_parquet(art.path("interactions"))
    first = art.manifest()["artifacts"]["two_tower"]["saw"]["first_timestamp"]
    user = str(log["user_id"].iloc[0])
    u = store.users.lookup([user])[0]
    unseen = [str(i) for i in store.items.ids if store.seen[u, store.items.lookup([i])[0]] == 0][:3]
    old = pd.DataFrame({"user_id": [user] * 3, "item_id": unseen, "timestamp": [first - 86_400 * d for d in (3, 2, 1)]})
    report = refresh(tiny_deployed_run, old, tmp_path / "fresh")
    assert report == {**report, "received": 3, "accepted": 3, "before_training": 3, "new_users": 0}
    s2 = RunArtifacts(tmp_path / "fresh").load_store()
    idx = s2.items.lookup(unseen)
    assert (s2.seen[u].toarray().ravel()[idx] > 0).all()  # now seen: never recommended again
    # history is ordered by time: the old rows go before everything the user did, the latest stays last
    assert s2.last_ts[u] == store.last_ts[u] and s2.recent[u, -1] == store.recent[u, -1]
    assert not set(idx) & set(s2.recent[u, -3:])


def test_a_new_user_with_a_single_interaction_is_served_from_it(tiny_deployed_run, tmp_path):
    art = RunArtifacts(tiny_deployed_run)
    store, log = art.load_store(), pd.read_parquet(art.path("interactions"))
    t = int(log["timestamp"].max()) + 60
    item = str(store.items.ids[store.most_popular(1)[0]])
    report = refresh(tiny_deployed_run, pd.DataFrame({"user_id": ["solo"], "item_id": [item], "timestamp": [t]}),
                     tmp_path / "fresh")
    assert report == {**report, "accepted": 1, "new_users": 1}
    s2 = RunArtifacts(tmp_path / "fresh").load_store()
    u = s2.users.lookup(["solo"])[0]
    assert (s2.recent[u] >= 0).sum() == 1 and s2.last_ts[u] == t
    rec = load_pipeline(tmp_path / "fresh").recommend([Request("solo", 10, t + 10)])[0]
    assert rec.route == "known_user" and len(rec.item_ids) == 10 and item not in rec.item_ids


def test_an_incremental_refresh_equals_a_full_rebuild_but_for_the_cooccurrence_tables(tiny_deployed_run, tmp_path):
    art = RunArtifacts(tiny_deployed_run)
    store, log = art.load_store(), pd.read_parquet(art.path("interactions"))
    t = int(log["timestamp"].max()) + 600
    users = log["user_id"].astype(str).drop_duplicates().iloc[:4].tolist()
    u0 = store.users.lookup([users[0]])[0]
    unseen = [str(i) for i in store.items.ids if store.seen[u0, store.items.lookup([i])[0]] == 0][:6]
    again = str(store.items.ids[store.recent[u0, -1]])  # a repeat of the user's latest item
    new = pd.DataFrame({
        "user_id": [users[0], users[0], users[1], users[2], users[0], "fresh-1", "fresh-1", users[3]],
        "item_id": [unseen[0], again, unseen[1], unseen[2], unseen[3], unseen[4], unseen[5], unseen[5]],
        "timestamp": [t, t + 1, t + 2, t + 3, int(store.last_ts[u0]) - 86_400, t + 4, t + 5, t + 6]})  # one late row
    fast = refresh(tiny_deployed_run, new, tmp_path / "fast")
    full = refresh(tiny_deployed_run, new, tmp_path / "full", rebuild=True)
    assert not fast["tables_rebuilt"] and full["tables_rebuilt"] and fast["late"] == 1
    assert {k: v for k, v in fast.items() if k not in ("seconds", "tables_rebuilt", "late")} == \
        {k: v for k, v in full.items() if k not in ("seconds", "tables_rebuilt", "late")}
    a, b = RunArtifacts(tmp_path / "fast"), RunArtifacts(tmp_path / "full")
    sa, sb = a.load_store(), b.load_store()
    order = sb.users.lookup(sa.users.ids)
    np.testing.assert_array_equal(sa.recent, sb.recent[order])  # the late row placed by its time
    np.testing.assert_array_equal(sa.last_ts, sb.last_ts[order])
    np.testing.assert_array_equal(sa.popularity, sb.popularity)  # users per item: the repeat adds nothing
    np.testing.assert_array_equal(sa.seen.toarray(), sb.seen[order].toarray())
    fa, fb = load_pipeline(tmp_path / "fast").features, load_pipeline(tmp_path / "full").features
    np.testing.assert_array_equal(fa.item_first_ts, fb.item_first_ts)
    items = np.arange(len(sa.items))
    np.testing.assert_array_equal(fa.recent_counts(items, np.full(len(items), t + 10)),
                                  fb.recent_counts(items, np.full(len(items), t + 10)))
    saw = a.manifest()["artifacts"]["ranker_features"]
    assert saw["cooc_saw"] == len(log) and b.manifest()["artifacts"]["ranker_features"]["cooc_saw"] == len(log) + 8


def test_refresh_from_the_event_log_records_and_resumes_from_its_cursor(tiny_deployed_run, tmp_path, capsys):
    from events.log import EventLog

    art = RunArtifacts(tiny_deployed_run)
    log = pd.read_parquet(art.path("interactions"))
    user, items = str(log["user_id"].iloc[0]), [str(i) for i in art.item_ids()[:6]]
    t = int(log["timestamp"].max()) + 3600

    def ev(i, item, kind="click"):
        return {"event_id": f"e{i}", "user_id": user, "item_id": item, "timestamp": float(t + i), "type": kind}

    with EventLog(tmp_path / "log" / "events", durability="normal") as elog:
        elog.append_events([ev(0, items[0]), ev(1, items[1]), ev(2, items[2], "impression")])
    args = ["--run-dir", str(tiny_deployed_run), "--events", str(tmp_path / "log"), "--out-dir", str(tmp_path / "r1")]
    assert refresh_main(args) == 0
    out = capsys.readouterr().out
    assert "accepted=2" in out and "log_not_interactions=1" in out
    store_entry = RunArtifacts(tmp_path / "r1").manifest()["artifacts"]["store"]
    assert (store_entry["event_log"]["segment"], store_entry["event_log"]["rowid"]) == (1, 3)
    # the cursor also records the newest received_at read: where a Redis tail (no rowids) starts, not the
    # store's write (a probe found the events logged while a retrain ran lost under Redis)
    from events.log import read_log
    from serving.event_log import snapshot_tail, stream_cut

    logged = read_log(tmp_path / "log" / "events", "events")
    assert store_entry["event_log"]["received_at"] == logged["received_at"].max()
    assert stream_cut(store_entry, 1e12) == logged["received_at"].max()
    with EventLog(tmp_path / "log" / "events", durability="normal") as elog:
        elog.append_events([ev(3, items[3])])
    # the second refresh reads only what was logged after the first one's cursor
    assert refresh_main(["--run-dir", str(tmp_path / "r1"), "--events", str(tmp_path / "log")]) == 0
    out = capsys.readouterr().out
    assert "log_read=1" in out and "accepted=1" in out
    assert RunArtifacts(tmp_path / "r1").manifest()["artifacts"]["store"]["event_log"]["rowid"] == 4
    # a refresh from a table (not the log) keeps the cursor: the served tail still starts after the last
    # event folded in (from the store's write time it would skip the events logged in between)
    refresh(tmp_path / "r1", pd.DataFrame({"user_id": [user], "item_id": [items[4]], "timestamp": [t + 10]}))
    assert RunArtifacts(tmp_path / "r1").manifest()["artifacts"]["store"]["event_log"]["rowid"] == 4
    # the same log at another path (copied, mounted elsewhere): its identity matches, the cursor holds
    # (it fell back to the time cut: every event logged while the run was built lost)
    import shutil

    shutil.copytree(tmp_path / "log", tmp_path / "copy")
    with EventLog(tmp_path / "copy" / "events", durability="normal") as elog:
        elog.append_events([ev(5, items[5])])
    entry = RunArtifacts(tmp_path / "r1").manifest()["artifacts"]["store"]
    assert snapshot_tail(tmp_path / "copy" / "events", entry, 1e12).read_new()["event_id"].tolist() == ["e5"]
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--events", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _click_on_item(run):
    """event i: the run's first user clicks catalog item i, an hour after the data ends (+i s)."""
    art = RunArtifacts(run)
    log = pd.read_parquet(art.path("interactions"))
    user, items, t = str(log["user_id"].iloc[0]), [str(i) for i in art.item_ids()], int(log["timestamp"].max()) + 3600
    return lambda i: {"event_id": f"e{i}", "user_id": user, "item_id": items[i], "timestamp": float(t + i),
                      "type": "click"}


def test_a_log_recreated_at_the_same_path_is_refused_not_silently_skipped(tiny_deployed_run, tmp_path, capsys):
    """A run's cursor past the end of the log (the log recreated since: segment numbers and rowids only
    grow) used to read nothing until new rows passed it; now it is an error, and --from-start reads the
    log whole (rows already in the history dropped as duplicates)."""
    import shutil

    from events.log import EventLog
    from events.tail import CursorPastEnd, EventTail

    ev = _click_on_item(tiny_deployed_run)
    with EventLog(tmp_path / "log" / "events", durability="normal") as elog:
        elog.append_events([ev(i) for i in range(5)])
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--events", str(tmp_path / "log"),
                         "--out-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    shutil.rmtree(tmp_path / "log")
    with EventLog(tmp_path / "log" / "events", durability="normal") as elog:  # a new log: rows 1..3
        elog.append_events([ev(i) for i in (5, 6, 7)])
    with pytest.raises(CursorPastEnd, match="past the end of that segment"):
        EventTail(tmp_path / "log" / "events", after=(1, 5)).read_new()
    assert refresh_main(["--run-dir", str(tmp_path / "r"), "--events", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err
    assert "is not the log it was taken from" in err and "--from-start" in err
    assert refresh_main(["--run-dir", str(tmp_path / "r"), "--events", str(tmp_path / "log"), "--from-start"]) == 0
    assert "accepted=3" in capsys.readouterr().out
    assert RunArtifacts(tmp_path / "r").manifest()["artifacts"]["store"]["event_log"]["rowid"] == 3


def test_a_log_replaced_by_a_longer_one_is_told_apart_by_its_identity(tiny_deployed_run, tmp_path, capsys):
    """A log replaced at the same path by one with more rows than the cursor (recreated and refilled, or
    restored from another copy) ran past the cursor's position, so positions alone read its rows after
    it and skipped the rest silently. The cursor records the log's identity (``log.id``): a refresh
    now refuses it, naming --from-start."""
    import shutil

    from events.log import EventLog

    ev = _click_on_item(tiny_deployed_run)
    with EventLog(tmp_path / "log" / "events", durability="normal") as elog:
        elog.append_events([ev(i) for i in range(3)])
        first_id = elog.log_id
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--events", str(tmp_path / "log"),
                         "--out-dir", str(tmp_path / "r")]) == 0
    cursor = RunArtifacts(tmp_path / "r").manifest()["artifacts"]["store"]["event_log"]
    assert cursor["log_id"] == first_id and cursor["rowid"] == 3
    capsys.readouterr()
    shutil.rmtree(tmp_path / "log")
    with EventLog(tmp_path / "log" / "events", durability="normal") as elog:  # another log: rows 1..10
        elog.append_events([ev(i) for i in range(3, 13)])
        assert elog.log_id != first_id
    assert refresh_main(["--run-dir", str(tmp_path / "r"), "--events", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err
    assert "identity" in err and "is not the log it was taken from" in err and "--from-start" in err
    assert refresh_main(["--run-dir", str(tmp_path / "r"), "--events", str(tmp_path / "log"), "--from-start"]) == 0
    assert "accepted=10" in capsys.readouterr().out


def test_refresh_from_the_log_keeps_the_items_added_online(tiny_deployed_run, tiny_prepared, tmp_path, capsys):
    """Items added online (the log's catalog records) join the run's catalog before the events are read,
    so the events on them are kept, and a rebuild of the co-occurrence tables counts them."""
    from events.log import EventLog
    from inference.models import TorchModel
    from retrieval.towers import item_embeddings

    art = RunArtifacts(tiny_deployed_run)
    log = pd.read_parquet(art.path("interactions"))
    users = [str(u) for u in log["user_id"].unique()[:3]]
    t = int(log["timestamp"].max()) + 3600
    n0 = len(art.item_ids())
    row = tiny_prepared.dataset.items.set_index("item_id").loc[art.item_ids()[7]]
    attrs = {k: (None if pd.isna(v) else (float(v) if isinstance(v, (int, float, np.number)) else str(v)))
             for k, v in row.items()}
    root = tmp_path / "log"  # the served layout: events/ and catalog/
    with EventLog(root / "catalog", durability="normal") as clog:
        clog.append_catalog([{"record_id": "r1", "op": "upsert_item", "entity_id": "new-1",
                              "attributes": {**attrs, "title": "New One"}, "timestamp": float(t)},
                             {"record_id": "r2", "op": "upsert_user", "entity_id": "walk-in",  # known by attributes
                              "attributes": {"age": 61.0, "country": "nowhere"}, "timestamp": float(t)}])
    with EventLog(root / "events", durability="normal") as elog:
        elog.append_events([{"event_id": f"e{i}", "user_id": u, "item_id": "new-1", "timestamp": float(t + i),
                             "type": "click"} for i, u in enumerate(users)])
        elog.append_events([{"event_id": "e-walk-in", "user_id": "walk-in", "item_id": art.item_ids()[0],
                             "timestamp": float(t + 5), "type": "click"}])  # their first event: now a known user

    args = ["--run-dir", str(tiny_deployed_run), "--events", str(root), "--out-dir", str(tmp_path / "r1"), "--rebuild"]
    assert refresh_main(args) == 0
    out = capsys.readouterr().out
    assert "accepted=4" in out and "unknown_items=0" in out and "catalog_new_items=1" in out, out
    assert "catalog_read=2" in out and "catalog_users=1" in out, out
    pipe = load_pipeline(tmp_path / "r1")
    new = int(pipe.store.items.lookup(["new-1"])[0])
    assert new == n0 and pipe.retriever.index.ntotal == n0 + 1 and len(pipe.retriever.item_embeddings) == n0 + 1
    assert pipe.store.popularity[new] == 3 and pipe.features.item_first_ts[new] == t
    assert pipe.features.cooc.shape == (n0 + 1, n0 + 1)  # rebuilt over the grown catalog
    assert pipe.features.ease is None or pipe.features.ease.shape == (n0 + 1, n0 + 1)
    # its vector: the item tower on its encoded attributes with the unknown id code, as served online
    towers = art.load_towers(pipe.store)
    enc = {k: v[new : new + 1] for k, v in pipe.store.item_table.items()}
    assert enc["item_id"][0] == 0
    np.testing.assert_allclose(pipe.retriever.item_embeddings[new], item_embeddings(towers, enc)[0], atol=1e-6)
    np.testing.assert_allclose(TorchModel(towers.item_tower)(enc)[0], item_embeddings(towers, enc)[0], atol=1e-6)
    _, top = pipe.retriever.search(pipe.retriever.item_embeddings[new][None], 1)
    assert top[0, 0] == new  # in the index
    assert RunArtifacts(tmp_path / "r1").titles()["new-1"] == "New One"
    for u in users:  # their click is in their seen set: not recommended back
        assert "new-1" not in pipe.recommend([Request(u, pipe.max_k, t + 100)])[0].item_ids
    # the user known by attributes alone, then by an event in the same refresh, has those attributes
    w = int(pipe.store.users.lookup(["walk-in"])[0])
    enc = pipe.store.features.transform("user", pd.DataFrame([{"user_id": "walk-in", "age": 61.0, "segment": None,
                                                                 "country": "nowhere"}]))
    assert w >= 0 and pipe.store.user_table["age"][w] == pytest.approx(enc["age"][0]) and enc["age"][0] != 0

    # a second refresh reads the records after the first one's catalog cursor: none, nothing folded twice
    assert refresh_main(["--run-dir", str(tmp_path / "r1"), "--events", str(root)]) == 0
    out = capsys.readouterr().out
    assert "catalog_read=0" in out and "log_read=0" in out, out
    again = load_pipeline(tmp_path / "r1")
    assert len(again.store.items) == n0 + 1 and again.store.popularity[new] == 3
    np.testing.assert_allclose(again.retriever.item_embeddings[new], pipe.retriever.item_embeddings[new], atol=1e-6)
    # without a cursor (a run refreshed from a table) every record is folded again: an update to the same vector
    from features.feedback import read_log_catalog
    from pipeline.refresh import fold_catalog

    records, _ = read_log_catalog(root)
    assert fold_catalog(RunArtifacts(tmp_path / "r1"), records)["updated_items"] == 1
    again = load_pipeline(tmp_path / "r1")
    assert len(again.store.items) == n0 + 1
    np.testing.assert_allclose(again.retriever.item_embeddings[new], pipe.retriever.item_embeddings[new], atol=1e-6)
    # the same events from a table, without the catalog records: the item is unknown, its events dropped
    clicks = pd.DataFrame({"user_id": users, "item_id": ["new-1"] * 3, "timestamp": [t, t + 1, t + 2]})
    assert refresh(tiny_deployed_run, clicks, out_dir=tmp_path / "r2")["unknown_items"] == 3


def test_a_catalog_record_that_cannot_be_applied_is_a_clear_error_and_writes_nothing(tiny_deployed_run, tmp_path,
                                                                                      capsys):
    from events.log import EventLog

    root = tmp_path / "log"
    with EventLog(root / "catalog", durability="normal") as clog:  # written past the catalog model's checks
        clog.append_catalog([{"record_id": "r1", "op": "rename_item", "entity_id": "x", "attributes": {},
                              "timestamp": 1.7e9}])
    (root / "events").mkdir()
    before = RunArtifacts(tiny_deployed_run).manifest()["artifacts"]
    out = tmp_path / "r1"
    assert refresh_main(["--run-dir", str(tiny_deployed_run), "--events", str(root), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "catalog records could not be folded" in err and "rename_item" in err
    assert not out.exists()  # the copy is gone (a retry with the same --out-dir works) ...
    assert RunArtifacts(tiny_deployed_run).manifest()["artifacts"] == before  # ... and the run is as it was


def test_a_fold_that_fails_while_writing_leaves_the_run_as_it_was(tiny_deployed_run, tiny_prepared, tmp_path,
                                                                   monkeypatch):
    import shutil

    import retrieval.index
    from pipeline.refresh import fold_catalog

    run = tmp_path / "run"
    shutil.copytree(tiny_deployed_run, run)
    n0 = len(RunArtifacts(run).item_ids())
    before = RunArtifacts(run).manifest()["artifacts"]
    records = pd.DataFrame([{"op": "upsert_item", "entity_id": "new-1", "attributes": {"title": "x"}}])

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(retrieval.index, "save_index", disk_full)  # after the store and features were staged
    with pytest.raises(OSError, match="No space"):
        fold_catalog(RunArtifacts(run), records)
    assert RunArtifacts(run).manifest()["artifacts"] == before
    pipe = load_pipeline(run)  # loads: every artifact is the old one
    assert len(pipe.store.items) == n0 and pipe.retriever.index.ntotal == n0
    monkeypatch.undo()
    assert fold_catalog(RunArtifacts(run), records)["new_items"] == 1  # the next fold clears the staged copies
    assert not list((run / "artifacts").glob("*.fold*"))
    assert len(load_pipeline(run).store.items) == n0 + 1
