"""``recsys-events``: send interaction events to the served system over gRPC.

    recsys-events send events.csv [--url 127.0.0.1:8001] [--batch-size 10000]
    recsys-events send events.parquet --fail-on-rejected

The file (CSV or parquet) has one event per row: ``event_id``, ``user_id``, ``item_id``,
``timestamp`` (Unix seconds), ``type`` (view, click, add_to_cart, purchase, rating, impression) and
optionally ``weight``. Each event is answered on its own: ``ok`` (logged durably; the next answer
knows it), ``duplicate`` (its event_id was logged before) or the reason it was rejected. The
command prints the count of each outcome and the first rejected rows; it exits 0, or 1 with
``--fail-on-rejected`` when any event was rejected, 2 on a bad file or an unreachable server.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from tritonclient.utils import InferenceServerException

from features.custom import read_table
from features.schema import DataError
from serving.client import RecommendClient, call_seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recsys-events", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="send the events of a CSV or parquet file")
    send.add_argument("file", help="CSV or parquet with event_id, user_id, item_id, timestamp, type[, weight]")
    send.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address (default: 127.0.0.1:8001)")
    send.add_argument("--batch-size", type=int, default=10_000, help="events per call (default: 10000, at most 100000)")
    send.add_argument("--timeout", type=call_seconds, default=60.0, help="seconds per call (default: 60)")
    send.add_argument("--fail-on-rejected", action="store_true", help="exit 1 when any event was rejected")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 100_000:
        parser.error(f"--batch-size={args.batch_size} must be in 1..100000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = None
    try:
        table = read_table(args.file, "events", "FILE",
                           dtype={c: str for c in ("event_id", "user_id", "item_id", "type")})
        if table.empty:  # a header alone: nothing to send (as an empty file, an error, not "0 events")
            raise DataError(f"events file {args.file} has a header but no rows.")
        client = RecommendClient(args.url, timeout=args.timeout)
        try:
            status = client.send_events(table, args.batch_size)
        finally:
            client.close()
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except InferenceServerException as err:
        done = client.last_statuses if client is not None else []  # answered before this call failed
        logged = sum(s in ("ok", "duplicate") for s in done)
        print(f"error: the server at {args.url} did not take the events from row {len(done) + 1} on: {err.status()}: "
              f"{err.message()}. The {len(done)} rows before were answered ({logged} logged); a call that failed "
              "may still have been logged: send the same file again (logged events come back as duplicate, "
              "nothing is applied twice)", file=sys.stderr)
        return 2
    rejected = report_statuses(status, "events", ("ok", "duplicate"), lambda i: table.iloc[i].to_dict())
    return 1 if rejected and args.fail_on_rejected else 0


def report_statuses(status: list[str], noun: str, accepted: tuple[str, ...], row, details: list[str] | None = None) -> int:
    """Print the count of each status and the first rejected rows (``row(i)``: how to show row i, 0-based;
    printed from 1, the first data row, as a spreadsheet counts them without the header; ``details``: per
    row what was wrong, when the server says); returns how many were rejected (a status not in ``accepted``)."""
    counts = Counter(status)
    print(f"{len(status)} {noun}: " + ", ".join(f"{k}={v}" for k, v in counts.most_common()))
    rejected = [(i, s) for i, s in enumerate(status) if s not in accepted]
    for i, s in rejected[:10]:
        shown = row(i)
        if isinstance(shown, dict):  # a 1,500-character value would flood the report
            shown = {k: (v[:60] + f"... ({len(v)} characters)" if isinstance(v, str) and len(v) > 80 else v)
                     for k, v in shown.items()}
        why = f" ({details[i]})" if details is not None and i < len(details) and details[i] else ""
        print(f"  row {i + 1}: {s}{why}: {shown}")
    if len(rejected) > 10:
        print(f"  ... {len(rejected) - 10} more rejected rows")
    return len(rejected)


if __name__ == "__main__":
    sys.exit(main())
