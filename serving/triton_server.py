"""Launch a real Triton Inference Server as a child process.

On a CPU machine without Docker the server is the `tritonserver` (2.51.0, python backend only)
shipped in the nvidia-pytriton wheel (the only pip route to a server; it has no native onnxruntime
backend: docs/serving.md). `TritonServer` builds a private
backend directory of symlinks in a user cache dir (never in site-packages or the repo), runs the
binary bound to 127.0.0.1, polls gRPC readiness and stops it by its own PID.

Learned running it here (2 cores, Python 3.11, no GPU):
  * READY with one python-backend model in 2.5-2.8 s. SIGTERM stop takes about 2.5 s: Triton
    polls once a second until every model has unloaded; stubs exit, /dev/shm regions are freed.
  * The stub embeds Python in isolated mode (PYTHONPATH ignored) and takes its environment from
    the first `python3` on PATH, so the venv's bin goes first. It links `libpython3.11.so.1.0`
    by soname: without the interpreter's LIBDIR first on LD_LIBRARY_PATH the system libpython
    (another patch release) gets loaded. Symlinks to the stub and libtriton_python.so are fine:
    their $ORIGIN RPATH still finds the wheel's nvidia_pytriton.libs (checked in /proc/PID/maps).
  * With the default `--exit-on-error=true` a model that fails to load makes the server exit 1
    at startup, so `wait_ready` checks the process on every poll and raises at once with the
    log's `E<mmdd>` lines (model name, Python traceback); the log tail is mostly wide tables.
  * A tensor of the wrong datatype is rejected by the server core before the model runs; the
    server keeps serving. NVML/DCGM/CUDA-driver warnings in the log are expected without a GPU.
  * The server gets its own session, so a terminal's Ctrl-C reaches only our process, which
    stops it cleanly. But SIGTERM before the models have loaded kills the server at once (no
    handler yet) and orphans the python stubs, which ignore SIGTERM and keep their /dev/shm
    region; `stop` therefore SIGKILLs what is left in the server's process group and unlinks
    those regions.
  * `--disable-auto-complete-config`: our exported configs are complete, and with auto-complete
    on the python backend starts one extra stub per model (importing its model.py) before the
    instances: 6 s of every start and reload of `recommend`. Off, and with the served models
    importing no torch (tests/serving/test_served_imports.py), a supervised server is READY in
    2.1 s instead of 13.3 s and a reload of `recommend` takes 1.8 s instead of 11.5 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Sequence

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.security import SecurityOptions

_HOST = "127.0.0.1"
_CONTROL_MODES = ("none", "poll", "explicit")
_INSTALL_HINT = "pip install nvidia-pytriton==0.7.0 (a dependency in pyproject.toml: reinstall the package; docs/serving.md)"


def wheel_tritonserver_root() -> Path:
    """The `tritonserver` folder of the installed pytriton package (FileNotFoundError if none)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package 'pytriton' is not installed; {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def build_backend_directory(tritonserver_root: Path, cache_dir: Path, python_version: str) -> Path:
    """Create (idempotently) a backend directory of symlinks for the python backend.

    Args:
        tritonserver_root: the wheel's `pytriton/tritonserver` directory.
        cache_dir: where to put the backend directory; a subfolder keyed by the wheel location
            and Python version is created inside it.
        python_version: "major.minor" of the interpreter the stub must embed.

    Returns:
        The directory to pass as `--backend-directory`.

    Raises:
        FileNotFoundError: when the python backend or the stub for this Python is missing.
    """
    backend = tritonserver_root / "backends" / "python"
    stubs = tritonserver_root / "python_backend_stubs"
    stub = stubs / python_version / "triton_python_backend_stub"
    targets = {"libtriton_python.so": backend / "libtriton_python.so",
               "triton_python_backend_utils.py": backend / "triton_python_backend_utils.py",
               "triton_python_backend_stub": stub}
    for name, target in targets.items():
        if target.exists():
            continue
        if name == "triton_python_backend_stub":
            known = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
            raise FileNotFoundError(
                f"no python backend stub for Python {python_version} at {target}; "
                f"this wheel ships stubs for {', '.join(known) or 'no version'}: use one of "
                f"those Pythons or a nvidia-pytriton release that ships {python_version}")
        raise FileNotFoundError(f"python backend file missing: {target}; {_INSTALL_HINT}")

    key = hashlib.sha1(f"{tritonserver_root.resolve()}|{python_version}".encode()).hexdigest()
    python_dir = cache_dir / key[:12] / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        link = python_dir / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        # Atomic replace, so two servers starting at once never see a half-made directory.
        tmp = python_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return python_dir.parent


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((_HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def gpu_visible() -> bool:
    """Cheap check for an NVIDIA GPU: driver lists one and CUDA_VISIBLE_DEVICES does not hide it."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


class TritonServer:
    """A `tritonserver` child process bound to 127.0.0.1.

    Args:
        model_repository: directory holding the Triton model repository.
        grpc_port, http_port, metrics_port: ports to bind; free ones are chosen when None.
            The attributes grpc_url, http_url (host:port) and metrics_url hold the endpoints.
        model_control_mode: Triton's `--model-control-mode`: none, poll or explicit.
        binary: path or name of a `tritonserver` to run. None picks the stock `tritonserver`
            on PATH when a GPU is visible and one exists, otherwise the nvidia-pytriton wheel's.
        backend_directory: `--backend-directory` for a stock binary (None keeps its default);
            the wheel's binary always gets the private symlink directory.
        cache_dir: where the private backend directory is built (default
            $XDG_CACHE_HOME or ~/.cache, then hybrid_recommender/triton_backends).
        log_path: file receiving the server's stdout and stderr (default: a new temp file).
        extra_args: further command-line flags, e.g. ["--load-model=recommend"].
        security: HTTP, restricted control APIs, TLS (:class:`serving.security.SecurityOptions`);
            None = the secure defaults: gRPC only, shared-memory / model-repository / logging /
            trace behind a random admin token. ``http_url`` is None while HTTP is off.

    Raises:
        FileNotFoundError: when the model repository, the binary or the stub is missing.
        ValueError: for an unknown model_control_mode.
    """

    def __init__(self, model_repository: str | os.PathLike, grpc_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None,
                 model_control_mode: str = "none", binary: str | os.PathLike | None = None,
                 backend_directory: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None, extra_args: Sequence[str] = (),
                 security: SecurityOptions | None = None):
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise FileNotFoundError(
                f"model repository '{model_repository}' does not exist or is not a directory; "
                "export the models first or pass --model-repository pointing at one")
        if model_control_mode not in _CONTROL_MODES:
            raise ValueError(f"unknown model_control_mode '{model_control_mode}'; "
                             f"known: {', '.join(_CONTROL_MODES)}")
        auto = iter(free_ports(3))
        self.grpc_port = grpc_port or next(auto)
        self.http_port = http_port or next(auto)
        self.metrics_port = metrics_port or next(auto)
        self.grpc_url = f"{_HOST}:{self.grpc_port}"  # host:port, as tritonclient wants it
        self.security = security or SecurityOptions()
        self.http_url = f"{_HOST}:{self.http_port}" if self.security.allow_http else None
        self.metrics_url = f"http://{_HOST}:{self.metrics_port}/metrics"
        self.model_control_mode = model_control_mode
        self.extra_args = list(extra_args)
        self.gpu = gpu_visible()
        if cache_dir is None:
            cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            cache_dir = cache_dir / "hybrid_recommender" / "triton_backends"
        self.binary, self.backend_directory = self._resolve_binary(
            binary, backend_directory, Path(cache_dir))
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._process: subprocess.Popen | None = None
        self._stopped = False  # the current process was stopped and its leftovers killed

    def _resolve_binary(self, binary, backend_directory, cache_dir) -> tuple[Path, Path | None]:
        if binary is None and self.gpu and shutil.which("tritonserver"):
            binary = shutil.which("tritonserver")
        if binary is not None:
            found = shutil.which(str(binary))
            if found is None:
                raise FileNotFoundError(
                    f"tritonserver binary '{binary}' not found or not executable; pass binary=None "
                    f"to use the nvidia-pytriton wheel's ({_INSTALL_HINT})")
            return Path(found), Path(backend_directory) if backend_directory else None
        root = wheel_tritonserver_root()
        wheel_binary = root / "bin" / "tritonserver"
        if not wheel_binary.is_file():
            raise FileNotFoundError(
                f"tritonserver binary missing at {wheel_binary}; {_INSTALL_HINT}")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return wheel_binary, build_backend_directory(root, cache_dir, version)

    @property
    def pid(self) -> int | None:
        """PID of the server process, or None before `start()`."""
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The full `tritonserver` command line."""
        cmd = [str(self.binary), f"--model-repository={self.model_repository}",
               f"--model-control-mode={self.model_control_mode}",
               f"--grpc-address={_HOST}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={_HOST}", f"--metrics-port={self.metrics_port}",
               "--log-verbose=0", "--disable-auto-complete-config", *self.security.server_flags()]
        if self.security.allow_http:
            cmd += [f"--http-address={_HOST}", f"--http-port={self.http_port}"]
        if self.backend_directory is not None:
            cmd.append(f"--backend-directory={self.backend_directory}")
        if not self.gpu:
            # No GPU: no pinned host memory, no CUDA pool, no DCGM polling.
            cmd += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
                    "--allow-gpu-metrics=false"]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        """Environment for the server: this venv's bin first on PATH, LIBDIR first on LD path."""
        env = os.environ.copy()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
        # One OpenMP / BLAS thread per python model process unless the caller says otherwise:
        # every stub otherwise spins up a thread per core, and on a small CPU box they fight
        # (bench/README.md: served p50 19.4 -> 8.7 ms on 2 cores).
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        return env

    def start(self) -> "TritonServer":
        """Launch the server process (returns at once; call `wait_ready` next).

        Raises:
            RuntimeError: already running, or one of its ports is taken (:meth:`check_ports`).
        """
        if self.is_running():
            raise RuntimeError(f"tritonserver already running with PID {self.pid}")
        self.check_ports()
        with open(self.log_path, "wb") as log:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the server.
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self.environment(),
                                             start_new_session=True)
            self._stopped = False
        return self

    def check_ports(self) -> None:
        """Raise RuntimeError naming each of this server's ports that something already listens on.

        gRPC binds with SO_REUSEPORT, so a second Triton on a port another Triton holds starts
        "fine" and the kernel splits the connections between the two: the readiness poll then reached
        the other server (found by a newcomer's walk-through: a traceback about the other server's
        admin token, or a server announced ready that was not this one). Only a listener accepts a
        connection, so a port whose old connections linger in TIME_WAIT (as after a restart) is free."""
        ports = [("gRPC", self.grpc_port), ("metrics", self.metrics_port)]
        if self.security.allow_http:
            ports.append(("HTTP", self.http_port))
        taken = []
        for name, port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                if sock.connect_ex((_HOST, port)) == 0:
                    taken.append(f"{name} {_HOST}:{port}")
        if taken:
            raise RuntimeError(f"port(s) in use: {', '.join(taken)} (something listens there); another server "
                               "(tritonserver, recsys-serve) may be running: stop it or choose other ports (0 picks "
                               "a free one)")

    def is_running(self) -> bool:
        """True while the server process exists and has not exited."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """Last `lines` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _diagnostics(self) -> str:
        # Error lines (E<mmdd>) name the failing model; the tail is mostly wide status tables.
        lines = self.log_tail(lines=10_000).splitlines()
        errors = [line[:1000] for line in lines if re.match(r"E\d{4} ", line)
                  and not (not self.gpu and "CudaDriverHelper has not been initialized" in line)]  # no GPU: expected
        return (f"log {self.log_path}; error lines:\n" + "\n".join(errors[-10:])
                + "\nlast lines:\n" + "\n".join(lines[-8:]))

    def wait_ready(self, timeout: float = 60.0) -> "TritonServer":
        """Poll gRPC `is_server_ready` until true.

        Raises:
            RuntimeError: when the server was not started or exits while we wait.
            TimeoutError: when it is not ready within `timeout` seconds.
        """
        if self._process is None:
            raise RuntimeError("wait_ready() called before start()")
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"tritonserver exited with status {code} before becoming ready; "
                        f"{self._diagnostics()}")
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return self
                except InferenceServerException:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"tritonserver not ready after {timeout:.0f} s on {self.grpc_url}; "
                        f"{self._diagnostics()}")
                time.sleep(0.1)

    def ready_models(self) -> list[str]:
        """Names of models the server reports READY."""
        with self.client() as client:
            index = client.get_model_repository_index(
                as_json=True, headers=self.security.admin_headers()).get("models", [])
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    def client(self) -> grpcclient.InferenceServerClient:
        """A gRPC client of this server (TLS when the server uses it); close it after use."""
        return grpcclient.InferenceServerClient(self.grpc_url, **self.security.client_kwargs())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server, wait up to `timeout` s, then SIGKILL whatever is left of it.

        Returns:
            The server's exit status, or None if it was never started.
        """
        if self._process is None:
            return None
        if self._process.poll() is not None and self._stopped:
            return self._process.returncode  # stopped before: its group id may belong to another process now
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_leftovers()
        code = self._process.wait()
        self._stopped = True
        return code

    def _kill_leftovers(self) -> None:
        # A server killed before it installs its SIGTERM handler (i.e. while loading models)
        # leaves python stubs behind, which ignore SIGTERM and hold /dev/shm regions. They share
        # the server's process group (its own session), so the group id finds exactly them.
        pgid = self._process.pid
        leftovers = {}
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                    leftovers[proc] = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited while we looked
        if not leftovers:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._process.wait()
        for proc, argv in leftovers.items():
            for _ in range(100):  # killed orphans are reaped by init within moments
                if not proc.exists():
                    break
                time.sleep(0.02)
            for arg in argv:
                if arg.startswith(b"triton_python_backend_shm_region_"):
                    Path("/dev/shm", arg.decode()).unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
