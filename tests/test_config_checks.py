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


def test_lists_names_and_parts_that_failed_late_are_named_before_training(tmp_path):
    """Found by a probe: each of these passed the checks and failed with a traceback, some after training
    (valid_share=0: early stopping had no metric; eval.ks=[0, 10] after the first baseline)."""
    cfg = compose_cfg(tmp_path, TINY_DATA + ["split.valid_share=0", "split.test_share=0", "eval.ks=[0,10]",
                                             "retrieval.eval_ks=[]", "seed=-1", "retrieval.model.hidden=[0]",
                                             "retrieval.history_mode=foo",
                                             "retrieval.early_stopping.monitor=val/recall@7",
                                             "eval.select_metric=foo", "retrieval.refit.mode=bogus",
                                             "export.flavour=bogus", "export.recommend_inference=remote",
                                             "export.ranker=best"])
    with pytest.raises(DataError) as err:
        check_values(cfg)
    message = str(err.value)
    for named in ("split.valid_share=0 must be a number in (0, 1)", "split.test_share=0 must be",
                  "eval.ks=[0, 10] must be a non-empty list of whole numbers >= 1", "retrieval.eval_ks=[] must be",
                  "seed=-1 must be a whole number >= 0", "retrieval.model.hidden=[0] must be a list of whole numbers",
                  "retrieval.history_mode='foo' must be one of causal, bag",
                  "retrieval.early_stopping.monitor='val/recall@7' must be a metric validation logs: one of val/recall@10",
                  "eval.select_metric='foo' must be one of recall, precision, hr, mrr, ndcg, map, coverage, gini, "
                  "novelty @ one of eval.ks", "(e.g. ndcg@10)",  # the first valid k, not 0
                  # the last stages' settings (found by a probe: export.flavour=bogus failed after training)
                  "retrieval.refit.mode='bogus' must be one of none, scratch", "export.flavour='bogus' must be one of "
                  "wheel, stock", "export.recommend_inference='remote' must be one of auto, in_process, bls",
                  "export.ranker='best' must be one of ranker, ranker_student, ranker_int8, ranker_student_int8"):
        assert named in message, message
    with pytest.raises(DataError, match=r"eval.ks=10 must be a non-empty list"):  # a bare number, not a list
        check_values(compose_cfg(tmp_path, TINY_DATA + ["eval.ks=10"]))
    check_values(compose_cfg(tmp_path, TINY_DATA + ["eval.select_metric=coverage@10"]))  # what selection takes
    with pytest.raises(DataError, match="eval.select_metric='ndcg@010'"):
        check_values(compose_cfg(tmp_path, TINY_DATA + ["eval.select_metric=ndcg@010"]))


def test_feature_options_and_the_category_feature_are_checked(tmp_path):
    from features.prepare import prepare

    for option, named in (("max_len=-1", "max_len=-1 must be a whole number >= 1"),
                          ("min_count=abc", "min_count='abc' must be a whole number >= 1"),
                          ("sep=''", "sep='' must be a non-empty string")):
        cfg = compose_cfg(tmp_path, TINY_DATA + [f"++data.features.item.genres.{option}"])
        with pytest.raises(DataError, match=rf"feature item.genres in .*: {named}"):
            prepare(cfg)
    cfg = compose_cfg(tmp_path, TINY_DATA + ["data.category_feature=price"])  # numeric: no categories
    with pytest.raises(DataError, match=r"category_feature='price' \(pipeline / data\) is not a declared categorical item feature .*"
                                        r"declared ones: \['category', 'genres', 'title'\]"):
        prepare(cfg)


def test_a_data_error_inside_hydra_and_an_unset_file_are_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    for overrides, expected in (
            (["data=custom"], "error: data.loader.interactions is not set; give it on the command line"),
            (["data=custom", f"data.loader.interactions={tmp_path / 'missing.csv'}"], "error: ")):
        out = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}",
                              "logger=csv", "progress=false"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 1, out.stderr[-2000:]
        assert expected in out.stderr and "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr, \
            out.stderr[-2000:]


def test_a_run_that_fails_after_it_started_says_so_in_its_manifest(tmp_path):
    """It said "running" for good: a reader could not tell a failed run from one still training."""
    from pipeline.artifacts import RunArtifacts
    from train import train

    cfg = compose_cfg(tmp_path, TINY_DATA + ["data.category_feature=price"])  # fails in prepare, after the start
    with pytest.raises(DataError):
        train(cfg)
    m = RunArtifacts(tmp_path / "run").manifest()
    assert m["status"] == "failed" and m["error"].startswith("DataError: category_feature='price'")
    with pytest.raises(FileNotFoundError, match=r"\(the run failed: DataError: category_feature"):
        RunArtifacts(tmp_path / "run").check()
