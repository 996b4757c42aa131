"""``recsys-catalog``: change the served catalog over gRPC (new items, attributes, blocks, user attributes).

    recsys-catalog upsert-items items.csv [--url 127.0.0.1:8001 [--url HOST:PORT ...]] [--batch-size 10000]
    recsys-catalog upsert-users users.parquet
    recsys-catalog block ITEM [ITEM ...]
    recsys-catalog unblock ITEM [ITEM ...]

``upsert-items``: a CSV or parquet file with ``item_id`` and attribute columns of the served run's
item schema (e.g. ``category``, ``genres``, ``price``, ``title``): a new item is embedded by the item
tower and can be served from the next answer; a known one gets the attributes given (an empty
cell keeps its value). ``upsert-users``: ``user_id`` and user attribute columns (e.g. ``age``), used
for that user's requests from the next answer on. ``block`` takes items out of every answer at
once (removal is a block), ``unblock`` restores them. Every record is answered on its own: ``ok``
(logged durably) or the reason it was rejected (``unknown_attribute``, ``bad_value``,
``unknown_item``, ...). The command prints the count of each outcome and the first rejected rows;
it exits 0, or 1 with ``--fail-on-rejected`` when any record was rejected, 2 on a bad file or an
unreachable server.

Several hosts: with Redis (``--redis`` on each ``recsys-serve``) the records go through the
shared catalog stream to every host: send them to one. Without Redis the catalog log is shared by
the servers of one host (its log folder) only, so a change must reach every host: give ``--url``
once per host. The records go to each in turn; a host that cannot be reached is reported by name,
the others still get them, and the command exits 2 (send again to that host: upserts, blocks and
unblocks are safe to repeat).
"""

from __future__ import annotations

import argparse
import sys

from tritonclient.utils import InferenceServerException

from features.custom import read_table
from features.schema import DataError
from serving.client import RecommendClient, call_seconds, check_address
from serving.events_cli import report_statuses


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recsys-catalog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", action="append", default=None,
                        help="a server's gRPC address; without Redis repeat it for every host (with Redis one "
                             "host shares the change with all; default: 127.0.0.1:8001)")
    common.add_argument("--timeout", type=call_seconds, default=60.0, help="seconds per call (default: 60)")
    common.add_argument("--fail-on-rejected", action="store_true", help="exit 1 when any record was rejected")
    for name, what in (("upsert-items", "item_id"), ("upsert-users", "user_id")):
        p = sub.add_parser(name, parents=[common], help=f"upsert the rows of a CSV or parquet file ({what} + attributes)")
        p.add_argument("file", help=f"CSV or parquet with {what} and attribute columns")
        p.add_argument("--batch-size", type=int, default=10_000, help="records per call (default: 10000, at most 100000)")
    for name in ("block", "unblock"):
        p = sub.add_parser(name, parents=[common], help=f"{name} items by id")
        p.add_argument("items", nargs="+", help="item ids")
    args = parser.parse_args(argv)
    args.url = list(dict.fromkeys(args.url or ["127.0.0.1:8001"]))  # each host once, in the given order
    for url in args.url:  # every address checked before any host gets the change
        try:
            check_address(url)
        except ValueError as err:
            parser.error(f"--url: {err}")
    if not 1 <= getattr(args, "batch_size", 1) <= 100_000:
        parser.error(f"--batch-size={args.batch_size} must be in 1..100000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command in ("upsert-items", "upsert-users"):
            key = "item_id" if args.command == "upsert-items" else "user_id"
            # CSV cells as text ("0042" stays "0042", a category "3" is not read as 3.0); numeric
            # attributes are parsed by the server; parquet keeps its own types
            table = read_table(args.file, args.command, "FILE", dtype=str, literal=[key])  # "NA" is an id there only
            if key not in table.columns:
                raise DataError(f"{args.file} has no '{key}' column; columns: {', '.join(map(str, table.columns))}")
            if table.empty:  # a header alone: nothing to send (as an empty file, an error, not "0 records")
                raise DataError(f"{args.file} has a header but no rows.")
            rows = [r.to_dict() for _, r in table.iterrows()]
        else:
            rows = [{"item_id": i} for i in args.items]
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    code, failed = 0, []
    for url in args.url:
        if len(args.url) > 1:
            print(f"{url}:")
        try:
            with RecommendClient(url, timeout=args.timeout) as client:
                if args.command == "upsert-items":
                    status = client.upsert_items(table, args.batch_size)
                elif args.command == "upsert-users":
                    status = client.upsert_users(table, args.batch_size)
                else:
                    status = getattr(client, args.command)(args.items)
        except ValueError as err:  # e.g. a record the client cannot encode: the same for every host
            print(f"error: {err}", file=sys.stderr)
            return 2
        except InferenceServerException as err:
            print(f"error: the server at {url} did not take the records: {err.status()}: {err.message()}",
                  file=sys.stderr)
            failed.append(url)
            continue
        rejected = report_statuses(status, "records", ("ok",), lambda i: rows[i], client.last_details)
        if rejected and args.fail_on_rejected:
            code = 1
    if failed:
        if len(args.url) > 1:
            print(f"error: not sent to {len(failed)} of {len(args.url)} hosts: {' '.join(failed)} (send again to "
                  "those: repeating a catalog change is safe)", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
