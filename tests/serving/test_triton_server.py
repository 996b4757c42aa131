"""Start a real tritonserver (nvidia-pytriton wheel) on a tiny python-backend model."""

import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.triton_server import TritonServer, build_backend_directory

pytestmark = pytest.mark.triton

ADD_ONE_CONFIG = """\
name: "add_one"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

ADD_ONE_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", x + 1.0)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def write_model(repo, name, config, model_py):
    """Write `repo/name/config.pbtxt` and `repo/name/1/model.py`."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


def infer(client, x):
    """Send `x` as INPUT0 to add_one and return OUTPUT0."""
    inp = grpcclient.InferInput("INPUT0", list(x.shape), np_to_triton_dtype(x.dtype))
    inp.set_data_from_numpy(x)
    result = client.infer("add_one", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    return result.as_numpy("OUTPUT0")


def group_members(pgid):
    """PIDs in process group `pgid` with their argv."""
    members = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                members[int(proc.name)] = (proc / "cmdline").read_bytes().decode().split("\0")
        except (OSError, UnicodeDecodeError):
            continue
    return members


def pid_alive(pid):
    """True while a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton_repo")
    write_model(repo, "add_one", ADD_ONE_CONFIG, ADD_ONE_MODEL)
    return repo


@pytest.fixture(scope="module")
def server(model_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "tritonserver.log"
    with TritonServer(model_repository, log_path=log) as running:
        yield running


def test_add_one_over_grpc(server):
    assert server.ready_models() == ["add_one"]
    x = np.array([0.0, 1.5, -2.0], dtype=np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        y = infer(client, x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x + 1.0)


def test_wrong_dtype_is_rejected_and_server_keeps_serving(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        wrong_dtype = "data-type is 'INT32', but model 'add_one' expects 'FP32'"
        with pytest.raises(InferenceServerException, match=wrong_dtype) as err:
            infer(client, np.array([1, 2], dtype=np.int32))
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert client.is_server_ready()
        np.testing.assert_array_equal(infer(client, np.array([41.0], dtype=np.float32)), [42.0])


def test_stop_ends_the_process(model_repository, tmp_path):
    server = TritonServer(model_repository, log_path=tmp_path / "server.log")
    started = time.monotonic()
    with server:
        ready_s = time.monotonic() - started
        pid = server.pid
        assert pid_alive(pid)
    assert not pid_alive(pid)
    assert server.stop() == 0  # already stopped: returns the exit status again
    assert ready_s < 20, f"startup took {ready_s:.1f} s"
    assert "add_one" in (tmp_path / "server.log").read_text()


def test_stop_while_loading_leaves_no_stub_or_shm(model_repository, tmp_path):
    # Before its models load, Triton has no SIGTERM handler: it dies at once, orphaning stubs.
    server = TritonServer(model_repository, log_path=tmp_path / "server.log").start()
    try:
        regions, deadline = [], time.monotonic() + 10
        while not regions and time.monotonic() < deadline:  # until the stub has exec'd
            args = [arg for argv in group_members(server.pid).values() for arg in argv]
            regions = [a for a in args if a.startswith("triton_python_backend_shm_region_")]
        assert regions, "no python stub started within 10 s"
    finally:
        server.stop()
    assert group_members(server.pid) == {}
    assert not any(Path("/dev/shm", r).exists() for r in regions)


def test_missing_model_repository_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_repo"
    with pytest.raises(FileNotFoundError, match="model repository .*no_such_repo.* does not exist"):
        TritonServer(missing)


def test_unknown_model_control_mode(tmp_path):
    with pytest.raises(ValueError, match="'sometimes'; known: none, poll, explicit"):
        TritonServer(tmp_path, model_control_mode="sometimes")


def test_missing_binary_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nvidia-pytriton"):
        TritonServer(tmp_path, binary=tmp_path / "tritonserver")


def test_missing_stub_names_available_versions(tmp_path):
    root = tmp_path / "tritonserver"
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").touch()
    (root / "backends" / "python" / "triton_python_backend_utils.py").touch()
    (root / "python_backend_stubs" / "3.11").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="Python 2.7 .* ships stubs for 3.11"):
        build_backend_directory(root, tmp_path / "cache", "2.7")


def test_backend_directory_is_symlinks_outside_the_wheel(tmp_path):
    root = tmp_path / "tritonserver"
    for rel in ["backends/python/libtriton_python.so",
                "backends/python/triton_python_backend_utils.py",
                "python_backend_stubs/3.11/triton_python_backend_stub"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    backends = build_backend_directory(root, tmp_path / "cache", "3.11")
    assert backends == build_backend_directory(root, tmp_path / "cache", "3.11")  # idempotent
    stub = backends / "python" / "triton_python_backend_stub"
    assert stub.is_symlink() and stub.resolve() == (root / rel).resolve()
    assert (tmp_path / "cache") in backends.parents


def test_wait_ready_needs_start_and_times_out(model_repository, tmp_path):
    server = TritonServer(model_repository, log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="before start"):
        server.wait_ready()
    server.start()
    try:
        with pytest.raises(TimeoutError, match="not ready after 0 s"):
            server.wait_ready(timeout=0)
    finally:
        server.stop()
    assert not server.is_running()


def test_server_exiting_at_startup_fails_fast_with_log(tmp_path):
    write_model(tmp_path / "repo", "broken", ADD_ONE_CONFIG.replace("add_one", "broken"),
                "raise ImportError('broken on purpose')\n")
    server = TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="(?s)status 1.*ImportError: broken on purpose"):
        with server:
            pass
    assert time.monotonic() - started < 20
    assert not server.is_running()


OLD_RECOMMEND_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        strings = lambda *v: np.array([s.encode() for s in v], dtype=np.object_)
        out = {"item_ids": strings("i1", "i2"), "scores": np.array([0.5, 0.25], np.float32),
               "reasons": strings("ranked", "boosted"), "groups": strings("content", "context"),
               "titles": strings("Toy Story", ""), "route": strings("known_user"), "ranker": strings("ranker"),
               "request_id": strings("r1")}
        return [pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in out.items()]) for _ in requests]
"""


def test_client_falls_back_to_named_outputs_on_a_server_without_answer(tmp_path):
    """A server from before the `answer` output: the client asks for the named outputs instead."""
    from serving.client import RecommendClient
    from serving.protocol import FIELDS, INPUTS, OUTPUTS

    def dims(d):
        return ", ".join(str(x) for x in d)
    old = "\n".join(['name: "recommend"', 'backend: "python"', "max_batch_size: 0", "input ["] + [
        ",\n".join(f'  {{ name: "{n}" data_type: TYPE_{"STRING" if t == "BYTES" else t} dims: [ {dims(d)} ] '
                   f'optional: {str(opt).lower()} }}' for n, (_, t, d, opt) in INPUTS.items())] + ["]", "output ["] + [
        ",\n".join(f'  {{ name: "{n}" data_type: TYPE_{"STRING" if OUTPUTS[n][1] == "BYTES" else OUTPUTS[n][1]} '
                   f'dims: [ {dims(OUTPUTS[n][2])} ] }}' for n in FIELDS)] + ["]", "instance_group [ { count: 1 kind: KIND_CPU } ]"])
    write_model(tmp_path / "repo", "recommend", old, OLD_RECOMMEND_MODEL)
    with TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log") as running, \
            RecommendClient(running.grpc_url) as client:
        for _ in range(2):
            got = client.recommend("u1", 2)
            assert (got.item_ids, got.scores, got.reasons, got.titles, got.route, got.request_id) == (
                ["i1", "i2"], [0.5, 0.25], ["ranked", "boosted"], ["Toy Story", ""], "known_user", "r1")
        assert [o.name() for o in client._outputs] == list(FIELDS)
        assert not +client.rejections  # the probe is not counted as the caller's rejection
