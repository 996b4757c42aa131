"""Every error hint names a real key or flag: the suggested fix is fed back and must be accepted."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pandas as pd
import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from features.schema import DataError
from tests.conftest import TINY_DATA, compose_cfg

# `key=value` suggestions in messages: data.loader.path=<folder>, data.loader.columns.user_id=<...>
HINT = re.compile(r"(data\.loader\.[\w.]+)=")


def _hinted_key(message: str) -> str:
    found = HINT.findall(message)
    assert found, f"no data.loader.* key in the hint: {message}"
    return found[0]


def _events(tmp_path: Path, user_col: str = "user_id") -> Path:
    path = tmp_path / "events.csv"
    pd.DataFrame({user_col: ["u1", "u2", "u1"], "item_id": ["a", "b", "b"], "timestamp": [1, 2, 3]}).to_csv(path, index=False)
    return path


def _grouplens_dir(tmp_path: Path) -> Path:
    """A three-line MovieLens copy in the GroupLens layout (u.data, u.item, u.user)."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t10\t5\t881250949\n2\t11\t3\t891717742\n1\t11\t4\t878887116\n")
    flags = "|".join(["0"] * 18 + ["1"])
    (d / "u.item").write_text(f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n11|Heat (1995)|01-Jan-1995||http://x|{flags}\n")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return d


def _load(tmp_path: Path, overrides: list[str]):
    """Compose the real config with the overrides (Hydra rejects unknown keys) and run the loader."""
    cfg = compose_cfg(tmp_path, overrides)
    try:
        return instantiate(cfg.data.loader)
    except InstantiationException as err:  # Hydra wraps the loader's own error
        raise err.__cause__ from None


def test_custom_missing_file_hint_key_is_accepted(tmp_path):
    with pytest.raises(DataError) as err:
        _load(tmp_path, ["data=custom", f"data.loader.interactions={tmp_path}/nope.csv"])
    key = _hinted_key(str(err.value))
    assert key == "data.loader.interactions"
    ds = _load(tmp_path, ["data=custom", f"{key}={_events(tmp_path)}"])
    assert len(ds.interactions) == 3


def test_custom_missing_column_hint_key_is_accepted(tmp_path):
    path = _events(tmp_path, user_col="customer")
    with pytest.raises(DataError) as err:
        _load(tmp_path, ["data=custom", f"data.loader.interactions={path}"])
    key = _hinted_key(str(err.value))
    assert key == "data.loader.columns.user_id"
    ds = _load(tmp_path, ["data=custom", f"data.loader.interactions={path}", f"{key}=customer"])
    assert sorted(ds.interactions["user_id"].unique()) == ["u1", "u2"]


def test_custom_empty_interactions_hint_key_is_accepted(tmp_path):
    from features.custom import load_tables

    with pytest.raises(DataError) as err:
        load_tables("")
    key = _hinted_key(str(err.value))
    assert len(_load(tmp_path, ["data=custom", f"{key}={_events(tmp_path)}"]).interactions) == 3


def test_schema_missing_column_hint_key_is_accepted(tmp_path):
    from features.schema import validate_interactions

    with pytest.raises(DataError) as err:
        validate_interactions(pd.DataFrame({"user_id": ["1"], "item_id": ["2"]}), "test")
    key = _hinted_key(str(err.value))
    assert key == "data.loader.columns.timestamp"
    path = tmp_path / "events.csv"
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "ts": [1, 2]}).to_csv(path, index=False)
    ds = _load(tmp_path, ["data=custom", f"data.loader.interactions={path}", f"{key}=ts"])
    assert ds.interactions["timestamp"].tolist() == [1, 2]


def test_movielens_dir_hints_keys_are_accepted(tmp_path):
    with pytest.raises(DataError) as err:
        _load(tmp_path, ["data.loader.source=dir"])
    message = str(err.value)
    assert "data.loader.source=dir" in message
    key = _hinted_key(message.split("needs", 1)[1])
    assert key == "data.loader.path"
    with pytest.raises(DataError) as err:
        _load(tmp_path, ["data.loader.source=dir", f"{key}={tmp_path}/missing"])
    assert _hinted_key(str(err.value)) == "data.loader.path"
    ds = _load(tmp_path, ["data.loader.source=dir", f"{key}={_grouplens_dir(tmp_path)}"])
    assert len(ds.interactions) == 3 and ds.items["genres"].tolist() == ["Western", "Western"]


def test_movielens_unknown_source_hint_key_is_accepted(tmp_path):
    with pytest.raises(DataError) as err:
        _load(tmp_path, ["data.loader.source=ftp"])
    key = _hinted_key(str(err.value))
    assert key == "data.loader.source"
    assert _load(tmp_path, [f"{key}=dir", f"data.loader.path={_grouplens_dir(tmp_path)}"]).name == "ml-100k"


def test_batch_requests_hint_flag_is_accepted(tmp_path, tiny_run, capsys):
    from pipeline.batch import main

    out = tmp_path / "recs.csv"
    assert main(["--run-dir", str(tiny_run), "--requests", str(tmp_path / "nope.csv"), "--out", str(out),
                 "--no-progress"]) == 2
    message = capsys.readouterr().err
    flag = re.search(r"pass (--[\w-]+) <path", message).group(1)
    assert flag == "--requests"
    requests = tmp_path / "req.csv"
    pd.DataFrame({"user_id": ["u1", "nobody"]}).to_csv(requests, index=False)
    assert main(["--run-dir", str(tiny_run), flag, str(requests), "--out", str(out), "--no-progress"]) == 0
    assert set(pd.read_csv(out)["user_id"].astype(str)) == {"u1", "nobody"}


def test_refresh_hints_name_its_own_flags(tmp_path, tiny_run, capsys):
    """recsys-refresh once answered a missing file with train.py's data.loader.interactions=<path>."""
    from pipeline.refresh import main

    assert main(["--run-dir", str(tiny_run), "--interactions", str(tmp_path / "nope.csv")]) == 2
    flag = re.search(r"pass (--[\w-]+) <path", capsys.readouterr().err).group(1)
    assert flag == "--interactions"
    assert main(["--run-dir", str(tiny_run), "--events", str(tmp_path / "nolog")]) == 2
    assert "(--events DIR: the served --event-log DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tiny_run), "--events", str(tmp_path), "--rebuild-share", "7"])
    assert "--rebuild-share 7: a share of the interactions, in [0, 1]" in capsys.readouterr().err


def test_event_file_hint_names_the_argument(tmp_path, capsys):
    from serving.events_cli import main

    assert main(["send", str(tmp_path / "nope.csv")]) == 2
    assert "give FILE as <path to a .csv or .parquet file>" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_without_server_says_how_to_start_one(capsys):
    from serving.cli import main
    from serving.serve import parse_args

    port = _free_port()
    assert main(["--user", "196", "--url", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
    message = capsys.readouterr().err
    assert f"no server at 127.0.0.1:{port}" in message and "StatusCode" not in message
    command = re.search(r"`recsys-serve ([^`]+)`", message).group(1).split()
    args = parse_args(command)  # the suggested command line is one recsys-serve accepts
    assert args.grpc_port == port and str(args.model_repository) == "triton_repo"


@pytest.mark.parametrize("module, name", [("serving.cli", "recsys-recommend"), ("serving.serve", "recsys-serve"),
                                          ("serving.demo", "recsys-demo"), ("export.__main__", "recsys-export"),
                                          ("pipeline.batch", "recsys-batch")])
def test_console_scripts_print_their_installed_name(module, name, capsys):
    import importlib
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[name].split(":")[0] == module
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {name}")


def test_tiny_data_keys_are_real(tmp_path):
    """The shrink the suite relies on composes (a hint suite is only as good as its base config)."""
    assert compose_cfg(tmp_path, TINY_DATA).data.loader.n_users == 300


def test_a_send_that_fails_part_way_says_how_far_it_got_and_that_resending_is_safe(tmp_path, capsys, monkeypatch):
    """Found by a probe: 5,000 of 20,000 events were logged, and the command said the server "did not take
    the events"."""
    from tritonclient.utils import InferenceServerException

    from serving.client import RecommendClient
    from serving.events_cli import main

    rows = "\n".join(f"e{i},u{i},i{i},1700000000,click" for i in range(5))
    (tmp_path / "ev.csv").write_text("event_id,user_id,item_id,timestamp,type\n" + rows + "\n")

    def send_events(self, events, batch_size=10_000):
        self.last_statuses = ["ok", "duplicate"]  # the first call answered, the second timed out
        raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")

    monkeypatch.setattr(RecommendClient, "send_events", send_events)
    assert main(["send", str(tmp_path / "ev.csv"), "--batch-size", "2", "--url", f"127.0.0.1:{_free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "did not take the events from row 3 on: StatusCode.DEADLINE_EXCEEDED" in err
    assert "The 2 rows before were answered (2 logged)" in err and "send the same file again" in err


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "abc"])
def test_a_timeout_that_ends_every_call_is_refused(timeout, capsys):
    from serving.cli import main as recommend_main
    from serving.events_cli import main as events_main

    for main, argv in ((recommend_main, ["--user", "196"]), (events_main, ["send", "x.csv"])):
        with pytest.raises(SystemExit) as err:
            main([*argv, "--timeout", timeout])
        assert err.value.code == 2 and "give the seconds a call may take, a number > 0" in capsys.readouterr().err


def test_a_search_without_its_sweeper_says_what_to_install(capsys, monkeypatch):
    """Found by a probe of the CLIs: Hydra's own "Could not find 'hydra/sweeper/optuna'" named no extra."""
    import importlib.util
    import sys

    import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins") else real(name, *a))
    monkeypatch.setattr(sys, "argv", ["train.py", "hparams_search=optuna", "stage=retrieval"])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    assert "needs the Optuna sweeper, which is not installed: pip install -e '.[cpu,dev,sweep]'" in capsys.readouterr().err
    assert train._missing_plugin(["stage=retrieval"]) is None  # nothing asked of a sweeper
