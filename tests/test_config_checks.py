"""The run config's numbers are checked before any stage runs (tests/test_hints.py covers the shape)."""

import pytest

from features.schema import DataError
from stages.config_checks import check_values
from tests.conftest import TINY_DATA, compose_cfg


@pytest.mark.parametrize("overrides", [[], TINY_DATA, ["experiment=synthetic_1m"], ["index=ivf"], ["index=hnsw"],
                                       ["split=random_user"]])
def test_the_shipped_configs_pass(tmp_path, overrides):
    check_values(compose_cfg(tmp_path, overrides))


def test_every_bad_number_is_named_before_training(tmp_path):
    """Found by a probe: temperature=-1 trained a useless model for minutes; max_epochs=abc, batch_size=0
    and nprobe=abc failed with raw tracebacks deep inside Lightning, torch or faiss."""
    from train import train

    cfg = compose_cfg(tmp_path, TINY_DATA + ["retrieval.temperature=-1", "trainer.max_epochs=abc",
                                             "retrieval.batch_size=0", "index=ivf", "index.nprobe=abc",
                                             "retrieval.model.dropout=1.0"])
    with pytest.raises(DataError) as err:
        train(cfg)
    message = str(err.value)
    for named in ("retrieval.temperature=-1 must be a number > 0", "trainer.max_epochs='abc' must be a whole number >= 1 (or -1",
                  "retrieval.batch_size=0", "index.nprobe='abc'", "retrieval.model.dropout=1.0 must be a number in [0, 1)"):
        assert named in message, message
    assert not (tmp_path / "artifacts").exists() and not any(tmp_path.rglob("manifest.json"))  # nothing started
    with pytest.raises(DataError, match="test_share \\+ split.valid_share = 1.1 must be below 1"):
        check_values(compose_cfg(tmp_path, ["split.test_share=0.6", "split.valid_share=0.5"]))
