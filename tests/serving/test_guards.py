"""The pieces that protect the service, without a server: checksums, input checks, security flags,
optional model loading, client retries, the supervisor's health endpoint."""

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from inference.input_checks import BOUNDS_FILE, InputChecker, write_input_bounds
from inference.integrity import MANIFEST, ArtifactError, verify_files, write_manifest
from serving.client import RecommendClient, retryable
from serving.health import HealthServer, metric_sum, parse_metrics, supervisor_metrics
from serving.optional_models import load_optional
from serving.security import ADMIN_HEADER, SecurityOptions
from serving.supervisor import Supervisor, crash_evidence
from serving.triton_server import TritonServer

ROOT = Path(__file__).resolve().parents[2]

REBUILD = r"python -m export --run-dir .*/run"


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "repo" / "ranker" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "ranker" / "1" / "model.onnx").write_bytes(b"onnx" * 100)
    (tmp_path / "repo" / "ranker" / "1" / "model.py").write_text("# template\n")
    (tmp_path / "repo" / "recommend" / "1" / "artifacts").mkdir(parents=True)
    (tmp_path / "repo" / "recommend" / "1" / "artifacts" / "ease.npy").write_bytes(b"\x00" * 64)
    write_manifest(tmp_path / "repo", tmp_path / "run", exclude=["ranker/1/model.py"])
    return tmp_path / "repo"


def test_manifest_lists_generated_files_with_their_run(repo, tmp_path):
    manifest = json.loads((repo / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["ranker/1/model.onnx", "recommend/1/artifacts/ease.npy"]
    assert manifest["files"]["ranker/1/model.onnx"]["bytes"] == 400
    assert manifest["run_dir"] == str((tmp_path / "run").resolve())
    assert verify_files(repo, ["ranker/", "recommend/"]) == ["ranker/1/model.onnx", "recommend/1/artifacts/ease.npy"]


def test_missing_file_names_it_and_the_rebuild_command(repo):
    (repo / "recommend" / "1" / "artifacts" / "ease.npy").unlink()
    with pytest.raises(ArtifactError, match=rf"ease.npy is missing; rebuild it with `{REBUILD}`"):
        verify_files(repo, ["recommend/"])
    verify_files(repo, ["ranker/"])  # other models are unaffected


def test_truncated_and_overwritten_files_are_damaged(repo):
    onnx = repo / "ranker" / "1" / "model.onnx"
    onnx.write_bytes(b"onnx" * 50)
    with pytest.raises(ArtifactError, match=rf"model.onnx is damaged: 200 bytes, the export wrote 400.*{REBUILD}"):
        verify_files(repo, ["ranker/"])
    onnx.write_bytes(b"xnno" * 100)
    with pytest.raises(ArtifactError, match="model.onnx is damaged: its sha256 differs"):
        verify_files(repo, ["ranker/"])


def test_missing_or_damaged_manifest_and_unknown_prefix(repo):
    with pytest.raises(ArtifactError, match="lists no file under 'ranker_student/'"):
        verify_files(repo, ["ranker_student/"])
    (repo / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"checksums.json is damaged \(JSONDecodeError"):
        verify_files(repo, ["ranker/"])
    (repo / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="checksums.json is missing.*python -m export --run-dir <run>"):
        verify_files(repo, ["ranker/"])


INPUTS = [("user_id", np.int64), ("history", np.int64), ("hour", np.int64), ("recency", np.float32)]


@pytest.fixture
def checker(tmp_path):
    write_input_bounds(tmp_path, INPUTS, {"user_id": 301, "history": 401, "hour": 24, "unused": 5})
    return InputChecker.load(tmp_path, INPUTS)


def good(**change):
    arrays = {"user_id": np.array([3, 300]), "history": np.array([[0, 5, 400], [1, 2, 3]]), "hour": np.array([0, 23]),
              "recency": np.array([0.5, -1.0], np.float32)}
    return {**arrays, **change}


def test_input_bounds_file_holds_integer_inputs_only(tmp_path, checker):
    assert json.loads((tmp_path / BOUNDS_FILE).read_text()) == {"vocabulary": {"user_id": 301, "history": 401,
                                                                               "hour": 24}}
    assert checker.problem(good()) is None


@pytest.mark.parametrize("change, reason, message", [
    ({"user_id": np.array([3, 1_000_000_000])}, "id_out_of_range",
     r"input 'user_id' holds 1000000000 at index \[1\]; ids must lie in 0..300"),
    ({"user_id": np.array([-5, 3])}, "id_out_of_range", r"input 'user_id' holds -5 at index \[0\]"),
    ({"history": np.array([[0, 5, 401], [1, 2, 3]])}, "id_out_of_range", r"'history' holds 401 at index \[0, 2\]"),
    ({"recency": np.array([0.5, np.nan], np.float32)}, "non_finite", r"input 'recency' holds nan at index \[1\]"),
    ({"recency": np.array([np.inf, 0], np.float32)}, "non_finite", r"'recency' holds inf at index \[0\]; send finite"),
])
def test_each_bad_input_is_named(checker, change, reason, message):
    got_reason, got_message = checker.problem(good(**change))
    assert got_reason == reason
    assert __import__("re").search(message, got_message), got_message


def test_missing_input_and_missing_bounds(tmp_path, checker):
    arrays = good()
    del arrays["hour"]
    assert checker.problem(arrays) == ("missing_input", "input 'hour' is missing; send every input of the "
                                                        "model's config")
    with pytest.raises(KeyError, match="integer input 'hour' has no vocabulary size"):
        write_input_bounds(tmp_path, INPUTS, {"user_id": 1, "history": 1})
    with pytest.raises(ValueError, match=r"no vocabulary size for integer inputs \['hour'\]"):
        InputChecker(INPUTS, {"user_id": 1, "history": 1})
    with pytest.raises(FileNotFoundError, match=f"{BOUNDS_FILE} is missing; rebuild"):
        InputChecker.load(tmp_path / "nowhere", INPUTS)


def test_secure_defaults_restrict_control_apis_and_turn_http_off(tmp_path):
    options = SecurityOptions(admin_token="s3cret")
    flags = options.server_flags()
    assert "--allow-http=false" in flags
    assert f"--grpc-restricted-protocol=shared-memory,model-repository,logging,trace:{ADMIN_HEADER}=s3cret" in flags
    assert not any(f.startswith("--http-restricted-api") or "ssl" in f for f in flags)
    assert options.admin_headers() == {f"triton-grpc-protocol-{ADMIN_HEADER}": "s3cret"} and options.client_kwargs() == {}
    assert SecurityOptions().token != SecurityOptions().token  # a random one per server
    server = TritonServer(tmp_path)
    assert server.http_url is None and not any(a.startswith("--http-port") for a in server.command())
    with_http = SecurityOptions(allow_http=True, admin_token="t").server_flags()
    assert f"--http-restricted-api=shared-memory,model-repository,logging,trace:{ADMIN_HEADER}=t" in with_http


def test_tls_flags_are_passed_through(tmp_path):
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    options = SecurityOptions(tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem"),
                              tls_root_cert=str(tmp_path / "ca.pem"), tls_mutual=True)
    flags = options.server_flags()
    assert {"--grpc-use-ssl=true", f"--grpc-server-cert={tmp_path}/cert.pem", f"--grpc-server-key={tmp_path}/key.pem",
            f"--grpc-root-cert={tmp_path}/ca.pem", "--grpc-use-ssl-mutual=true"} <= set(flags)
    assert options.client_kwargs()["ssl"] is True


@pytest.mark.parametrize("kwargs, error, message", [
    ({"restricted": ("shm",)}, ValueError, r"unknown restricted API\(s\) \['shm'\]; Triton knows: health"),
    ({"admin_token": "a:b"}, ValueError, "admin token 'a:b' is empty or holds one of"),
    ({"admin_token": ""}, ValueError, "admin token '' is empty"),
    ({"tls_cert": "c.pem"}, ValueError, "TLS needs both a certificate and a key"),
    ({"tls_mutual": True}, ValueError, "tls_mutual needs tls_cert, tls_key and tls_root_cert"),
    ({"tls_cert": "/nope/c.pem", "tls_key": "/nope/k.pem"}, FileNotFoundError, "TLS file /nope/c.pem does not exist"),
])
def test_bad_security_options_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        SecurityOptions(**kwargs)


def test_optional_models_are_skipped_required_ones_raise():
    def build(name):
        if name.endswith("_int8"):
            raise FileNotFoundError(f"{name}/1/model.onnx is missing")
        return name.upper()

    loaded, skipped = load_optional(["ranker", "ranker_int8"], ["ranker"], build)
    assert loaded == {"ranker": "RANKER"}
    assert skipped == {"ranker_int8": "FileNotFoundError: ranker_int8/1/model.onnx is missing"}
    with pytest.raises(FileNotFoundError, match="ranker_int8/1/model.onnx"):
        load_optional(["ranker", "ranker_int8"], ["ranker_int8"], build)


def test_client_retries_only_what_healing_fixes():
    assert retryable(InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE"))
    assert retryable(InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"))
    assert retryable(InferenceServerException("Stub process 'recommend_0_0' is not healthy.",
                                              status="StatusCode.INTERNAL"))
    assert not retryable(InferenceServerException("input 'k' ...", status="StatusCode.INVALID_ARGUMENT"))
    assert not retryable(InferenceServerException("internal error: KeyError", status="StatusCode.INTERNAL"))
    # a model unloading (a server stopping) or loading: transient (an on-call probe saw 5.6 s of these
    # on a restart, not retried); an unknown model name is not
    assert retryable(InferenceServerException("Request for unknown model: 'recommend' has no available versions",
                                              status="StatusCode.NOT_FOUND"))
    assert not retryable(InferenceServerException("Request for unknown model: 'recomend' is not found",
                                                  status="StatusCode.NOT_FOUND"))
    with pytest.raises(ValueError, match="retries=-1 and backoff=0.1 must be >= 0"):
        RecommendClient("127.0.0.1:1", retries=-1, backoff=0.1)


def test_client_gives_up_after_its_retries_on_a_dead_port():
    from serving.triton_server import free_ports

    with RecommendClient(f"127.0.0.1:{free_ports(1)[0]}", timeout=1.0, retries=2, backoff=0.01) as client:
        with pytest.raises(InferenceServerException):
            client.recommend("u", 3)
        assert client.retried == 2


def test_client_falls_back_to_the_named_outputs_only_on_tritons_own_message(monkeypatch):
    """A model error that quotes the request's text (a ranker name, say) must not switch the client to
    the named outputs; Triton core's "unexpected inference output 'answer' ..." does, once."""
    from serving.protocol import ANSWER, FIELDS

    sent = []

    def infer(model, inputs, outputs=None, client_timeout=None):
        sent.append([o.name() for o in outputs])
        raise InferenceServerException(reply.pop(0), status="StatusCode.INVALID_ARGUMENT")

    with RecommendClient("127.0.0.1:1", retries=0) as client:
        monkeypatch.setattr(client._client, "infer", infer)
        reply = [f"ranker=\"unexpected inference output '{ANSWER}'\" is not served; known: ranker"]
        with pytest.raises(InferenceServerException, match="is not served"):
            client.recommend("u", 3)
        assert sent == [[ANSWER]] and [o.name() for o in client._outputs] == [ANSWER]  # no second call, no switch
        assert sum(client.rejections.values()) == 1
        reply = [f"unexpected inference output '{ANSWER}' for model 'recommend'", "input 'k' ..."]
        with pytest.raises(InferenceServerException, match="input 'k'"):
            client.recommend("u", 3)
        assert sent[1:] == [[ANSWER], list(FIELDS)] and [o.name() for o in client._outputs] == list(FIELDS)
        assert sum(client.rejections.values()) == 2  # the probe is not a rejection; the real error is


def test_catalog_client_asks_for_the_status_alone_from_a_server_without_details(monkeypatch):
    """A server whose catalog model predates the ``detail`` output: Triton's own "unexpected inference
    output 'detail'" switches the client to the status alone (details ""), once; any other error stands."""
    import numpy as np

    sent = []

    class Result:
        def as_numpy(self, name):
            return np.array([b"ok"], dtype=object) if name == "status" else None

    def infer(model, inputs, outputs=None, client_timeout=None):
        sent.append([o.name() for o in outputs])
        if reply:
            raise InferenceServerException(reply.pop(0), status="StatusCode.INVALID_ARGUMENT")
        return Result()

    with RecommendClient("127.0.0.1:1", retries=0) as client:
        monkeypatch.setattr(client._client, "infer", infer)
        reply = ["catalog: 2 records in one request ..."]
        with pytest.raises(InferenceServerException, match="records in one request"):
            client.block(["i1"])
        assert sum(client.rejections.values()) == 1  # a real rejection counts
        reply = ["unexpected inference output 'detail' for model 'catalog'"]
        assert client.block(["i1"]) == ["ok"] and client.last_details == [""]
        assert sum(client.rejections.values()) == 1  # the probe does not
        assert client.block(["i2"]) == ["ok"]
        assert sent == [["status", "detail"], ["status", "detail"], ["status"], ["status"]]


def test_client_backoff_doubles_up_to_its_cap(monkeypatch):
    from serving import client as client_module
    from serving.triton_server import free_ports

    slept = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    with RecommendClient(f"127.0.0.1:{free_ports(1)[0]}", timeout=1.0, retries=5, backoff=0.25,
                         max_backoff=1.0) as client:
        with pytest.raises(InferenceServerException):
            client.recommend("u", 3)
    base = [0.25, 0.5, 1.0, 1.0, 1.0]  # then up to 50% jitter on top
    assert len(slept) == 5 and all(b <= s <= 1.5 * b for s, b in zip(slept, base)), slept
    with pytest.raises(ValueError, match="max_backoff=0.1 >= backoff"):
        RecommendClient("127.0.0.1:1", backoff=0.25, max_backoff=0.1)


def test_health_endpoint_serves_readiness_and_counters(tmp_path):
    supervisor = Supervisor(TritonServer(tmp_path), interval=1.0, timeout=1.0)
    supervisor.stats.crashes["signal 11"] += 1
    health = HealthServer(supervisor).start()
    try:
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(health.url + "/ready", timeout=5)
        supervisor.ready = True
        assert urllib.request.urlopen(health.url + "/ready", timeout=5).status == 200
        text = urllib.request.urlopen(health.url + "/metrics", timeout=5).read().decode()
    finally:
        health.stop()
    metrics = parse_metrics(text)
    assert metric_sum(metrics, "recsys_supervisor_crashes_total", why="signal 11") == 1
    assert metric_sum(metrics, "recsys_supervisor_ready") == 1
    assert "--model-control-mode=explicit" in supervisor.server.command()
    assert {"--load-model=*", "--exit-on-error=false", "--exit-timeout-secs=5",
            "--disable-auto-complete-config"} <= set(supervisor.server.command())
    with pytest.raises(ValueError, match="interval=0 and timeout=1 must be > 0"):
        Supervisor(TritonServer(tmp_path), interval=0, timeout=1)


class ExitedServer:
    """What ``Supervisor.restart`` touches of a TritonServer: a process that has exited (``exit_code``),
    its log, and starts that fail ``fail_starts`` times before one succeeds."""

    def __init__(self, log_path, exit_code: int, fail_starts: int):
        self.log_path, self.exit_code, self.fail_starts, self.starts = log_path, exit_code, fail_starts, 0
        self.model_control_mode, self.extra_args, self.pid = "none", [], 4242
        self._process = type("P", (), {"poll": lambda _: self.exit_code})()
        log_path.write_text("Signal (11) received.\n")

    def start(self):
        self.starts += 1
        self.exit_code = None  # running
        return self

    def wait_ready(self, timeout):
        if self.starts <= self.fail_starts:
            raise RuntimeError("tritonserver exited during startup")

    def ready_models(self):
        return ["recommend"]

    def stop(self, timeout=None):
        if self.exit_code is None:
            self.exit_code = -15  # SIGTERM, sent by the supervisor
        return self.exit_code

    def log_tail(self, n):
        return self.log_path.read_text() if self.log_path.exists() else ""


def test_a_failed_restart_is_counted_apart_from_crashes_and_no_crash_log_is_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr("serving.supervisor.time.sleep", lambda s: None)
    server = ExitedServer(tmp_path / "tritonserver.log", exit_code=-11, fail_starts=3)
    sup = Supervisor(server)
    sup.restart()  # crashed on its own, then three failed starts
    assert sup.stats.crashes == {"signal 11": 1} and sup.stats.restart_failures == 1 and sup.stats.restarts == 0
    assert [e.kind for e in sup.events].count("restart_failed") == 3
    server.log_path.write_text("the failed starts' log\n")
    sup.restart()  # the next probe: the server down now is the one the supervisor stopped, not a crash
    assert sup.stats.crashes == {"signal 11": 1} and sup.stats.restarts == 1 and sup.stats.restart_failures == 1
    server.exit_code = -9  # a real crash of the restarted server
    server.log_path.write_text("Signal (9) received.\n")
    sup.restart()
    assert sup.stats.crashes == {"signal 11": 1, "signal 9": 1} and sup.stats.restarts == 2
    kept = [tmp_path / f"tritonserver.log.crash-{n}" for n in (1, 2, 3)]
    assert [k.read_text() for k in kept] == ["Signal (11) received.\n", "the failed starts' log\n",
                                              "Signal (9) received.\n"]
    text = supervisor_metrics(sup)
    assert "recsys_supervisor_restart_failures_total 1" in text and "recsys_supervisor_restarts_total 2" in text
    assert sup.stats.last_start_s > 0 and f"recsys_supervisor_last_start_seconds {sup.stats.last_start_s}" in text


def test_any_failed_start_counts_as_an_attempt_and_kept_logs_continue_earlier_ones(tmp_path, monkeypatch):
    monkeypatch.setattr("serving.supervisor.time.sleep", lambda s: None)
    server = ExitedServer(tmp_path / "tritonserver.log", exit_code=-11, fail_starts=0)
    (tmp_path / "tritonserver.log.crash-4").write_text("an earlier recsys-serve's crash\n")
    calls = {"n": 0}

    def dies_between_ready_and_index():  # the server exits right after READY: the client call fails
        calls["n"] += 1
        if calls["n"] <= 3:
            server.stop()
            raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        return ["recommend"]

    server.ready_models = dies_between_ready_and_index
    sup = Supervisor(server)
    sup.restart()
    assert [e.kind for e in sup.events].count("restart_failed") == 3 and sup.stats.restart_failures == 1
    sup.restart()  # the server down now is the one the supervisor stopped: no second crash
    assert sup.stats.crashes == {"signal 11": 1} and sup.stats.restarts == 1
    assert (tmp_path / "tritonserver.log.crash-4").read_text() == "an earlier recsys-serve's crash\n"
    assert sorted(p.name for p in tmp_path.glob("tritonserver.log.crash-*")) == [
        "tritonserver.log.crash-4", "tritonserver.log.crash-5", "tritonserver.log.crash-6"]


def test_a_log_that_cannot_be_kept_does_not_stop_the_restart(tmp_path, monkeypatch):
    server = ExitedServer(tmp_path / "tritonserver.log", exit_code=-11, fail_starts=0)
    sup = Supervisor(server)
    server.log_path.unlink()  # e.g. /tmp cleaned under a long-running server
    sup.restart()
    assert sup.stats.restarts == 1 and any(e.kind == "log_not_kept" for e in sup.events)


def test_live_says_503_once_the_supervisor_stops_watching(tmp_path):
    sup = Supervisor(TritonServer(tmp_path))
    health = HealthServer(sup).start()
    stop = threading.Event()
    try:
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(health.url + "/live", timeout=5)  # not started
        sup._thread = threading.Thread(target=stop.wait, daemon=True)
        sup._thread.start()
        assert urllib.request.urlopen(health.url + "/live", timeout=5).status == 200
        stop.set()
        sup._thread.join(5)
        with pytest.raises(urllib.error.HTTPError, match="503") as err:
            urllib.request.urlopen(health.url + "/live", timeout=5)
        assert err.value.read() == b"supervisor not watching\n"
    finally:
        stop.set()
        health.stop()


def test_crash_evidence_keeps_error_and_signal_lines():
    log = "I1120 loading\nSignal (11) received.\nE1120 12:00 stub.cc] Stub process is not healthy.\nI1120 ok\n"
    assert crash_evidence(log) == "Signal (11) received.\nE1120 12:00 stub.cc] Stub process is not healthy."


@pytest.mark.parametrize("message, kind", [
    ("inference input 'k' data-type is 'FP32', but model 'recommend' expects 'INT32'", "core:datatype"),
    ("unexpected inference input 'nope' for model 'recommend'", "core:unknown_input"),
    ("unexpected shape for input 'k' for model 'recommend'. Expected [1], got [2]", "core:shape"),
    ("expected 2 inputs but got 1 inputs for model 'recommend'", "core:missing_input"),
    ("input 'k' is 0; k must be an integer in 1..200", "model"),
])
def test_rejections_are_told_apart(message, kind):
    from serving.client import rejection_kind

    assert rejection_kind(InferenceServerException(message, status="StatusCode.INVALID_ARGUMENT")) == kind


def test_log_size_bound_from_the_environment_the_parameter_or_the_default(monkeypatch, capsys):
    from events.log import DEFAULT_TOTAL_BYTES as DEFAULT_MAX_BYTES
    from serving.event_log import MAX_BYTES_ENV, max_log_bytes
    from serving.serve import main as serve_main

    monkeypatch.delenv(MAX_BYTES_ENV, raising=False)
    assert max_log_bytes({}) == DEFAULT_MAX_BYTES == 1 << 30
    assert max_log_bytes({"LOG_MAX_BYTES": "2147483648"}) == 2 << 30
    monkeypatch.setenv(MAX_BYTES_ENV, str(4 << 30))  # recsys-serve --log-max-gib 4: wins over the parameter
    assert max_log_bytes({"LOG_MAX_BYTES": "2147483648"}) == 4 << 30
    for bad, message in (("lots", "expected bytes"), ("1000", "at least 64 MiB")):
        monkeypatch.setenv(MAX_BYTES_ENV, bad)
        with pytest.raises(ValueError, match=message):
            max_log_bytes({})
    monkeypatch.delenv(MAX_BYTES_ENV)
    assert serve_main(["--log-max-gib", "0.01"]) == 2  # refused before anything starts
    assert "--log-max-gib 0.01: at least 0.0625" in capsys.readouterr().err


def test_a_repository_exported_by_other_code_is_refused_unless_allowed(tmp_path, capsys):
    """recsys-serve compares each exported 1/model.py with this installation's: a stale one would run its
    old code against this version's library (metrics without their labels, log bounds ignored)."""
    from serving.serve import main as serve_main
    from serving.serve import stale_models

    repo = tmp_path / "repo"
    for name, source in (("recommend", "recommend"), ("events", "events"), ("ranker_student_int8", "ranker")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(
            (ROOT / "triton_repo" / source / "1" / "model.py").read_text())
    assert stale_models(repo) == []  # a generated ranker runs the ranker's committed model.py
    (repo / "events" / "1" / "model.py").write_text("# an older events model\n")
    assert stale_models(repo) == ["events"]
    (repo / "recommend" / "2").mkdir()  # Triton would serve the newest version, the supervisor probes version 1
    (repo / "recommend" / "2" / "model.py").write_text((repo / "recommend" / "1" / "model.py").read_text())
    assert stale_models(repo) == ["events", "recommend (version folder 2)"]
    assert serve_main(["--model-repository", str(repo), "--grpc-port", "0", "--health-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "the model code of events, recommend (version folder 2) differs from this installation's" in err
    assert "--allow-stale-code" in err


def test_the_liveness_probe_id_is_the_servers_own(monkeypatch):
    """recsys-serve gives each server a random probe id (inherited by the stubs): a client sending the
    plain reserved id gets an ordinary, recorded answer, and events stored under it do not change what
    the probe tests."""
    from serving.protocol import PROBE_ENV, PROBE_USER, probe_user
    from serving.supervisor import probe_inputs

    monkeypatch.delenv(PROBE_ENV, raising=False)
    assert probe_user() == PROBE_USER
    monkeypatch.setenv(PROBE_ENV, f"{PROBE_USER}-0123abcd")
    user = next(i for i in probe_inputs() if i.name() == "user_id")
    assert probe_user() == f"{PROBE_USER}-0123abcd" and f"{PROBE_USER}-0123abcd".encode() in user._raw_content


def test_a_server_address_outside_the_port_range_is_refused_not_wrapped():
    """gRPC took 127.0.0.1:99999 as port 34463 (modulo 65536): a typo reached another server."""
    from serving.client import check_address

    for bad in ("127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1", ":8001", "", "host:80a"):
        with pytest.raises(ValueError, match="expected host:port with a port in 1..65535"):
            RecommendClient(bad)
    assert check_address("[::1]:8001") == "[::1]:8001" and check_address("localhost:65535") == "localhost:65535"


@pytest.mark.parametrize("args, message", [
    (["--grpc-port", "99999"], "--grpc-port: 99999: a port is 0..65535"),  # Triton served it on 99999 - 65536
    (["--health-port", "-1"], "--health-port: -1: a port is 0..65535"),
    (["--metrics-port", "eighty"], "--metrics-port: 'eighty': give a port number"),
    (["--probe-interval", "-1"], "--probe-interval: '-1': give seconds, a number > 0"),  # was a traceback
    (["--probe-timeout", "0"], "--probe-timeout: '0': give seconds, a number > 0"),
    (["--drain-timeout", "nan"], "--drain-timeout: 'nan': give seconds, a number >= 0"),
])
def test_serve_refuses_ports_and_times_out_of_range_before_starting(args, message, capsys):
    """Found by a probe of the CLIs: both were accepted (the port printed as given, served on another)."""
    from serving.serve import main as serve_main

    with pytest.raises(SystemExit) as exit_:
        serve_main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_port_another_server_holds_is_refused_before_launch_not_shared(tmp_path):
    """Found by a newcomer's walk-through: a second recsys-serve on a port a first one held started,
    since gRPC binds with SO_REUSEPORT, and its readiness poll reached the first server (a traceback
    about the other's admin token). A listener there, as gRPC's, now stops the launch with the port named."""
    import socket

    (tmp_path / "m").mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = TritonServer(tmp_path, grpc_port=port, log_path=tmp_path / "log")
        with pytest.raises(RuntimeError, match=rf"port\(s\) in use: gRPC 127.0.0.1:{port} .*0 picks a free one"):
            server.start()
        assert not server.is_running() and server.stop() is None
    TritonServer(tmp_path, grpc_port=port, log_path=tmp_path / "log").check_ports()  # free again: no error
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:  # a restart: connections in TIME_WAIT
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
        client.close()
    TritonServer(tmp_path, grpc_port=port, log_path=tmp_path / "log").check_ports()  # no listener: free


def test_serve_refuses_a_folder_without_models_and_names_the_event_log(tmp_path, capsys, monkeypatch):
    """An empty folder was launched and reported as 'recommend failed to load', quoting a CUDA warning."""
    from serving.event_log import ENV, served_event_log_dir
    from serving.serve import main as serve_main

    (tmp_path / "empty").mkdir()
    assert serve_main(["--model-repository", str(tmp_path / "empty"), "--grpc-port", "0", "--health-port", "0"]) == 2
    assert "holds no model (no <model>/config.pbtxt): not an exported model repository" in capsys.readouterr().err
    repo = tmp_path / "repo"
    (repo / "events").mkdir(parents=True)
    (repo / "events" / "config.pbtxt").write_text('name: "events"\n')
    assert serve_main(["--model-repository", str(repo), "--grpc-port", "0", "--health-port", "0"]) == 2
    assert "has no recommend model (recommend/config.pbtxt), which the supervisor probes" in capsys.readouterr().err
    # the banner's event log: the environment (--event-log), else recommend's EVENT_LOG, next to the repository
    monkeypatch.delenv(ENV, raising=False)
    (repo / "recommend").mkdir()
    (repo / "recommend" / "config.pbtxt").write_text('parameters [\n  { key: "EVENT_LOG" value: { string_value: "logs/x" } }\n]\n')
    assert served_event_log_dir(repo) == tmp_path / "logs" / "x"
    (repo / "recommend" / "config.pbtxt").write_text('name: "recommend"\n')
    assert served_event_log_dir(repo) == tmp_path / "event_log"
    (repo / "recommend" / "config.pbtxt").write_text('# { key: "EVENT_LOG" value: { string_value: "old" } }\n'
                                                     'parameters { key: "EVENT_LOG" value { string_value: "new" } }\n')
    assert served_event_log_dir(repo) == tmp_path / "new"  # the comment skipped; `value {` without a colon
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    assert served_event_log_dir(repo) == tmp_path / "elsewhere"


def test_a_health_server_never_started_stops_at_once():
    """recsys-serve binds the health port before Triton starts; a failed start then stops it unstarted
    (``shutdown`` would wait forever for a loop that never ran)."""
    import types

    health = HealthServer(types.SimpleNamespace(ready=False), 0)
    health.stop()


def test_stop_grace_keeps_serving_after_readiness_off(monkeypatch):
    """recsys-serve --stop-grace S: /ready answers 503 for S seconds before the drain and the stop, the
    time a load balancer following /ready needs (a restart in place cost ~13 s of failed requests)."""
    import types

    seen = []
    server = types.SimpleNamespace(extra_args=[], model_control_mode="none", is_running=lambda: True,
                                   stop=lambda timeout: seen.append(("stopped", sup.ready)) or 0)
    sup = Supervisor(server, stop_grace=0.3)
    monkeypatch.setattr(sup, "drain", lambda timeout: seen.append(("drain", sup.ready)) or True)
    sup.ready = True
    started = time.monotonic()
    assert sup.stop() == 0
    assert time.monotonic() - started >= 0.3 and seen == [("drain", False), ("stopped", False)]
    with pytest.raises(ValueError, match="stop_grace=-1 >= 0"):
        Supervisor(types.SimpleNamespace(extra_args=[]), stop_grace=-1)
