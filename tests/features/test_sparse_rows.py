import numpy as np
import pytest

import features.store as store
from features.store import SparseRows, sum_rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_rows_equals_numpy_to_the_bit(dtype):
    """The compiled kernel adds the rows in the order given, as numpy's reduction over axis 0 does:
    sorted rows (a request's known items), unsorted ones with repeats, one row, and negative indices
    (numpy's meaning, through the numpy path)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 170)).astype(dtype)
    cases = [np.sort(rng.choice(300, 120, replace=False)), rng.choice(300, 40), np.array([7]), np.array([-1, 3, -300])]
    for rows in cases:
        got = sum_rows(table, rows)
        assert got.dtype == table.dtype
        assert np.array_equal(got, np.add.reduce(table[rows], axis=0))


def test_sum_rows_without_the_kernel_and_on_odd_tables(monkeypatch):
    """Where scipy no longer has the kernel, and for tables it does not take (integers, a transposed
    view), the sums come from numpy: the same values."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 20)).astype(np.float32)
    rows = np.array([4, 1, 4, 49])
    expected = np.add.reduce(table[rows], axis=0)
    monkeypatch.setattr(store, "_csr_matvecs", None)
    assert np.array_equal(sum_rows(table, rows), expected)
    monkeypatch.undo()
    ints = rng.integers(0, 9, (50, 20))
    assert np.array_equal(sum_rows(ints, rows), ints[rows].sum(axis=0))
    assert np.array_equal(sum_rows(table.T.copy().T, rows), expected)  # a Fortran-ordered table
    assert np.array_equal(sum_rows(table, np.zeros(0, np.int64)), np.zeros(20, np.float32))
    out = np.ones(20, np.float32)
    assert sum_rows(table, rows, out) is out
    assert np.allclose(out, expected + 1, atol=1e-6)  # added into out, row by row


def test_sum_rows_refuses_what_the_kernel_would_misread():
    """The kernel reads and writes memory unchecked: a row past either end is numpy's IndexError, float
    rows are not truncated, and an ``out`` of the wrong size is refused (the kernel would write past
    its end); an ``out`` inside the table is summed through numpy (the kernel would read what it wrote)."""
    table = np.ones((10, 3), np.float32)
    for rows in ([10], [0, 11], [-11]):
        with pytest.raises(IndexError, match="out of bounds for a table of 10 rows"):
            sum_rows(table, np.array(rows))
    with pytest.raises(IndexError, match="integer indices"):
        sum_rows(table, np.array([1.5]))
    big = np.full(8, 7.0, np.float32)
    for out in (big[:2], big, np.zeros((1, 3), np.float32)):
        with pytest.raises(ValueError, match=r"it must be \(3,\)"):
            sum_rows(table, np.array([1]), out)
    assert big.tolist() == [7.0] * 8
    t = np.arange(12, dtype=np.float32).reshape(4, 3)
    expected = t[0] + np.add.reduce(t[[0, 1]], axis=0)
    assert np.array_equal(sum_rows(t, np.array([0, 1]), t[0]), expected)
    one_column = np.random.default_rng(3).standard_normal((300, 1)).astype(np.float32)
    rows = np.arange(0, 300, 2)  # numpy sums a single column pairwise: the numpy path, the same bits
    assert np.array_equal(sum_rows(one_column, rows), np.add.reduce(one_column[rows], axis=0))


def test_sparse_rows_times_a_dense_table_sums_each_rows_items():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((30, 8)).astype(np.float32)
    rows = SparseRows.from_lists([np.array([1, 5, 29]), np.zeros(0, np.int64), np.array([0])], 30)
    got = rows @ table
    assert got.shape == (3, 8)
    assert np.array_equal(got[0], np.add.reduce(table[[1, 5, 29]], axis=0))
    assert np.array_equal(got[1], np.zeros(8, np.float32))
    assert np.array_equal(got[2], table[0])
    assert np.allclose(got, rows.toarray() @ table, atol=1e-5)
