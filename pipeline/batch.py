"""Batch recommendations: a trained run + a table of requests -> the top K per request.

    python -m pipeline.batch --run-dir outputs/<run> --requests requests.csv --k 10 --out recs.parquet

Requests (CSV or parquet): ``user_id`` (required), optional ``timestamp`` (Unix seconds, the
request's context; now when missing). Output (CSV or parquet by extension): ``request`` (the
request's row, from 1: the first after the header; tells repeated users apart; blank lines are
not rows, so it is not the file's line number, which error messages give), ``user_id``,
``rank`` (1-based), ``item_id``, ``score``, ``reason``, ``group`` (main signal group), ``route``.
Every request goes through the full pipeline (retrieve -> rank -> rules), the same code the
Triton ``recommend`` model runs.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.custom import read_table
from features.schema import MAX_TIMESTAMP, DataError, _as_str_ids
from pipeline.artifacts import RunArtifacts
from pipeline.pipeline import MAX_ID_LENGTH, Pipeline, Request, RequestError

log = logging.getLogger(__name__)


def _first_line(rows: pd.Series, path: str | Path) -> int:
    """The file line of the first True row: in a CSV the line its record starts on (blank lines, which
    the reader skips, are counted, and a quoted field may span lines); otherwise its row number with
    the header as line 1."""
    row = int(np.flatnonzero(rows.to_numpy())[0])
    path = Path(path).expanduser()  # as read_table reads it
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt") and path.is_file():  # only on the error path: one pass over the records
        # (a pipe was read once already: its row number stands)
        limit = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize)  # a cell as long as the file (the too-long-id error names its line)
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                reader, end = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), 0
                for record in reader:  # the header, then every data row
                    start, end = end + 1, reader.line_num
                    if not record or (len(record) == 1 and not record[0].strip()):
                        continue  # a blank line: not a row for pandas either
                    if row < 0:
                        return start
                    row -= 1
        finally:
            csv.field_size_limit(limit)
    return row + 2


def read_requests(path: str | Path) -> pd.DataFrame:
    """Load and check a requests table: a ``user_id`` column (ids stripped, as every other reader of
    ids: " 9 " is user 9), optional ``timestamp`` (Unix seconds in 0..9999-12-31; missing: now).
    Every row is checked here, before the run loads: a bad row names its row number (the header is
    line 1) instead of failing the whole job halfway."""
    df = read_table(path, "requests", setting="--requests", dtype={"user_id": str})  # "0042" stays "0042"
    if "user_id" not in df.columns:
        raise DataError(f"requests file {path} has no 'user_id' column; found {list(df.columns)}. "
                        f"Add a user_id column (one request per row).")
    if len(df) == 0:
        raise DataError(f"requests file {path} has no rows.")
    ignored = [c for c in df.columns if c not in ("user_id", "timestamp")]
    if ignored:  # e.g. a time column named "ts": every request would be answered at "now"
        log.warning("requests file %s: column(s) %s ignored; a request is a user_id and an optional timestamp "
                    "(Unix seconds)", path, ", ".join(map(str, ignored)))
    odd = df["user_id"].map(lambda v: not (v is None or isinstance(v, (str, bytes, int, float, np.integer,
                                                                          np.floating))))
    if odd.any():  # a parquet list or struct column: "[1 2]" would be served as a cold user
        raise DataError(f"requests file {path}: line {_first_line(odd, path)}: user_id {df['user_id'][odd].iloc[0]!r} is "
                        "not an id (text or a whole number).")
    as_bytes = df["user_id"].map(lambda v: isinstance(v, bytes))
    if as_bytes.any():  # a parquet binary column: ids are its UTF-8 text
        try:
            df = df.assign(user_id=df["user_id"].map(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v))
        except UnicodeDecodeError:
            raise DataError(f"requests file {path}: a user_id is bytes that are not UTF-8; write the ids as text.") \
                from None
    missing = df["user_id"].isna()
    if missing.any():
        raise DataError(f"requests file {path}: {int(missing.sum())} row(s) have no user_id "
                        f"(first: line {_first_line(missing, path)}).")
    empty = df["user_id"].astype(str).str.strip().str.len() == 0
    if empty.any():
        raise DataError(f"requests file {path}: requests.user_id has empty id(s); every row needs a non-empty id "
                        f"(first: line {_first_line(empty, path)})")
    stripped = df["user_id"].astype(str).str.strip()
    long = stripped.str.len() > MAX_ID_LENGTH
    if long.any():  # named by its line here (the id check below refuses it too, without one)
        raise DataError(f"requests file {path}: line {_first_line(long, path)}: user_id is {len(stripped[long].iloc[0])} "
                        f"characters long; at most {MAX_ID_LENGTH} are allowed.")
    users = _as_str_ids(df["user_id"], "user_id", "requests", f"requests file {path}")
    df = df.assign(user_id=users)
    if "timestamp" in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df["timestamp"]):  # a date-time column: Unix seconds (naive = UTC)
            t = df["timestamp"]
            t = t.dt.tz_localize("UTC") if t.dt.tz is None else t
            df = df.assign(timestamp=(t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))
        ts = pd.to_numeric(df["timestamp"], errors="coerce")
        bad = ts.isna() & df["timestamp"].notna()
        if bad.any():
            raise DataError(f"requests file {path}: line {_first_line(bad, path)}: timestamp {df['timestamp'][bad].iloc[0]!r} "
                            "is not Unix seconds.")
        out = ts.notna() & ~((ts >= 0) & (ts <= MAX_TIMESTAMP))  # inf, negative, past the year 9999
        if out.any():
            raise DataError(f"requests file {path}: line {_first_line(out, path)}: timestamp {ts[out].iloc[0]!r} is outside Unix "
                            f"seconds 0..{MAX_TIMESTAMP} (milliseconds? divide by 1000; leave it empty for now).")
        df = df.assign(timestamp=ts)
    return df


def recommend_table(pipe: Pipeline, requests: pd.DataFrame, k: int, batch_size: int = 256,
                    progress: bool = True) -> pd.DataFrame:
    """Run every request through the pipeline; one output row per recommended item."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= pipe.max_k:
        raise DataError(f"k={k!r} must be an integer in 1..{pipe.max_k}.")
    users = requests["user_id"].astype(str).tolist()
    times = requests["timestamp"].tolist() if "timestamp" in requests.columns else [None] * len(users)
    rows = []
    for s in tqdm(range(0, len(users), batch_size), desc="recommend", unit="batch", disable=not progress):
        batch = [Request(u, k, None if t is None or pd.isna(t) else int(t)) for u, t in
                 zip(users[s : s + batch_size], times[s : s + batch_size])]
        for j, rec in enumerate(pipe.recommend(batch), start=s + 1):
            for rank, (i, sc, r, g) in enumerate(zip(rec.item_ids, rec.scores, rec.reasons, rec.groups), start=1):
                rows.append((j, rec.user_id, rank, i, sc, r, g, rec.route))
    return pd.DataFrame(rows, columns=["request", "user_id", "rank", "item_id", "score", "reason", "group", "route"])


def check_output(path: str | Path, requests: str | Path | None = None) -> Path:
    """The output path, checked before any work: a .csv / .parquet file in an existing folder this
    process can write in, and not the requests file itself."""
    p = Path(path)
    if p.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise DataError(f"--out {p} must end in .csv or .parquet.")
    if p.is_dir():
        raise DataError(f"--out {p} is a directory; name a file in it, e.g. {p / ('recs' + p.suffix)}.")
    if not p.parent.is_dir():
        raise DataError(f"--out {p}: folder {p.parent} does not exist; create it first.")
    if requests is not None and p.resolve() == Path(requests).resolve():
        raise DataError(f"--out {p} is the --requests file; write the recommendations to another file.")
    probe = p.with_name(f".{p.name}.{os.getpid()}.probe")
    try:  # written at the end, through a file next to it: fail now, not after the work
        probe.open("x").close()
        probe.unlink()
    except OSError as e:
        raise DataError(f"--out {p}: cannot write in {p.parent} ({e.strerror or e}); choose another folder.") from None
    return p


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` whole or not at all: to a temporary file next to ``path``, then renamed over it."""
    p = check_output(path)
    tmp = str(p.with_name(f".{p.name}.{os.getpid()}.tmp"))  # opened as any new file: the usual mode
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="recsys-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="output directory of `python train.py` (or its artifacts/)")
    ap.add_argument("--requests", required=True, help="CSV or parquet with user_id[, timestamp]")
    ap.add_argument("--k", type=int, default=10, help="items per request (default 10)")
    ap.add_argument("--out", required=True, help="output file, .csv or .parquet")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.k <= 0:
            raise DataError(f"--k={args.k} must be a positive integer.")
        check_output(args.out, args.requests)
        requests = read_requests(args.requests)
        art = RunArtifacts(args.run_dir)
        pipe = art.load_pipeline()
        manifest = art.manifest()
        if manifest.get("status") != "complete":  # its pipeline artifacts are all there (checked), the run is not
            log.warning("run %s did not complete (manifest status %r%s): answering from the pipeline artifacts it "
                        "holds", args.run_dir, manifest.get("status"),
                        f": {manifest['error'][:200]}" if manifest.get("error") else "")
        if args.k > pipe.max_k:  # the flag's name, not recommend_table's "k="
            raise DataError(f"--k={args.k} is above what the run serves; give --k in 1..{pipe.max_k} "
                            "(pipeline.max_k)")
        out = recommend_table(pipe, requests, args.k, progress=not args.no_progress)
        write_table(out, args.out)
    except (DataError, FileNotFoundError, RequestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the output is written whole or not at all (write_table)
        print(f"interrupted: {args.out} not written", file=sys.stderr)
        return 130
    log.info("wrote %d rows for %d requests to %s", len(out), len(requests), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
