"""The distilled student served by Triton: chosen by config and per request, equal to offline.

One tiny run with a student (stage=distill, gate off), exported with ``export.ranker=ranker_student``
(the config's choice), one server for the module. The parity test runs first: the served pipeline
keeps one exposure-cap state whatever the ranker, so the offline pipeline it is compared with sees
the same request sequence and swaps its ranker the same way.
"""

import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from pipeline.artifacts import load_pipeline
from pipeline.pipeline import Request
from serving import cli
from serving.client import RecommendClient
from serving.protocol import encode_request
from serving.triton_server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.slow]
TS = 1_700_600_000
RANKERS = ["ranker", "ranker_student", "ranker_int8", "ranker_student_int8"]


@pytest.fixture(scope="module")
def run(tiny_student_run):
    """Tiny run with a distilled student, exported with the student as the default ranker (shared
    with the GPU check's rehearsal)."""
    return tiny_student_run


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    with TritonServer(run[1], log_path=tmp_path_factory.mktemp("logs") / "tritonserver.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with RecommendClient(server.grpc_url) as c:
        yield c


def requests(art) -> list[Request]:
    users = json.loads((art / "store" / "users.json").read_text())
    items = json.loads((art / "store" / "items.json").read_text())
    reqs = [Request(user_id=u, k=10, timestamp=TS + 3600 * i) for i, u in enumerate(users[::11][:16])]
    return reqs + [Request(user_id="new-user", k=10, timestamp=TS),
                   Request(user_id="new-user-2", k=5, timestamp=TS, recent_items=items[10:14])]


def test_served_student_equals_the_offline_student_pipeline(client, run):
    run_dir, _ = run
    art = run_dir / "artifacts"
    # both PyTorch rankers of the run, the student by default like the export; fresh exposure state
    offline = load_pipeline(run_dir, default_ranker="ranker_student")
    assert set(offline.rankers) == {"ranker", "ranker_student"}
    # None: the export's default (export.ranker=ranker_student); then named per request.
    for i, r in enumerate(requests(art)):
        name = (None, "ranker_student", "ranker")[i % 3]
        want = offline.recommend([r], ranker=name)[0]
        got = client.recommend(r.user_id, r.k, r.timestamp, recent_items=r.recent_items, ranker=name)
        assert got.ranker == (name or "ranker_student")
        assert (got.item_ids, got.reasons, got.groups, got.route) == (want.item_ids, want.reasons, want.groups,
                                                                      want.route), (name, r)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, err_msg=f"{name} {r}")


def test_every_exported_ranker_is_served(server, client, run):
    assert server.ready_models() == sorted(["catalog", "events", "item_tower", "recommend", "retrieval", "user_tower", *RANKERS])
    exported = json.loads((run[1] / "export.json").read_text())
    assert exported["rankers"] == RANKERS and exported["ranker"] == "ranker_student"
    user = json.loads((run[0] / "artifacts" / "store" / "users.json").read_text())[0]
    for name in RANKERS:
        answer = client.recommend(user, 5, timestamp=TS, ranker=name)
        assert answer.ranker == name and len(answer.item_ids) == 5


def test_unknown_ranker_is_invalid_argument_and_the_server_keeps_serving(server, client, run):
    tensors = encode_request("u1", 10, TS, ranker="ranker_tiny")
    with pytest.raises(InferenceServerException, match=r"unknown ranker 'ranker_tiny' in input 'ranker'; known: "
                                                       r"ranker, ranker_student, ranker_int8, ranker_student_int8"
                       ) as err:
        client.infer(tensors)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    tensors["ranker"] = np.array([b"ranker", b"ranker_student"], dtype=object)
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'ranker'"):
        client.infer(tensors)
    user = json.loads((run[0] / "artifacts" / "store" / "users.json").read_text())[0]
    answer = client.recommend(user, 10, timestamp=TS)
    assert answer.ranker == "ranker_student" and len(answer.item_ids) == 10 and server.is_running()


def test_cli_takes_a_ranker(server, run, capsys):
    user = json.loads((run[0] / "artifacts" / "store" / "users.json").read_text())[0]
    url = server.grpc_url
    assert cli.main(["--user", user, "--k", "3", "--url", url, "--timestamp", str(TS), "--ranker", "ranker_int8"]) == 0
    assert f"user {user} (known_user): 3 items, scored by ranker_int8" in capsys.readouterr().out
    assert cli.main(["--user", user, "--k", "3", "--url", url, "--ranker", "nope"]) == 2
    assert "unknown ranker 'nope'" in capsys.readouterr().err
