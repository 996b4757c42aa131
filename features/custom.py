"""A user's own tables (CSV or parquet) through the same schema and validation.

Configured with ``data=custom`` and overrides such as
``data.loader.interactions=/path/events.parquet data.loader.columns.user_id=customer``.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pandas as pd

from features.schema import DataError, Dataset

_CONTRACT = {"interactions": ["user_id", "item_id", "timestamp"], "items": ["item_id"], "users": ["user_id"]}


# What pandas reads as missing by default (its documented list), kept for the columns that are not text.
NA_WORDS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
            "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def read_table(path: str | Path, what: str, setting: str | None = None, dtype: dict | type | None = None,
               literal=None) -> pd.DataFrame:
    """Read a CSV (any ``.csv``/``.tsv``/``.txt``) or parquet file; clear errors for missing or empty files.

    Args:
        path: the file.
        what: which table it is (``interactions``, ``items``, ``users``, ``requests``).
        setting: how the user names the file, for the error hint: a config key (``set key=<path>``),
            a flag such as ``--requests`` (``pass --requests <path>``) or an argument's name such as
            ``FILE`` (``give FILE as <path>``); ``data.loader.<what>`` when None.
        dtype: column types for a CSV (e.g. ids as ``str``, so "0042" stays "0042"); parquet keeps its own.
        literal: CSV columns where "NA", "None", "null" ... are text, not missing (only an empty cell is
            missing there); default: the columns ``dtype`` maps to ``str`` (ids). With ``dtype=str`` for
            every column, name the id columns here: an attribute cell "N/A" stays missing.
    """
    p = Path(path).expanduser()
    if not p.exists():
        setting = setting or f"data.loader.{what}"
        wanted = "<path to a .csv or .parquet file>"
        hint = (f"pass {setting} {wanted}" if setting.startswith("-") else f"give {setting} as {wanted}"
                if setting.isupper() else f"set {setting}={wanted}")
        raise DataError(f"{what} file {p} does not exist; {hint}.")
    if p.is_dir():
        raise DataError(f"{what} file {p} is a directory; name the .csv or .parquet file in it.")
    regular = p.is_file()
    suffix = p.suffix.lower() or ("" if regular else ".csv")  # a pipe (`<(...)`, a FIFO) without a name: CSV
    source, data = p, None
    if not regular:  # a pipe is read once: its bytes are kept for the two reads below
        try:
            data, source = p.read_bytes(), None
        except OSError as e:  # e.g. permission denied (a traceback before)
            raise DataError(f"{what} file {p} cannot be read ({e.strerror or e}); check the path and its "
                            "permissions.") from None
    if (data is not None and not data) or (regular and p.stat().st_size == 0):
        raise DataError(f"{what} file {p} is empty; it needs a header row and at least one data row.")

    def src():
        return source if source is not None else io.BytesIO(data)
    if suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(src())
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError: truncated, not parquet
            raise DataError(f"{what} file {p} is not a readable parquet file ({type(e).__name__}: "
                            f"{str(e)[:200]}); write it again.") from None
    elif suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            header = pd.read_csv(src(), sep=sep, nrows=0).columns
            # text columns (``dtype`` str: ids) keep "NA", "None", "null" as the text they are (a user "NA",
            # a title "None"); only an empty cell is missing there. Other columns: pandas' usual NA words.
            text = {literal} if isinstance(literal, str) else set(literal) if literal is not None else (
                set() if dtype is str else {c for c, t in (dtype or {}).items() if t is str})
            # pandas renames a second "timestamp" to "timestamp.1", which no reader would use
            twice = [m.group(1) for c in header if isinstance(c, str) and (m := re.fullmatch(r"(.+)\.\d+", c))
                     and m.group(1) in header]
            if twice:
                raise DataError(f"{what} file {p} has the column {twice[0]!r} twice in its header; keep one.")
            na = {c: [""] if c in text else list(NA_WORDS) for c in header}
            # index_col=False: a row with an extra field is an error (pandas' warning raised), never a
            # table shifted onto its first column, nor the field dropped
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(src(), sep=sep, dtype=dtype, keep_default_na=False, na_values=na, index_col=False)
        except pd.errors.ParserWarning:
            raise DataError(f"{what} file {p} has a row with more fields than its header "
                            f"({len(header)}: {', '.join(map(str, header))}); quote fields that hold the separator.") from None
        except pd.errors.EmptyDataError as e:
            raise DataError(f"{what} file {p} is empty; it needs a header row and at least one data row.") from e
        except pd.errors.ParserError as e:  # a row with more fields than the header, an unclosed quote
            raise DataError(f"{what} file {p} is not a well-formed {'TSV' if sep == chr(9) else 'CSV'} file: "
                            f"{str(e).strip()[:300]}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{what} file {p} is not UTF-8 (byte {e.object[e.start:e.start + 1]!r} at offset "
                            f"{e.start}); save it as UTF-8.") from None
        except OSError as e:  # permission denied, an I/O error
            raise DataError(f"{what} file {p} cannot be read ({e.strerror or e}); check the path and its "
                            "permissions.") from None
    else:
        raise DataError(f"{what} file {p} has unsupported extension {suffix!r}; use .csv, .tsv or .parquet.")
    return df


def _rename(df: pd.DataFrame, columns: dict[str, str], table: str, path: str) -> pd.DataFrame:
    """Map the user's column names onto the contract's (``columns``: contract name -> user's name)."""
    mapping = {}
    for contract_name in _CONTRACT[table]:
        theirs = columns.get(contract_name, contract_name) if columns else contract_name
        if theirs not in df.columns:
            raise DataError(
                f"{table} file {path} has no column {theirs!r} (needed as {contract_name!r}); "
                f"found {list(df.columns)}. Set data.loader.columns.{contract_name}=<your column name>."
            )
        renamed = {columns.get(c, c) if columns else c for c in _CONTRACT[table]}  # columns that get a contract name
        if theirs != contract_name and contract_name in df.columns and contract_name not in renamed:
            raise DataError(f"{table} file {path} maps {theirs!r} to {contract_name!r} but already has a column "
                            f"{contract_name!r}; drop or rename that column, or map {contract_name!r} itself.")
        mapping[theirs] = contract_name
    return df.rename(columns=mapping)


def load_tables(
    interactions: str,
    items: str | None = None,
    users: str | None = None,
    columns: dict[str, str] | None = None,
    name: str = "custom",
) -> Dataset:
    """Load user tables into a validated :class:`Dataset`.

    Args:
        interactions: path of the interactions table (user, item, timestamp[, weight]).
        items: optional items table; without it items have no attributes (id only).
        users: optional users table.
        columns: contract column -> the user's column name, e.g. ``{"user_id": "customer"}``.
        name: dataset name used in reports.
    """
    if not interactions:
        raise DataError("data=custom needs data.loader.interactions=<path to a .csv or .parquet file>.")
    columns = columns or {}
    user_col, item_col = columns.get("user_id", "user_id"), columns.get("item_id", "item_id")
    # ids as text: "0042" stays "0042" (and does not merge with "42"), "1E5" stays "1E5"
    inter = _rename(read_table(interactions, "interactions", dtype={user_col: str, item_col: str}), columns,
                    "interactions", interactions)
    if columns.get("weight"):
        if columns["weight"] not in inter.columns:
            raise DataError(f"interactions file {interactions} has no column {columns['weight']!r} (mapped as "
                            f"'weight' by data.loader.columns.weight); found {list(inter.columns)}.")
        inter = inter.rename(columns={columns["weight"]: "weight"})
    item_df = (_rename(read_table(items, "items", dtype={item_col: str}), columns, "items", items) if items
               else pd.DataFrame({"item_id": pd.Series([], dtype=str)}))
    user_df = (_rename(read_table(users, "users", dtype={user_col: str}), columns, "users", users) if users
               else pd.DataFrame({"user_id": pd.Series([], dtype=str)}))
    return Dataset(name, inter, item_df, user_df, meta={"source": "custom", "files": [interactions, items, users]})
