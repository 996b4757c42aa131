"""The exported repository on the real tritonserver (nvidia-pytriton wheel), over gRPC.

One server for the module. The parity test runs first: the served pipeline keeps exposure-cap
state, so it must see the same request sequence as the fresh offline pipeline it is compared with.
"""

import json
import time
import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from omegaconf import OmegaConf
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from export.config import DEFAULTS
from export.onnx_export import run_torch
from inference.models import onnx_session, run_onnx
from inference.spec import from_batch, to_batch
from export.repository import export_if_needed, load_models, parity_inputs
from pipeline.artifacts import RunArtifacts, load_pipeline
from pipeline.pipeline import Request
from retrieval.index import load_index, search
from serving import cli
from serving.health import parse_metrics
from serving.metric_buffer import FLUSH_S
from serving.client import RecommendClient
from serving.protocol import FIELDS, OUTPUTS, decode_response, encode_request
from serving.triton_server import TritonServer
from tests.conftest import TINY_DATA, compose_cfg

pytestmark = [pytest.mark.triton, pytest.mark.slow]
TS = 1_700_600_000
INVALID = "StatusCode.INVALID_ARGUMENT"


@pytest.fixture(scope="module")
def repo(tiny_run, tmp_path_factory):
    """The tiny run exported once (shared with test_export.py through the same path)."""
    cfg = compose_cfg(tmp_path_factory.mktemp("cfg"), TINY_DATA)
    if cfg.get("export") is None:
        cfg.export = OmegaConf.load(DEFAULTS)
    cfg.export.repository = str(tiny_run.parent / "triton_repo")
    return export_if_needed(cfg, tiny_run)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with TritonServer(repo, log_path=tmp_path_factory.mktemp("logs") / "tritonserver.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with RecommendClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def art(repo):
    return repo / "recommend" / "1" / "artifacts"


def sample_requests(art) -> list[Request]:
    """Known users (every 7th), unknown users, filters, exclusions and a cold session."""
    users = json.loads((art / "store" / "users.json").read_text())
    items = json.loads((art / "store" / "items.json").read_text())
    reqs = [Request(user_id=u, k=10, timestamp=TS + 3600 * i) for i, u in enumerate(users[::7][:30])]
    reqs += [Request(user_id="new-user-1", k=10, timestamp=TS),
             Request(user_id="new-user-2", k=3, timestamp=TS + 50_000)]
    reqs += [Request(user_id=users[1], k=8, timestamp=TS, exclude_categories=["drama"], exclude_items=items[:5]),
             Request(user_id=users[2], k=5, timestamp=TS, include_categories=["comedy", "kids"]),
             Request(user_id="new-user-3", k=10, timestamp=TS, recent_items=items[10:14])]
    return reqs


def test_served_answers_equal_the_offline_pipeline(client, tiny_run, art):
    offline = load_pipeline(tiny_run)  # PyTorch models, fresh exposure state, like the server's
    routes = set()
    for r in sample_requests(art):
        want = offline.recommend([r])[0]
        got = client.recommend(r.user_id, r.k, r.timestamp, r.exclude_items, r.include_categories,
                               r.exclude_categories, r.recent_items)
        assert (got.item_ids, got.reasons, got.groups, got.route) == (want.item_ids, want.reasons, want.groups,
                                                                      want.route), r
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, err_msg=str(r))
        routes.add(got.route)
    assert routes == {"known_user", "cold_user"}


def test_bls_inference_gives_the_same_answers(repo, tiny_run, art, tmp_path):
    """recommend with INFERENCE=bls (towers and ranker as Triton calls) answers like the offline pipeline."""
    bls = tmp_path / "repo_bls"
    shutil.copytree(repo, bls, symlinks=True)
    config = bls / "recommend" / "config.pbtxt"
    text = config.read_text()
    assert 'string_value: "auto"' in text  # the wheel export chose in_process (checked in test_export)
    config.write_text(text.replace('string_value: "auto"', 'string_value: "bls"'))
    offline = load_pipeline(tiny_run)
    requests = sample_requests(art)[:6] + sample_requests(art)[-3:]
    with TritonServer(bls, log_path=tmp_path / "tritonserver.log") as running, \
            RecommendClient(running.grpc_url) as c:
        for r in requests:
            want = offline.recommend([r])[0]
            got = c.recommend(r.user_id, r.k, r.timestamp, r.exclude_items, r.include_categories,
                              r.exclude_categories, r.recent_items)
            assert (got.item_ids, got.reasons, got.route) == (want.item_ids, want.reasons, want.route), r
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, err_msg=str(r))
        page = scrape(running)
    assert metric(page, "nv_inference_request_success", model="user_tower", version="1") == len(requests)
    assert metric(page, "nv_inference_request_success", model="ranker", version="1") == len(requests)


def test_all_models_ready(server):
    assert server.ready_models() == ["catalog", "events", "item_tower", "ranker", "ranker_int8", "recommend", "retrieval", "user_tower"]


@pytest.mark.parametrize("name", ["user_tower", "item_tower", "ranker"])
def test_pytorch_onnxruntime_and_triton_agree(server, repo, tiny_run, name):
    art = RunArtifacts(tiny_run)
    store = art.load_store()
    models = load_models(art, store)
    module, spec = models[name]
    x = parity_inputs(art, store, models["user_tower"][0], models["ranker"][0], rows=40)[name]
    inputs = []
    for t, a in zip(spec.inputs, to_batch(spec.inputs, x)):
        inputs.append(grpcclient.InferInput(t.name, list(a.shape), np_to_triton_dtype(a.dtype)))
        inputs[-1].set_data_from_numpy(a)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        result = c.infer(name, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in spec.output_names])
    served = [from_batch(t, result.as_numpy(t.name)) for t in spec.outputs]
    for t, pt, ort, tr in zip(spec.outputs, run_torch(module, spec, x),
                              run_onnx(onnx_session(repo / name / "1" / "model.onnx"), spec, x), served):
        np.testing.assert_allclose(ort, pt, atol=1e-5, err_msg=f"{name}.{t.name} onnxruntime")
        np.testing.assert_array_equal(tr, ort, err_msg=f"{name}.{t.name} triton")


def retrieve(server, query, k):
    q = grpcclient.InferInput("query", list(query.shape), "FP32")
    q.set_data_from_numpy(query)
    kk = grpcclient.InferInput("k", [len(query), 1], "INT32")
    kk.set_data_from_numpy(np.full((len(query), 1), k, np.int32))
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        r = c.infer("retrieval", [q, kk])
    return r.as_numpy("item_index"), r.as_numpy("item_id"), r.as_numpy("score")


def test_retrieval_model_is_the_faiss_search(server, art):
    index, _ = load_index(art / "items.faiss")
    query = np.load(art / "item_embeddings.npy")[[3, 17, 40]]
    items, ids, scores = retrieve(server, query, 25)
    want_scores, want_items = search(index, query, 25)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    catalog = json.loads((art / "store" / "items.json").read_text())
    assert [i.decode() for i in ids[0]] == [catalog[i] for i in want_items[0]]
    with pytest.raises(InferenceServerException, match=r"input 'query' has shape \[1, 5\]; send \[batch, ") as err:
        retrieve(server, query[:1, :5], 10)
    assert err.value.status() == INVALID
    with pytest.raises(InferenceServerException, match=r"input 'k' is \[0\]; send one integer in 1\.\.200"):
        retrieve(server, query[:1], 0)


def raw(**changes):
    """Request tensors with some replaced (None drops one)."""
    t = encode_request("u1", 10, TS)
    t.update(changes)
    return {k: v for k, v in t.items() if v is not None}


@pytest.mark.parametrize("tensors, message", [
    (raw(k=np.array([0], np.int32)), r"k=0 must be an integer in 1\.\.200"),
    (raw(k=np.array([-5], np.int32)), r"k=-5 must be an integer in 1\.\.200"),
    (raw(k=np.array([201], np.int32)), r"k=201 must be an integer in 1\.\.200"),
    (raw(k=np.array([10.0], np.float32)), r"data-type is 'FP32', but model 'recommend' expects 'INT32'"),
    (raw(k=np.array([10], np.int64)), r"input 'k' data-type is 'INT64'.*expects 'INT32'"),
    (raw(k=np.array([1, 2], np.int32)), r"unexpected shape for input 'k' for model 'recommend'. Expected \[1\]"),
    (raw(user_id=np.array([b"a", b"b"], object)), r"unexpected shape for input 'user_id'"),
    (raw(k=None), r"missing required input\(s\) \['k'\]"),
    (raw(user_id=None), r"missing required input\(s\) \['user_id'\]"),
    (raw(user_id=np.array([b""], object)), "user_id must be a non-empty string"),
    (raw(user_id=np.array([b"x" * 300], object)), "user_id is 300 characters long; at most 256"),
    (raw(user_id=np.array([b"\xff"], object)), "'user_id' holds bytes that are not UTF-8"),
    (raw(timestamp=np.array([np.nan])), r"'timestamp' is nan; send finite Unix seconds"),
    (raw(timestamp=np.array([np.inf])), r"'timestamp' is inf; send finite Unix seconds"),
    (raw(timestamp=np.array([-np.inf])), r"'timestamp' is -inf"),
    (raw(exclude_items=np.array([b""], object)), "exclude_items holds ''; every entry must be a non-empty string"),
    (raw(exclude_items=np.array([b"i"] * 1001, object)), r"'exclude_items' has 1001 entries; at most 1000"),
    (raw(include_categories=np.array([b"no-such-genre"], object)), r"unknown category 'no-such-genre'; known: "),
])
def test_malformed_requests_get_invalid_argument(client, tensors, message):
    with pytest.raises(InferenceServerException, match=message) as err:
        client.infer(tensors)
    assert err.value.status() == INVALID, err.value.message()


def test_unknown_user_gets_the_cold_start_answer(client):
    answer = client.recommend("never-seen-before", 7, timestamp=TS)
    assert answer.route == "cold_user" and len(answer.item_ids) == 7 == len(set(answer.item_ids))
    assert all(answer.titles) and set(answer.groups) <= {"collaborative", "content", "user", "context", "popularity"}


def test_answer_output_holds_the_named_outputs(server, art):
    """One served answer asked for in both forms at once: `answer` decodes to the named outputs."""
    users = json.loads((art / "store" / "users.json").read_text())
    inputs = []
    for name, array in encode_request(users[3], 7, TS, exclude_categories=["drama"]).items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        inputs[-1].set_data_from_numpy(array)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        result = c.infer("recommend", inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS])
        only = c.infer("recommend", inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in ("scores", "route")])
    whole = decode_response(users[3], {"answer": result.as_numpy("answer")})
    named = decode_response(users[3], {n: result.as_numpy(n) for n in FIELDS})
    assert whole == named and len(whole.item_ids) == 7 and whole.request_id
    assert only.as_numpy("answer") is None and only.as_numpy("item_ids") is None
    assert only.as_numpy("scores").dtype == np.float32 and only.as_numpy("route")[0] == b"known_user"


def test_server_keeps_serving_after_bad_requests(server, client, art):
    user = json.loads((art / "store" / "users.json").read_text())[0]
    answer = client.recommend(user, 10, timestamp=TS)
    assert answer.route == "known_user" and len(answer.item_ids) == 10 and all(answer.titles)
    assert server.is_running() and server.ready_models()[-1] == "user_tower"


def metric(text: str, name: str, **labels) -> float:
    """The sample of ``name`` with exactly ``labels`` (in any order on the page)."""
    found = parse_metrics(text).get((name, frozenset(labels.items())))
    assert found is not None, f"{name}{labels} not on the metrics page"
    return found


def scrape(server) -> str:
    return urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()


def test_metrics_count_routes_errors_items_and_stage_latency(server, client, art):
    time.sleep(FLUSH_S + 0.5)  # recsys_* metrics reach the server once a second (serving/metric_buffer.py)
    before = scrape(server)
    user = json.loads((art / "store" / "users.json").read_text())[0]
    answers = [client.recommend(user, 6, timestamp=TS), client.recommend("metrics-cold-user", 4, timestamp=TS)]
    for k in (0, 500):
        with pytest.raises(InferenceServerException, match="must be an integer"):
            client.recommend(user, k)
    time.sleep(FLUSH_S + 0.5)
    after = scrape(server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("nv_inference_request_success", model="recommend", version="1") == 4  # errors are answers too
    # INFERENCE=in_process: the towers run inside recommend, not as Triton calls
    assert delta("nv_inference_request_success", model="user_tower", version="1") == 0
    assert delta("recsys_requests_total", route="known_user") == 1
    assert delta("recsys_requests_total", route="cold_user") == 1
    assert delta("recsys_request_errors_total", code="invalid_argument") == 2
    assert metric(after, "recsys_request_errors_total", code="internal") == 0
    reasons = [r for a in answers for r in a.reasons]
    for reason in ("ranked", "boosted", "fresh", "backfill:popularity", "backfill:content"):
        assert delta("recsys_items_total", reason=reason) == reasons.count(reason), reason
    assert delta("recsys_returned_items_count") == 2 and delta("recsys_returned_items_sum") == 10
    for stage in ("user_tower", "retrieval", "features", "ranker", "rules", "total"):
        assert delta("recsys_stage_seconds_count", stage=stage) == 2, stage
        assert delta("recsys_stage_seconds_sum", stage=stage) > 0, stage
    assert delta("recsys_stage_seconds_bucket", stage="total", le="+Inf") == 2


def test_cli_prints_titles_and_rejects_bad_k(server, art, capsys):
    user = json.loads((art / "store" / "users.json").read_text())[0]
    assert cli.main(["--user", user, "--k", "3", "--url", server.grpc_url, "--timestamp", str(TS)]) == 0
    out = capsys.readouterr().out
    assert f"user {user} (known_user): 3 items" in out and len(out.strip().splitlines()) == 5
    assert cli.main(["--user", user, "--k", "0", "--url", server.grpc_url]) == 2
    assert "k=0 must be an integer in 1..200" in capsys.readouterr().err
