"""Keep a Triton server answering: liveness by real inference, model reload, server restart, drain.

Triton's own health says nothing about a python model whose stub died or froze: after a SIGKILL
of ``recommend``'s stub the server and the model stay READY while every request fails with
INTERNAL "Stub process ... is not healthy"; a stub frozen for ~2 s (SIGSTOP/SIGCONT) made the
2.51 server SIGSEGV when it resumed. So the :class:`Supervisor`:

1. starts the server with explicit model control (``--model-control-mode=explicit
   --load-model=*``), ``--exit-on-error=false`` (an optional model that fails to load is UNAVAILABLE,
   not a server that refuses to start) and ``--strict-readiness=false``; then it requires the
   ``required`` models (``recommend``) to be READY, or stops with the log's error lines;
2. every ``interval`` s sends a real ``recommend`` request (a cold user, k=1) with a ``timeout``,
   and counts the model's stub processes (with two instances the probe may keep hitting the live
   one while the other is dead);
3. on a failed probe it flips its readiness off, then: server gone -> restart it (the crashed
   log is kept as ``<log>.crash-<n>`` with its exit signal); dead or wedged stub -> reload the model
   through the model-repository API (with the admin token) and probe again; still failing ->
   restart the server;
4. on :meth:`stop` flips readiness off, waits until Triton reports no pending (queued)
   request (``drain_timeout``), then SIGTERMs the server. Triton's own exit wait is cut to
   ``exit_timeout`` (``--exit-timeout-secs``; its default, 30 s, is spent in full when a version
   retired by a forced reload never unloads, which 2.51 does after a stub was killed or frozen):
   the drain has already waited for the requests.

Readiness for a load balancer is :attr:`ready` (served over HTTP by :mod:`serving.health`), not
Triton's ``/v2/health/ready``. Each probe is one cold-user request through the whole pipeline under
the reserved id ``serving.protocol.probe_user()`` (random per server under recsys-serve): ``recommend`` counts it in
``recsys_requests_total{route="probe"}`` and records nothing of it (no impression, not in the
exposure-cap window).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.health import scrape
from serving.protocol import MODEL, encode_request, probe_user
from serving.triton_server import TritonServer

log = logging.getLogger(__name__)
SUPERVISED_FLAGS = ("--model-control-mode=explicit", "--load-model=*", "--exit-on-error=false",
                    "--strict-readiness=false")


@dataclass
class Event:
    """One thing the supervisor saw or did (kept in :attr:`Supervisor.events`)."""

    at: float  # time.monotonic()
    kind: str  # probe_failed | degraded | reloaded | reload_failed | restarted | restart_failed | crashed |
    #            recovered | log_not_kept | heal_failed
    detail: str = ""


@dataclass
class SupervisorStats:
    """Counters the health endpoint exports (``recsys_supervisor_*``)."""

    probes: int = 0
    probe_failures: int = 0
    reloads: int = 0
    restarts: int = 0
    restart_failures: int = 0  # restarts given up after every attempt failed (the next probe tries again)
    crashes: Counter = field(default_factory=Counter)  # by exit status / signal name
    last_outage_s: float = 0.0
    last_start_s: float = 0.0  # the last (re)start: launch to the required models ready


def probe_inputs() -> list[grpcclient.InferInput]:
    """The liveness request: a cold user, k=1 (the whole pipeline runs, nothing user-specific)."""
    inputs = []
    for name, array in encode_request(probe_user(), 1).items():
        inp = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def crash_evidence(log_text: str, lines: int = 6) -> str:
    """The last error/signal lines of a server log (what a crash left behind)."""
    hits = [line[:300] for line in log_text.splitlines()
            if re.match(r"[EF]\d{4} ", line) or re.search(r"Signal \(\d+\)|signal|Segmentation|core dumped|abort",
                                                          line, re.IGNORECASE)]
    return "\n".join(hits[-lines:])


class Supervisor:
    """Runs, watches and heals one :class:`TritonServer`.

    Args:
        server: the server to run; its flags get :data:`SUPERVISED_FLAGS` added.
        required: models that must be READY after (re)start.
        interval: seconds between liveness probes.
        timeout: seconds a probe (or a model reload's wait) may take before it counts as failed.
        startup_timeout: seconds a (re)start may take to become ready.
        drain_timeout: seconds :meth:`stop` waits for in-flight requests.
        model: the model probed and reloaded.
        exit_timeout: seconds Triton may take to unload its models after SIGTERM (then it is killed).
    """

    def __init__(self, server: TritonServer, required: tuple[str, ...] = (MODEL,), interval: float = 1.0,
                 timeout: float = 2.0, startup_timeout: float = 120.0, drain_timeout: float = 10.0,
                 model: str = MODEL, exit_timeout: int = 5, stop_grace: float = 0.0):
        if interval <= 0 or timeout <= 0 or exit_timeout < 1 or not stop_grace >= 0:
            raise ValueError(f"interval={interval} and timeout={timeout} must be > 0 seconds, "
                             f"exit_timeout={exit_timeout} >= 1, stop_grace={stop_grace} >= 0")
        self.stop_grace = float(stop_grace)
        self.server, self.required, self.model = server, tuple(required), model
        self.interval, self.timeout = interval, timeout
        self.startup_timeout, self.drain_timeout, self.exit_timeout = startup_timeout, drain_timeout, int(exit_timeout)
        self.reload_timeout = startup_timeout
        server.model_control_mode = "explicit"
        server.extra_args = [a for a in server.extra_args if not a.startswith("--model-control-mode")]
        server.extra_args += [f for f in SUPERVISED_FLAGS[1:] if f not in server.extra_args]
        server.extra_args = [a for a in server.extra_args if not a.startswith("--exit-timeout-secs")]
        server.extra_args.append(f"--exit-timeout-secs={self.exit_timeout}")
        self.stats, self.events = SupervisorStats(), []
        self.ready = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._instances: int | None = None  # of the probed model, from its config
        self._kept_logs = 0  # <log>.crash-N copies made
        self._gave_up = False  # the last restart failed: the server down now is one this supervisor stopped

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        """Start the server, check the required models, begin probing in a daemon thread.

        Raises:
            RuntimeError: the server exited, or a required model is not READY (with the log's errors).
            TimeoutError: not ready within ``startup_timeout``.
        """
        self._launch()
        self._gave_up = False
        self.ready = self.probe() is None
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    def _launch(self) -> None:
        began = time.monotonic()
        self.server.start()
        try:
            self.server.wait_ready(self.startup_timeout)
            missing = [m for m in self.required if m not in self.server.ready_models()]
        except BaseException:
            self.server.stop()
            raise
        if missing:
            detail = self.server._diagnostics()
            self.server.stop()
            raise RuntimeError(f"required model(s) {missing} failed to load; {detail}")
        self.stats.last_start_s = time.monotonic() - began

    def stop(self) -> int | None:
        """Readiness off, ``stop_grace`` seconds still serving, drain in-flight requests, stop the server;
        returns its exit status."""
        self.ready = False
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.interval + self.timeout + self.startup_timeout)
        self.ready = False  # whatever a probe that was in flight concluded
        if self.stop_grace and self.server.is_running():  # /ready says 503, the server still answers: a load
            time.sleep(self.stop_grace)                   # balancer following /ready moves the traffic first
        drained = self.drain(self.drain_timeout)
        if not drained:
            log.warning("requests still in flight after %.1f s; stopping anyway", self.drain_timeout)
        return self.server.stop(timeout=self.exit_timeout + 5.0)

    def drain(self, timeout: float) -> bool:
        """Wait until Triton reports no pending request (True) or ``timeout`` passes. Requests already
        executing are not in that count: Triton's own ``--exit-timeout-secs`` lets them finish."""
        deadline = time.monotonic() + timeout
        while self.server.is_running() and time.monotonic() < deadline:
            if self.in_flight() <= 0:  # -1: no metrics endpoint answering, nothing to wait for
                return True
            time.sleep(0.05)
        return not self.server.is_running() or self.in_flight() <= 0

    def in_flight(self) -> int:
        """Requests queued in the server (Triton's ``nv_inference_pending_request_count``: it drops a
        request when its execution starts), -1 if unknown."""
        try:
            metrics = scrape(self.server.metrics_url, timeout=1.0)
        except OSError:
            return -1
        return int(sum(v for (name, _), v in metrics.items() if name == "nv_inference_pending_request_count"))

    def __enter__(self) -> "Supervisor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- probing and healing -------------------------------------------------------------------
    def probe(self) -> str | None:
        """One real inference on the model; None when it answered, else why it failed."""
        self.stats.probes += 1
        try:
            with self.server.client() as client:
                client.infer(self.model, probe_inputs(), client_timeout=self.timeout)
            return None
        except InferenceServerException as err:
            return f"{err.status()}: {err.message()}"
        except Exception as err:  # noqa: BLE001 - any failure of the probe means not live
            return f"{type(err).__name__}: {err}"

    def stub_pids(self) -> list[int]:
        """PIDs of the python stubs running the probed model (argv names ``<repo>/<model>/1/model.py``)."""
        pids, marker = [], f"/{self.model}/1/model.py".encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.getpgid(int(proc.name)) == self.server.pid \
                        and marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue  # exited while we looked
        return pids

    def missing_instances(self) -> str | None:
        """Why the model has fewer stub processes than instances (a dead one the probe may not hit), or None."""
        if self._instances is None:
            try:
                with self.server.client() as client:
                    config = client.get_model_config(self.model, headers=self.server.security.admin_headers(),
                                                     as_json=True)["config"]
                self._instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [{}]))
            except Exception:  # noqa: BLE001 - unknown now; the probe decides
                return None
        alive = len(self.stub_pids())
        return None if alive >= self._instances else f"{alive} of {self._instances} {self.model} stubs alive"

    def _event(self, kind: str, detail: str = "") -> None:
        self.events.append(Event(time.monotonic(), kind, detail))
        (log.info if kind in ("reloaded", "restarted", "recovered") else log.warning)("%s %s", kind, detail)

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            failed = self.probe()
            problem = failed or self.missing_instances()
            if problem is None:
                if self._down_since is not None:
                    self.stats.last_outage_s = time.monotonic() - self._down_since
                    self._event("recovered", f"after {self.stats.last_outage_s:.2f} s")
                    self._down_since = None
                self.ready = not self._stopping.is_set()  # a probe that ends after stop() began
                continue
            # A failed probe takes the server out of rotation; a lost instance only degrades it (the
            # others answer) and is healed while it stays ready.
            self.ready = self.ready and failed is None
            if failed:
                self.stats.probe_failures += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._event("probe_failed" if failed else "degraded", problem)
            if self._stopping.is_set():
                return
            try:
                self.heal()
            except Exception as err:  # noqa: BLE001 - the watch goes on: the next probe heals again
                self._event("heal_failed", f"{type(err).__name__}: {err}")

    @property
    def watching(self) -> bool:
        """Whether the probe loop runs (False before start, after stop, or if it died)."""
        return self._thread is not None and self._thread.is_alive()

    def heal(self) -> None:
        """Reload the model if the server still runs, else (or if that fails) restart the server."""
        if self.server.is_running() and self.reload() and self.probe() is None:
            return
        self.restart()

    def reload(self) -> bool:
        """Reload the model through the model-repository API; True when it is READY again."""
        try:
            with self.server.client() as client:
                headers = self.server.security.admin_headers()
                # Loading an unchanged model is a no-op in Triton: a config override (the model's own
                # config plus a reload counter) makes it load new instances and retire the old ones.
                config = client.get_model_config(self.model, headers=headers, as_json=True)["config"]
                config.setdefault("parameters", {})["SUPERVISOR_RELOAD"] = {"string_value": str(self.stats.reloads + 1)}
                client.load_model(self.model, headers=headers, config=json.dumps(config),
                                  client_timeout=self.reload_timeout)
                ok = client.is_model_ready(self.model, client_timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - a failed reload falls back to a restart
            self._event("reload_failed", f"{type(err).__name__}: {err}")
            return False
        self.stats.reloads += 1
        self._event("reloaded" if ok else "reload_failed", self.model)
        return ok

    def restart(self) -> None:
        """Stop what is left of the server, keep its log, start it again on the same ports."""
        code = self.server._process.poll() if self.server._process else None
        # it died on its own: record how (not a server this supervisor stopped itself after a failed start)
        if code is not None and not self._gave_up:
            why = f"signal {-code}" if code < 0 else f"exit {code}"
            self.stats.crashes[why] += 1
            self._event("crashed", f"{why}; {crash_evidence(self.server.log_tail(400))}")
        self.server.stop(timeout=5.0)
        kept = self._keep_log()
        for attempt in range(3):
            try:
                self._launch()
                break
            except Exception as err:  # noqa: BLE001 - e.g. the server dying between ready and the model check
                self._event("restart_failed", f"attempt {attempt + 1}: {type(err).__name__}: {err}")
                time.sleep(min(2.0 ** attempt, 5.0))
        else:
            self.stats.restart_failures += 1
            self._gave_up = True
            return  # the next probe fails and tries again
        self._gave_up = False
        self.stats.restarts += 1
        self._event("restarted", f"PID {self.server.pid}; previous log {kept}")

    def _keep_log(self) -> Path | None:
        """Copy the server's log to ``<log>.crash-N``, N after every copy already there (an earlier
        ``recsys-serve`` with the same ``--log-file`` included): none is overwritten."""
        log_path = self.server.log_path
        taken = [int(m.group(1)) for p in log_path.parent.glob(f"{log_path.name}.crash-*")
                 if (m := re.fullmatch(rf"{re.escape(log_path.name)}\.crash-(\d+)", p.name))]
        self._kept_logs = max([self._kept_logs, *taken]) + 1
        kept = log_path.with_name(f"{log_path.name}.crash-{self._kept_logs}")
        try:
            shutil.copy2(log_path, kept)
        except OSError as err:  # a full or vanished /tmp must not stop the restart
            self._event("log_not_kept", f"{kept}: {type(err).__name__}: {err}")
            return None
        return kept


def outage(events: list[Event], since: float) -> float | None:
    """Seconds from the first failed probe (or lost instance) after ``since`` to the next recovery (None if none)."""
    start = next((e.at for e in events if e.at >= since and e.kind in ("probe_failed", "degraded")), None)
    end = next((e.at for e in events if start is not None and e.at >= start and e.kind == "recovered"), None)
    return None if end is None else end - start

