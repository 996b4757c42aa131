"""The deployed run (served state over all interactions) on the real tritonserver, over gRPC."""

import pandas as pd
import pytest

from export.repository import export_if_needed
from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.pipeline import Request
from serving.client import RecommendClient
from serving.triton_server import TritonServer
from tests.conftest import TINY_DATA, compose_cfg

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_served_answers_know_each_users_latest_interaction(tiny_deployed_run, tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + [f"export.repository={tmp_path / 'repo'}", "export.int8.enabled=false"])
    repo = export_if_needed(cfg, tiny_deployed_run)
    served = RunArtifacts(repo / "recommend" / "1" / "artifacts")
    assert served.manifest()["artifacts"]["store"]["deployed"] is True  # the export serves the deployed state
    log = pd.read_parquet(served.path("interactions"))
    latest = log.sort_values(["user_id", "timestamp", "item_id"]).groupby("user_id").tail(1).head(15)
    offline = load_pipeline(tiny_deployed_run)
    t = int(log["timestamp"].max()) + 60
    with TritonServer(repo, log_path=tmp_path / "tritonserver.log") as server, \
            RecommendClient(server.grpc_url) as client:
        for user, item in zip(latest["user_id"], latest["item_id"]):
            got = client.recommend(str(user), 20, t)
            want = offline.recommend([Request(str(user), 20, t)])[0]
            assert got.item_ids == want.item_ids and got.route == "known_user"
            assert str(item) not in got.item_ids  # the latest interaction is in the served seen set

