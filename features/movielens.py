"""MovieLens-100K: the reference real dataset.

Routes (``source``):
- ``pypi`` (default): the RecBole 1.2.1 wheel on the package index carries ml-100k in RecBole's
  atomic format; ``pip download`` fetches the 2 MB wheel into the cache and the files are read out
  of the zip. RecBole itself is never installed. Works wherever pip works.
- ``dir``: a local directory holding either the GroupLens layout (``u.data``, ``u.item``,
  ``u.user``) or RecBole atomic files (``ml-100k.inter``, ``.item``, ``.user``).
- ``grouplens``: download the original archive from GroupLens. Only when asked for explicitly.

Every file read is checksummed (sha256); files from the wheel must match pinned digests.
MovieLens may not be redistributed: the cache lives outside the repository.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from features.schema import DataError, Dataset

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."
PINNED_SHA256 = {
    "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


def default_cache_dir() -> Path:
    """``$RECSYS_CACHE`` or ``~/.cache/hybrid-recommender`` (outside the repository)."""
    return Path(os.environ.get("RECSYS_CACHE", Path.home() / ".cache" / "hybrid-recommender"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch_recbole_wheel(cache_dir: Path) -> Path:
    wheel = cache_dir / RECBOLE_WHEEL
    if wheel.exists():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("fetching MovieLens-100K via the package index (pip download %s)", RECBOLE_WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "recbole==1.2.1", "-d", str(cache_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not wheel.exists():
        raise DataError(
            f"could not fetch MovieLens-100K from the package index ({' '.join(cmd)} failed: "
            f"{res.stderr.strip()[-500:]}). Point data.loader.path at a local copy (GroupLens u.data/u.item/u.user "
            f"or RecBole ml-100k.* files) with data.loader.source=dir."
        )
    return wheel


def _text(data: bytes) -> io.StringIO:
    """A MovieLens file's text: UTF-8 when it decodes as UTF-8 (RecBole's copy: "Misérables" is
    ``Mis\xc3\xa9rables``), else Latin-1 (GroupLens' own u.item: ``Mis\xe9rables``). Reading
    RecBole's UTF-8 as Latin-1 served "MisÃ©rables" and split its title tokens."""
    try:
        return io.StringIO(data.decode("utf-8"))
    except UnicodeDecodeError:
        return io.StringIO(data.decode("latin-1"))


def _read_atomic(raw: dict[str, bytes], source: str) -> Dataset:
    def table(kind: str) -> pd.DataFrame:
        df = pd.read_csv(_text(raw[kind]), sep="\t", dtype=str, keep_default_na=False)
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    inter, item, user = table("inter"), table("item"), table("user")
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": pd.to_numeric(inter["timestamp"]).astype("int64"),
            "weight": pd.to_numeric(inter["rating"]).astype("float32"),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item["item_id"],
            "title": item["movie_title"],
            "year": pd.to_numeric(item["release_year"], errors="coerce"),
            "genres": item["class"].str.split().str.join("|"),
        }
    )
    users = user.rename(columns={})[["user_id", "age", "gender", "occupation", "zip_code"]].copy()
    users["age"] = pd.to_numeric(users["age"], errors="coerce")
    return Dataset("ml-100k", interactions, items, users, meta={"source": source})


def _read_grouplens(raw: dict[str, bytes], source: str) -> Dataset:
    inter = pd.read_csv(io.BytesIO(raw["u.data"]), sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": pd.to_numeric(inter["timestamp"]).astype("int64"),
            "weight": pd.to_numeric(inter["rating"]).astype("float32"),
        }
    )
    cols = ["item_id", "title_raw", "release_date", "video_release_date", "url"] + GENRES
    item = pd.read_csv(_text(raw["u.item"]), sep="|", header=None, names=cols, dtype=str, keep_default_na=False)
    flags = item[GENRES].astype(int).to_numpy().astype(bool)
    genres = ["|".join(g for g, f in zip(GENRES, row) if f) for row in flags]
    year = pd.to_datetime(item["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    title = item["title_raw"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    items = pd.DataFrame({"item_id": item["item_id"], "title": title, "year": year, "genres": genres})
    users = pd.read_csv(io.BytesIO(raw["u.user"]), sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip_code"], dtype=str)
    users["age"] = pd.to_numeric(users["age"], errors="coerce")
    return Dataset("ml-100k", interactions, items, users, meta={"source": source})


def _from_dir(path: Path) -> Dataset:
    if not path.is_dir():
        raise DataError(f"MovieLens directory {path} does not exist; set data.loader.path=<folder>, a folder with u.data/u.item/u.user or ml-100k.inter/.item/.user.")
    grouplens = ["u.data", "u.item", "u.user"]
    atomic = {k: path / f"ml-100k.{k}" for k in ("inter", "item", "user")}
    if all((path / f).exists() for f in grouplens):
        raw = {f: (path / f).read_bytes() for f in grouplens}
        ds = _read_grouplens(raw, f"dir:{path}")
    elif all(p.exists() for p in atomic.values()):
        raw = {k: p.read_bytes() for k, p in atomic.items()}
        ds = _read_atomic(raw, f"dir:{path}")
    else:
        raise DataError(
            f"{path} holds neither the GroupLens layout ({', '.join(grouplens)}) nor RecBole atomic files "
            f"(ml-100k.inter, ml-100k.item, ml-100k.user); found {sorted(p.name for p in path.iterdir())[:10]}."
        )
    ds.meta["sha256"] = {k: _sha256(v) for k, v in raw.items()}
    return ds


def load_movielens(source: str = "pypi", path: str | None = None, cache_dir: str | None = None) -> Dataset:
    """Load MovieLens-100K as a :class:`Dataset` (all ratings are interactions, ``weight`` = rating).

    Args:
        source: ``pypi`` (wheel route, default), ``dir`` (local copy at ``path``) or ``grouplens``
            (explicit download of the original archive).
        path: the local directory for ``source=dir``.
        cache_dir: where fetched files are kept; defaults to :func:`default_cache_dir`.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if source == "dir":
        if not path:
            raise DataError("data.loader.source=dir needs data.loader.path=<folder with the MovieLens files>.")
        return _from_dir(Path(path).expanduser())
    if source == "pypi":
        wheel = _fetch_recbole_wheel(cache)
        with zipfile.ZipFile(wheel) as z:
            raw = {k: z.read(RECBOLE_PREFIX + k) for k in PINNED_SHA256}
        digests = {k: _sha256(v) for k, v in raw.items()}
        bad = [k for k in raw if digests[k] != PINNED_SHA256[k]]
        if bad:
            raise DataError(f"checksum mismatch for ml-100k.{bad} in {wheel}; delete the file and retry.")
        ds = _read_atomic(raw, f"pypi:{RECBOLE_WHEEL}")
        ds.meta["sha256"] = digests
        return ds
    if source == "grouplens":
        target = cache / "ml-100k"
        if not (target / "u.data").exists():
            log.info("downloading %s (explicitly requested)", GROUPLENS_URL)
            data = urllib.request.urlopen(GROUPLENS_URL, timeout=60).read()  # noqa: S310 - explicit opt-in
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                z.extractall(cache)
        return _from_dir(target)
    raise DataError(f"unknown MovieLens source {source!r}; set data.loader.source= one of: pypi, dir, grouplens.")
