"""bench/event_log.py on a short run: every setting asked for stores what it says and reports it."""

from __future__ import annotations

import json

from bench.event_log import main
from events.log import read_log


def test_served_impression_setting_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["--dir", str(tmp_path / "logs"), "--seconds", "0.2", "--only", "impressions-served",
                 "events-normal-b1", "--keep", "--json", str(out)]) == 0
    rows = {r["kind"]: r for r in json.loads(out.read_text())["results"]}
    served = rows["impressions"]
    assert served["items"] == 10 and served["new_ids"] and served["durability"] == "normal"
    assert served["calls"] > 0 and served["p50_ms"] > 0
    stored = read_log(tmp_path / "logs" / "event_log_bench-impressions-served", "impressions")
    assert len(stored) == served["rows"] + 20  # the measured rows and the 20 warm-up ones
    assert all(len(items) == 10 for items in stored["items"])
    assert rows["events"]["rows"] > 0
    assert "impressions (10 items, fresh ids)" in capsys.readouterr().out
