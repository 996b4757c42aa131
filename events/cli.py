"""recsys-log: read and inspect the durable event and impression log (``events.log``).

Commands:
  read   every stored row of one kind, oldest first, optionally filtered by event / request time
         (since <= timestamp < until); printed (the first rows and the count) or written to a
         parquet or CSV file (list columns of impressions become JSON text in CSV)
  stats  the log's telemetry as JSON: segments, bytes, events, impressions, catalog,
         dropped_segments, last_event_at, last_impression_at, last_catalog_at

Kinds: events (interactions), impressions (served lists), catalog (item / user upserts, blocks:
recsys-catalog; their attributes are JSON text in CSV and parquet files).

Times (--since, --until) are Unix seconds or an ISO 8601 date / datetime (UTC unless it names
a zone); four digits alone are a year (--since 2030 is 2030-01-01, not 2030 seconds after 1970).

Examples:
  recsys-log read --dir logs/events --kind events --since 2024-01-01 --out events.parquet
  recsys-log read --dir logs/impressions --kind impressions --explode --out positions.csv
  recsys-log read --dir logs --kind impressions --head 5
  recsys-log read --dir logs/catalog --kind catalog
  recsys-log stats --dir logs/events

--dir may also name a server's log folder (``--event-log DIR``; by default event_log/ next to the
model repository, e.g. event_log/ beside triton_repo/): it holds events/, impressions/ and catalog/,
and the one of --kind is read (stats: each of them). A kind's folder of that layout given with another
--kind (e.g. --dir logs/events --kind impressions) reads its sibling of that kind (logs/impressions).

Exit status: 0, or 2 on bad input (a missing directory, an unknown kind or file type, a bad
time), with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from events.log import KINDS, LOCK_NAME, arrow_schema, log_stats, read_log
from events.segments import list_segments
from features.schema import MAX_TIMESTAMP

OUT_FORMATS = (".parquet", ".csv")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date / datetime (UTC when it names no zone); four digits alone are
    a year (ISO 8601's ``YYYY``: no event log holds the first hours of 1970)."""
    try:
        if re.fullmatch(r"\s*\d{4}\s*", text):
            raise ValueError("a year")
        value = float(text)
    except ValueError:
        try:
            ts = pd.Timestamp(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected Unix seconds or an ISO date, got {text!r}") from None
        if ts is pd.NaT:
            raise argparse.ArgumentTypeError(f"expected Unix seconds or an ISO date, got {text!r}") from None
        value = (ts.tz_localize("UTC") if ts.tzinfo is None else ts).timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite time, got {text!r}")
    if value > MAX_TIMESTAMP:  # read nothing, silently (found by a newcomer's walk-through)
        raise argparse.ArgumentTypeError(f"{text!r} is after the year 9999: milliseconds? Divide by 1000: times are "
                                         "Unix seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="recsys-log", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{read,stats}")
    read = sub.add_parser("read", help="print or export the stored events or impressions",
                          description="Every stored row of one kind, oldest segment first.")
    read.add_argument("--dir", required=True, type=Path, help="the log directory (EventLog's directory)")
    read.add_argument("--kind", required=True, choices=KINDS, help="which table to read")
    read.add_argument("--since", type=_time, default=None,
                      help="keep rows with timestamp >= this (Unix seconds or ISO date, UTC)")
    read.add_argument("--until", type=_time, default=None,
                      help="keep rows with timestamp < this (Unix seconds or ISO date, UTC)")
    read.add_argument("--explode", action="store_true",
                      help="impressions only: one row per (request, position) with position, item_id, score, reason")
    read.add_argument("--out", type=Path, default=None,
                      help="write all rows to this .parquet or .csv file instead of printing the first ones")
    read.add_argument("--head", type=_count, default=10, help="rows to print without --out (default 10)")
    stats = sub.add_parser("stats", help="print the log's telemetry as JSON",
                           description="Segments, bytes, row counts, dropped segments, newest stamps.")
    stats.add_argument("--dir", required=True, type=Path, help="the log directory")
    return ap


def _write(df: pd.DataFrame, out: Path, kind: str, explode: bool) -> None:
    if "attributes" in df.columns:  # catalog records: name -> value as JSON text in both formats
        df = df.assign(attributes=df["attributes"].map(lambda a: json.dumps(a, sort_keys=True)))
    if out.suffix.lower() == ".parquet":
        pq.write_table(pa.Table.from_pandas(df, schema=arrow_schema(kind, explode), preserve_index=False), out)
    else:
        lists = [c for c in ("items", "scores", "reasons") if c in df.columns]
        df.assign(**{c: df[c].map(json.dumps) for c in lists}).to_csv(out, index=False)


def _served_layout(directory: Path) -> list[str]:
    """The kinds' subfolders of a served log folder (events/, impressions/, catalog/) when
    ``directory`` itself holds no segment; [] otherwise."""
    if not directory.is_dir() or list_segments(directory):
        return []
    return [k for k in KINDS if (directory / k).is_dir() and list_segments(directory / k)]


def _sibling(directory: Path, kind: str) -> Path | None:
    """The ``kind`` folder next to ``directory`` when ``directory`` is another kind's folder of a
    served log folder and that sibling holds segments (``logs/events`` with ``--kind impressions``)."""
    if directory.name in KINDS and directory.name != kind:
        other = directory.parent / kind
        if other.is_dir() and list_segments(other):
            return other
    return None


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        served = _served_layout(args.dir)
        if not served and args.dir.is_dir() and not (list_segments(args.dir) or (args.dir / LOCK_NAME).exists()):
            raise ValueError(f"{args.dir} holds no event log (no segment-*.sqlite, no {LOCK_NAME}): give a log folder "
                             "(the served --event-log DIR, or its events/, impressions/ or catalog/)")
        if args.command == "stats":
            stats = {k: log_stats(args.dir / k) for k in served} if served else log_stats(args.dir)
            if served:
                print(f"recsys-log: {args.dir} is a served log folder: stats of {', '.join(served)}", file=sys.stderr)
            print(json.dumps(stats, indent=2))
            return 0
        if args.kind in served:
            print(f"recsys-log: reading {args.dir / args.kind} (the {args.kind} of the served log folder {args.dir})",
                  file=sys.stderr)
            args.dir = args.dir / args.kind
        elif args.command == "read" and (other := _sibling(args.dir, args.kind)) is not None:
            print(f"recsys-log: {args.dir} holds {args.dir.name}; reading the {args.kind} next to it, {other}",
                  file=sys.stderr)
            args.dir = other
        if args.explode and args.kind != "impressions":
            raise ValueError("--explode applies to --kind impressions only")
        if args.out is not None and args.out.suffix.lower() not in OUT_FORMATS:
            raise ValueError(f"--out {args.out}: unknown file type {args.out.suffix!r}; use one of "
                             f"{', '.join(OUT_FORMATS)}")
        if args.out is not None and not args.out.parent.is_dir():
            raise FileNotFoundError(f"--out {args.out}: folder {args.out.parent} does not exist")
        df = read_log(args.dir, args.kind, since=args.since, until=args.until, explode=args.explode)
        if args.out is None and len(df):
            with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 40):
                print(df.head(args.head).to_string(index=False))
            print(f"{len(df)} rows")
        elif args.out is None:
            print("0 rows")
        else:
            _write(df, args.out, args.kind, args.explode)
            print(f"wrote {len(df)} rows to {args.out}")
    except (OSError, ValueError, sqlite3.Error) as e:
        print(f"recsys-log: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
