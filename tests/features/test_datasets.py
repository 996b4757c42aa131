"""MovieLens routes (local GroupLens / RecBole layouts, the package-index wheel) and custom tables."""

import zipfile

import pandas as pd
import pytest

from features.custom import load_tables, read_table
from features.movielens import GENRES, RECBOLE_PREFIX, RECBOLE_WHEEL, load_movielens
from features.schema import DataError


def _write_grouplens(d):
    d.mkdir()
    (d / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n2\t20\t4\t881250951\n")
    flags = ["0"] * len(GENRES)
    f1 = flags.copy(); f1[GENRES.index("Comedy")] = "1"; f1[GENRES.index("Drama")] = "1"
    f2 = flags.copy(); f2[GENRES.index("Action")] = "1"
    (d / "u.item").write_bytes((  # GroupLens' own files are Latin-1
        "10|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(f1) + "\n"
        "20|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(f2) + "\n"
    ).encode("latin-1"))
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")


def _atomic_files():
    return {
        "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t881250949\n2\t10\t3\t881250950\n2\t20\t4\t881250951\n",
        "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tToy Story\t1995\tComedy Drama\n20\tMisérables, Les\t1995\tAction\n",
        "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n",
    }


def test_grouplens_and_recbole_layouts_agree(tmp_path):
    _write_grouplens(tmp_path / "gl")
    (tmp_path / "rb").mkdir()
    for k, text in _atomic_files().items():
        (tmp_path / "rb" / f"ml-100k.{k}").write_text(text, encoding="utf-8")  # RecBole's copy: UTF-8
    a = load_movielens(source="dir", path=str(tmp_path / "gl"))
    b = load_movielens(source="dir", path=str(tmp_path / "rb"))
    for t in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(a, t), getattr(b, t), check_dtype=False)
    assert a.items.set_index("item_id").loc["10", "genres"] == "Comedy|Drama"
    assert a.items.set_index("item_id").loc["10", "title"] == "Toy Story"
    assert a.items.set_index("item_id").loc["20", "title"] == "Misérables, Les"  # each file in its own encoding
    assert set(a.meta["sha256"]) == {"u.data", "u.item", "u.user"}


def test_cached_wheel_is_read_without_network(tmp_path):
    # A wheel already in the cache is used as is: build a tiny fake one with the same layout.
    with zipfile.ZipFile(tmp_path / RECBOLE_WHEEL, "w") as z:
        for k, text in _atomic_files().items():
            z.writestr(RECBOLE_PREFIX + k, text)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_movielens(source="pypi", cache_dir=str(tmp_path))


@pytest.mark.slow
def test_real_movielens_from_package_index(tmp_path_factory):
    ds = load_movielens(source="pypi")  # shared user cache; fetched from the package index once
    assert len(ds.interactions) == 100_000
    assert ds.interactions["user_id"].nunique() == 943
    assert len(ds.items) == 1682
    assert ds.items.set_index("item_id").loc["543", "title"] == "Misérables, Les"  # RecBole's UTF-8 read as UTF-8
    assert set(ds.users.columns) >= {"user_id", "age", "gender", "occupation"}


def test_movielens_bad_sources(tmp_path):
    with pytest.raises(DataError, match="unknown MovieLens source 'ftp'"):
        load_movielens(source="ftp")
    with pytest.raises(DataError, match="needs data.loader.path"):
        load_movielens(source="dir")
    with pytest.raises(DataError, match="does not exist"):
        load_movielens(source="dir", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither the GroupLens layout"):
        load_movielens(source="dir", path=str(tmp_path / "empty"))


def test_custom_csv_and_parquet_with_column_mapping(tmp_path):
    inter = pd.DataFrame({"customer": [1, 2, 2], "sku": ["x", "x", "y"], "ts": [5, 6, 7], "weight": [1.0, 2.0, 1.0]})
    inter.to_csv(tmp_path / "i.csv", index=False)
    pd.DataFrame({"sku": ["x", "y"], "color": ["red", "blue"]}).to_parquet(tmp_path / "items.parquet")
    ds = load_tables(
        str(tmp_path / "i.csv"),
        items=str(tmp_path / "items.parquet"),
        columns={"user_id": "customer", "item_id": "sku", "timestamp": "ts"},
    )
    assert ds.interactions["user_id"].tolist() == ["1", "2", "2"]
    assert ds.interactions["weight"].tolist() == [1.0, 2.0, 1.0]
    assert ds.items.set_index("item_id").loc["y", "color"] == "blue"
    assert sorted(ds.users["user_id"]) == ["1", "2"]


def test_custom_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tables(str(tmp_path / "missing.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_tables(str(tmp_path / "empty.csv"))
    (tmp_path / "header_only.csv").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match="interactions table is empty"):
        load_tables(str(tmp_path / "header_only.csv"))
    pd.DataFrame({"user": [1], "item_id": ["a"], "timestamp": [1]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match=r"no column 'user_id'.*data.loader.columns.user_id"):
        load_tables(str(tmp_path / "c.csv"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported extension"):
        load_tables(str(tmp_path / "x.json"))
    pd.DataFrame({"user_id": [1], "item_id": ["a"], "timestamp": [1]}).to_csv(tmp_path / "ok.csv", index=False)
    pd.DataFrame({"item_id": ["a", "a"]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataError, match="duplicate item_id"):
        load_tables(str(tmp_path / "ok.csv"), items=str(tmp_path / "dup.csv"))



def test_a_pipe_is_read_and_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    """Found by a probe of the CLIs: a pipe (`<(...)`, a FIFO: size 0) was "empty", a file that cannot
    be read was a PermissionError traceback, and a column named twice lost its second copy unsaid."""
    import os
    import threading

    fifo = tmp_path / "requests"  # no extension: a pipe is read as CSV
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("user_id,timestamp\n0042,1\n"), daemon=True)
    writer.start()
    df = read_table(fifo, "requests", dtype={"user_id": str})
    writer.join(10)
    assert df["user_id"].tolist() == ["0042"] and df["timestamp"].tolist() == [1]
    (tmp_path / "locked.csv").write_text("user_id\nu\n")
    real_read_csv = pd.read_csv

    def denied(source, *args, **kwargs):
        if str(source).endswith("locked.csv"):
            raise PermissionError(13, "Permission denied")
        return real_read_csv(source, *args, **kwargs)
    monkeypatch.setattr(pd, "read_csv", denied)  # root reads any file: the refusal is simulated
    with pytest.raises(DataError, match="locked.csv cannot be read \\(Permission denied\\); check the path"):
        read_table(tmp_path / "locked.csv", "requests")
    monkeypatch.undo()
    (tmp_path / "twice.csv").write_text("user_id,item_id,timestamp,timestamp\nu,a,1,2\n")  # pandas: timestamp.1
    with pytest.raises(DataError, match="has the column 'timestamp' twice in its header; keep one"):
        load_tables(str(tmp_path / "twice.csv"))


def test_custom_ids_stay_text_and_bad_files_are_named(tmp_path):
    """CSV ids were read as numbers: "0042" merged with "42" and "1E5" became "100000"."""
    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,timestamp\n0042,1E5,10\n42,007,20\n0042,7,30\n")
    ds = load_tables(str(path))
    assert sorted(ds.interactions["user_id"].unique()) == ["0042", "42"]
    assert sorted(ds.interactions["item_id"].unique()) == ["007", "1E5", "7"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"user_id,item_id,timestamp\ncaf\xe9,1,10\n")
    with pytest.raises(DataError, match=r"is not UTF-8 \(byte b'\\xe9' at offset \d+\); save it as UTF-8"):
        load_tables(str(latin))
    both = tmp_path / "both.csv"
    both.write_text("user_id,customer,item_id,timestamp\nu1,c1,1,10\n")
    with pytest.raises(DataError, match="maps 'customer' to 'user_id' but already has a column 'user_id'"):
        load_tables(str(both), columns={"user_id": "customer"})
    swapped = load_tables(str(both), columns={"user_id": "item_id", "item_id": "user_id"})  # a swap is fine
    assert swapped.interactions["user_id"].tolist() == ["1"]
    with pytest.raises(DataError, match="no column 'score' \\(mapped as 'weight'"):
        load_tables(str(path), columns={"weight": "score"})


def test_ids_named_like_missing_words_stay_ids_and_malformed_csv_is_named(tmp_path):
    """A user "NA" or an item "None" is an id (only an empty cell is missing there); a row with more
    fields than the header or an unclosed quote is a clear error, never a table shifted onto its first
    column (pandas took the extra field's row as an index) nor a raw parser traceback."""
    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,timestamp\nNA,None,10\nnull,7,NA\n")
    rows = read_table(path, "interactions", dtype={"user_id": str, "item_id": str})
    assert rows["user_id"].tolist() == ["NA", "null"] and rows["item_id"].tolist() == ["None", "7"]
    assert rows["timestamp"].isna().tolist() == [False, True]  # not a text column: "NA" is missing
    path.write_text("item_id,price\nNA,N/A\n")  # recsys-catalog: every cell as text, the id literal only
    rows = read_table(path, "items", dtype=str, literal=["item_id"])
    assert rows["item_id"].tolist() == ["NA"] and rows["price"].isna().all()  # an attribute "N/A": not given
    for text, why in (("user_id,item_id,timestamp\nu,1,5,extra\nu,2,6\n", "more fields than its header"),
                      ("user_id,item_id,timestamp\nu,1,5\nu,2,6,x\n", "Expected 3 fields in line 3, saw 4"),
                      ('user_id,item_id\n"u,1\n', "EOF inside string")):
        path.write_text(text)
        with pytest.raises(DataError, match=why):
            read_table(path, "interactions")
