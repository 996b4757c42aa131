"""Ask a running server for recommendations: ``recsys-recommend --user 196 --k 10``.

Prints one line per item (rank, id, title, score, reason, driving signal group), or JSON with
``--json``. Start a server first: ``recsys-serve --model-repository triton_repo``
(``python -m serving.cli`` / ``python -m serving.serve`` from a source checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from tritonclient.utils import InferenceServerException

from serving.client import RecommendClient, call_seconds
from serving.protocol import Recommendations


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see `--help`)."""
    p = argparse.ArgumentParser(prog="recsys-recommend", description=__doc__.splitlines()[0])
    p.add_argument("--user", required=True, help="user id (an unknown id gets the cold-start answer)")
    p.add_argument("--k", type=int, default=10, help="number of items (default: %(default)s)")
    p.add_argument("--url", default="127.0.0.1:8001", help="server gRPC host:port (default: %(default)s)")
    p.add_argument("--timestamp", type=float, default=None,
                   help="request time, Unix seconds (default: the server's clock)")
    p.add_argument("--exclude-items", nargs="*", default=[], metavar="ID", help="item ids never to return")
    p.add_argument("--include-categories", nargs="*", default=[], metavar="CAT", help="only these categories")
    p.add_argument("--exclude-categories", nargs="*", default=[], metavar="CAT", help="never these categories")
    p.add_argument("--recent-items", nargs="*", default=[], metavar="ID",
                   help="items the user just interacted with (a session for an unknown user)")
    p.add_argument("--ranker", default=None,
                   help="exported ranker to score with: ranker, ranker_student, ranker_int8, ranker_student_int8 "
                        "(default: the server's, export.ranker)")
    p.add_argument("--promoted", nargs="*", default=[], metavar="ID",
                   help="items the boost rule lifts for this request (docs/events.md)")
    p.add_argument("--segment", default=None, help="the request's segment (segment-scoped rules and popularity)")
    p.add_argument("--attribute", action="append", default=[], metavar="NAME=VALUE",
                   help="a user attribute for this request (repeatable, e.g. --attribute age=30): the cold-start "
                        "path of a user the server does not know; a stored attribute of that name is overridden")
    p.add_argument("--timeout", type=call_seconds, default=10.0, help="seconds to wait (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = p.parse_args(argv)
    attributes = {}
    for given in args.attribute:
        name, sep, value = given.partition("=")
        if not sep or not name.strip():
            p.error(f"--attribute {given!r}: expected NAME=VALUE, e.g. --attribute age=30")
        if name.strip() in attributes:
            p.error(f"--attribute {name.strip()} given twice; give each attribute once")
        attributes[name.strip()] = value.strip()
    args.attributes = attributes or None
    return args


def no_server_hint(url: str) -> str:
    """The message for a gRPC endpoint where nothing answers, with the command that starts a server."""
    port = url.rsplit(":", 1)[-1] if ":" in url else "8001"
    return (f"error: no server at {url}; start one with `recsys-serve --model-repository triton_repo "
            f"--grpc-port {port}` (the repository `recsys-export --run-dir outputs/<run>` writes), "
            f"or pass --url host:port of a running one.")


def format_answer(answer: Recommendations) -> str:
    """A readable table of one answer."""
    by = f", scored by {answer.ranker}" if answer.ranker else ""
    lines = [f"user {answer.user_id} ({answer.route}): {len(answer.item_ids)} items{by}",
             f"{'#':>3}  {'item':<10} {'title':<40} {'score':>8}  {'reason':<20} group"]
    titles = answer.titles or [""] * len(answer.item_ids)
    for rank, row in enumerate(zip(answer.item_ids, titles, answer.scores, answer.reasons, answer.groups), 1):
        item, title, score, reason, group = row
        lines.append(f"{rank:>3}  {item:<10} {(title or '-')[:40]:<40} {score:>8.4f}  {reason:<20} {group}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one request; returns the exit status (2: request rejected, 1: server unreachable or failed)."""
    args = parse_args(argv)
    try:
        with RecommendClient(args.url, timeout=args.timeout) as client:
            answer = client.recommend(args.user, args.k, args.timestamp, args.exclude_items, args.include_categories,
                                      args.exclude_categories, args.recent_items, args.ranker, args.promoted,
                                      args.segment, args.attributes)
    except InferenceServerException as err:
        if err.status() == "StatusCode.UNAVAILABLE":
            print(no_server_hint(args.url), file=sys.stderr)
            return 1
        print(f"error: {err.message()} ({err.status()})", file=sys.stderr)
        return 2 if err.status() == "StatusCode.INVALID_ARGUMENT" else 1
    except ValueError as err:  # refused before sending (e.g. a k the wire cannot carry)
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(asdict(answer), indent=1) if args.json else format_answer(answer))
        sys.stdout.flush()
    except BrokenPipeError:  # `recsys-recommend ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
