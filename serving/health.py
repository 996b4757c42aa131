"""The supervisor's HTTP endpoint (127.0.0.1): readiness and liveness for a load balancer, its counters.

``GET /ready`` is 200 only while the last real inference succeeded and the server is not draining;
``GET /live`` is 200 while the supervisor runs; ``GET /metrics`` is Prometheus text:
``recsys_supervisor_{probes,probe_failures,reloads,restarts}_total``,
``recsys_supervisor_crashes_total{why}``, ``recsys_supervisor_ready``,
``recsys_supervisor_last_outage_seconds``, ``recsys_supervisor_last_start_seconds``. Point Kubernetes'
readiness probe here, not at Triton's ``/v2/health/ready`` (which stays green while a model's stub is dead).
"""

from __future__ import annotations

import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset of (label, value)): value}."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[(m.group(1), frozenset(_LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def scrape(url: str, timeout: float = 2.0) -> dict[tuple[str, frozenset], float]:
    """GET a Prometheus endpoint and parse it (:func:`parse_metrics`)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own 127.0.0.1 endpoint
        return parse_metrics(response.read().decode())


def metric_sum(metrics: dict, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return float(sum(v for (n, lab), v in metrics.items()
                     if n == name and all((k, str(x)) in lab for k, x in labels.items())))


def supervisor_metrics(supervisor) -> str:
    """The supervisor's counters as Prometheus text."""
    s = supervisor.stats
    lines = []
    for name, value, help_ in (("probes_total", s.probes, "Liveness probes sent"),
                               ("probe_failures_total", s.probe_failures, "Liveness probes that failed"),
                               ("reloads_total", s.reloads, "Model reloads through explicit model control"),
                               ("restarts_total", s.restarts, "Server restarts"),
                               ("restart_failures_total", s.restart_failures,
                                "Restarts given up after three failed starts (the next probe tries again)"),
                               ("ready", int(supervisor.ready), "1 while the last probe answered"),
                               ("last_outage_seconds", s.last_outage_s, "First failed probe or lost model instance to recovery, seconds"),
                               ("last_start_seconds", s.last_start_s,
                                "The last (re)start of the server until its required models were ready, seconds")):
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP recsys_supervisor_{name} {help_}", f"# TYPE recsys_supervisor_{name} {kind}",
                  f"recsys_supervisor_{name} {value}"]
    lines += ["# HELP recsys_supervisor_crashes_total Server exits the supervisor did not ask for",
              "# TYPE recsys_supervisor_crashes_total counter"]
    lines += [f'recsys_supervisor_crashes_total{{why="{why}"}} {n}' for why, n in s.crashes.items()]
    return "\n".join(lines) + "\n"


class HealthServer:
    """Serves /ready, /live and /metrics of a supervisor on 127.0.0.1:``port`` (0 = a free port)."""

    def __init__(self, supervisor, port: int = 0):
        sup = supervisor

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/ready":
                    code, body = (200, "ready\n") if sup.ready else (503, "not ready\n")
                elif self.path == "/live":  # the supervisor's own loop: nothing heals once it is gone
                    code, body = (200, "live\n") if sup.watching else (503, "supervisor not watching\n")
                elif self.path == "/metrics":
                    code, body = 200, supervisor_metrics(sup)
                else:
                    code, body = 404, "unknown path; try /ready, /live or /metrics\n"
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet: probes arrive every second
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever: never call it on one not started
            self.httpd.shutdown()
        self.httpd.server_close()
