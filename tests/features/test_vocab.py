"""IdVocab: the dict path for a request's few ids and the pandas path for many agree."""

import numpy as np
import pytest

from features.vocab import SMALL_LOOKUP, IdVocab


def test_small_and_large_lookups_agree_on_every_kind_of_id():
    v = IdVocab(["0042", "7", "a b", "ü"])
    asked = ["0042", "42", 7, "7", "a b", "ü", "missing", ""]
    small = v.lookup(asked)
    large = v.lookup(asked * (SMALL_LOOKUP // len(asked) + 1))[: len(asked)]
    assert small.tolist() == large.tolist() == [0, -1, 1, 1, 2, 3, -1, -1]
    assert v.lookup(np.array([["7", "x"]], dtype=object)).shape == (1, 2) and v.lookup([]).tolist() == []
    with pytest.raises(ValueError, match="unique"):
        IdVocab(["a", "a"])


def test_extend_appends_new_ids_and_both_lookup_paths_see_them():
    v = IdVocab(["a", "b"])
    assert v.lookup(["b"]).tolist() == [1]  # the dict is built here
    v.extend(["c", "d"])
    assert v.lookup(["d", "a", "zz"]).tolist() == [3, 0, -1]
    assert v.lookup(["c"] * (SMALL_LOOKUP + 1))[0] == 2 and len(v) == 4 and v.ids.tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="does not hold yet, each once"):
        v.extend(["a"])
    with pytest.raises(ValueError, match="each once"):
        v.extend(["e", "e"])
