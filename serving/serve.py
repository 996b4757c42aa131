"""Run Triton Inference Server on a model repository, supervised, until Ctrl-C or SIGTERM.

Example:
    recsys-serve --model-repository triton_repo
    recsys-serve --model-repository triton_repo --grpc-port 0   # any free port
    recsys-serve --admin-token-file token.txt --tls-cert s.pem --tls-key s.key
    (``python -m serving.serve ...`` from a source checkout)

Binds 127.0.0.1 only. The server is the nvidia-pytriton wheel's `tritonserver` (or, with a GPU
visible, a stock `tritonserver` on PATH); see serving/triton_server.py. By default the server is
supervised (serving/supervisor.py: a real `recommend` inference every second, model reload or
server restart when it fails, readiness off and drain on shutdown; `--no-supervise` turns that
off) and secure (serving/security.py: gRPC only, control and shared-memory APIs behind a token).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from tritonclient.utils import InferenceServerException

from events.log import DEFAULT_SEGMENT_BYTES, GiB
from inference.served import mark_served, unmark_served
from serving.health import HealthServer
from serving.event_log import ENV, MAX_BYTES_ENV, REDIS_ENV, max_log_bytes, served_event_log_dir
from serving.protocol import PROBE_ENV, PROBE_USER
from serving.security import SecurityOptions
from serving.supervisor import Supervisor
from serving.triton_server import TritonServer


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (a free one) to 65535 (Triton took 99999 as 99999 - 65536 and printed 99999)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a port number in 0..65535 (0 picks a free one)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port}: a port is 0..65535 (0 picks a free one)")
    return port


def _seconds(text: str, zero: bool = False) -> float:
    """Seconds > 0 (``zero``: >= 0) for argparse (a negative probe interval was a traceback from the
    supervisor)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, a number {'>=' if zero else '>'} 0 (e.g. 2)")
    return value


def _wait_seconds(text: str) -> float:
    """Seconds >= 0 for argparse (0: do not wait)."""
    return _seconds(text, zero=True)


def default_repository() -> Path:
    """``./triton_repo`` when it exists (``train.py``'s export writes under the directory it runs in),
    else where ``recsys-export`` writes (``export.config.workspace_root``: the source checkout for an
    editable install, the current directory otherwise)."""
    here = Path("triton_repo")
    if here.is_dir():
        return here
    from export.config import workspace_root  # here: a given repository needs no Hydra import

    return workspace_root() / "triton_repo"


def stale_models(repository: Path) -> list[str]:
    """The models of an exported repository whose ``1/model.py`` differs from this installation's committed
    one (the package's ``triton_repo`` templates): exported by another version of the code, they would run
    their old code against this version's library."""
    spec = importlib.util.find_spec("triton_repo")
    if spec is None or not spec.submodule_search_locations:
        return []
    templates = Path(next(iter(spec.submodule_search_locations)))
    own = templates.resolve() == repository.resolve()  # serving the checkout's own repository: no code to compare
    stale = []
    for exported in sorted(repository.glob("*/*/model.py")):
        if not exported.parent.name.isdigit():
            continue
        name = exported.parent.parent.name
        if exported.parent.name != "1":  # the export writes version 1; the supervisor probes and counts that one
            stale.append(f"{name} (version folder {exported.parent.name})")
            continue
        if own:
            continue
        # generated rankers (ranker_student, *_int8) run the ranker's committed model.py; a checkout's own
        # generated copies are not the reference (they are written by its exports, maybe older ones)
        template = templates / ("ranker" if name.startswith("ranker") else name) / "1" / "model.py"
        if template.is_file() and exported.read_bytes() != template.read_bytes():
            stale.append(name)
    return stale


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see `--help`)."""
    parser = argparse.ArgumentParser(
        prog="recsys-serve",
        description="Start a supervised Triton Inference Server on 127.0.0.1, print its ports and "
                    "ready models, and stop it cleanly (drained) on Ctrl-C or SIGTERM.",
        epilog="Ports bind 127.0.0.1 only. The server log goes to a file; its path is printed.")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="Triton model repository (one folder per model with config.pbtxt "
                             "and a version folder), as written by the export step (default: "
                             "./triton_repo when it exists, where train.py's export writes it; else the "
                             "one recsys-export writes: the source checkout's for an editable install)")
    parser.add_argument("--grpc-port", type=_port, default=8001,
                        help="gRPC port, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--http-port", type=_port, default=8000,
                        help="HTTP port when --allow-http, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--metrics-port", type=_port, default=8002,
                        help="Prometheus metrics port, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--health-port", type=_port, default=8003,
                        help="supervisor's /ready, /live, /metrics, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                        help="Triton's --model-control-mode with --no-supervise (the supervisor always "
                             "uses explicit; default: %(default)s)")
    parser.add_argument("--no-supervise", action="store_true",
                        help="run the bare server: no liveness probe, reload, restart or drain")
    parser.add_argument("--probe-interval", type=_seconds, default=1.0,
                        help="seconds between liveness probes (default: %(default)s)")
    parser.add_argument("--probe-timeout", type=_seconds, default=2.0,
                        help="seconds a liveness probe may take (default: %(default)s)")
    parser.add_argument("--drain-timeout", type=_wait_seconds, default=10.0,
                        help="seconds to wait for in-flight requests on shutdown (default: %(default)s)")
    parser.add_argument("--stop-grace", type=_wait_seconds, default=0.0,
                        help="seconds between readiness off (/ready answers 503) and the drain on shutdown, "
                             "still answering: the time a load balancer following /ready needs to move the "
                             "traffic (default: %(default)s; a restart in place costs ~13 s of failed requests)")
    parser.add_argument("--allow-http", action="store_true",
                        help="also serve HTTP/REST (off by default; clients use gRPC)")
    parser.add_argument("--admin-token-file", default=None,
                        help="file holding the token of the x-recsys-admin-token header that the "
                             "shared-memory, model-repository, logging and trace APIs require "
                             "(default: a random token per run)")
    parser.add_argument("--tls-cert", default=None, help="PEM server certificate: serve gRPC over TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-root-cert", default=None,
                        help="PEM CA the supervisor trusts (and, with --tls-mutual, client certificates chain to)")
    parser.add_argument("--tls-mutual", action="store_true", help="require client certificates (mTLS)")
    parser.add_argument("--tls-client-cert", default=None, help="PEM certificate the supervisor presents (mTLS)")
    parser.add_argument("--tls-client-key", default=None, help="PEM key of --tls-client-cert")
    parser.add_argument("--startup-timeout", type=_seconds, default=120.0,
                        help="seconds to wait for the server to report ready (default: %(default)s)")
    parser.add_argument("--binary", default=None,
                        help="tritonserver to run (default: stock one on PATH when a GPU is "
                             "visible, otherwise the nvidia-pytriton wheel's)")
    parser.add_argument("--log-file", default=None,
                        help="file for the server's log (default: a new file under /tmp)")
    parser.add_argument("--event-log", default=None,
                        help="directory of the durable event / impression log shared by `events` and every "
                             "`recommend` instance (default: the models' EVENT_LOG parameter, `event_log` next "
                             "to the model repository); sets RECSYS_EVENT_LOG for the server")
    parser.add_argument("--log-max-gib", type=float, default=None, metavar="GIB",
                        help="size bound of each log folder (events/, impressions/, catalog/) in GiB: past it the "
                             "oldest segments are deleted (recsys_event_log_dropped_segments); sets "
                             "RECSYS_LOG_MAX_BYTES for the server (default: the models' LOG_MAX_BYTES parameter, "
                             "else 1)")
    parser.add_argument("--allow-stale-code", action="store_true",
                        help="serve a repository whose models' model.py differ from this installation's (exported "
                             "by another version of the code; refused by default: export again)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="share the live events with the servers of other hosts through Redis "
                             "(redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0; `make redis-start` runs one): "
                             "`events` publishes to its stream, every `recommend` follows it; sets RECSYS_REDIS_URL "
                             "for the server (default: the models' REDIS_URL parameter, empty = off)")
    return parser.parse_args(argv)


def security_options(args: argparse.Namespace) -> SecurityOptions:
    """SecurityOptions from the command line.

    Raises:
        FileNotFoundError: the token file or a TLS file does not exist.
        ValueError: an empty or malformed token, half a TLS configuration.
    """
    token = None
    if args.admin_token_file:
        path = Path(args.admin_token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--admin-token-file {path} does not exist; write a token into it "
                                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)")
        token = path.read_text().strip()
    return SecurityOptions(allow_http=args.allow_http, admin_token=token, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, tls_root_cert=args.tls_root_cert, tls_mutual=args.tls_mutual,
                           tls_client_cert=args.tls_client_cert, tls_client_key=args.tls_client_key)


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; returns the process exit status."""
    args = parse_args(argv)
    # the supervisor's events (probe_failed, reloaded, restarted ... previous log <path>, recovered)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.event_log:
        os.environ[ENV] = str(Path(args.event_log).expanduser().resolve())  # the stubs inherit it
    # the liveness probe's user id, this server's own: a client cannot send requests recorded nowhere
    os.environ.setdefault(PROBE_ENV, f"{PROBE_USER}-{secrets.token_hex(8)}")
    if args.log_max_gib is not None:
        os.environ[MAX_BYTES_ENV] = repr(args.log_max_gib * GiB)
        try:
            max_log_bytes({})  # the models' own check of the bound, before anything starts
        except ValueError:
            os.environ.pop(MAX_BYTES_ENV)
            print(f"error: --log-max-gib {args.log_max_gib:g}: at least {DEFAULT_SEGMENT_BYTES / GiB:g} (one "
                  f"{DEFAULT_SEGMENT_BYTES >> 20} MiB segment)", file=sys.stderr)
            return 2
    if args.redis is not None:
        from events.redis_bus import check_url  # pandas: only when asked for

        try:
            os.environ[REDIS_ENV] = check_url(args.redis)
        except ValueError as err:
            print(f"error: --redis: {err}", file=sys.stderr)
            return 2
    try:
        if args.model_repository is None:
            args.model_repository = default_repository()
            print(f"model repository: {args.model_repository}", flush=True)
        repo = Path(args.model_repository)
        stale = stale_models(repo) if repo.is_dir() else []
        if stale and not args.allow_stale_code:
            raise ValueError(f"{args.model_repository}: the model code of {', '.join(stale)} differs from this "
                             "installation's (exported by another version of the code, it would run its old code "
                             "against this version's library); export again (recsys-export --run-dir <run>) or "
                             "pass --allow-stale-code")
        if repo.is_dir() and not any(repo.glob("*/config.pbtxt")):
            raise ValueError(f"{args.model_repository} holds no model (no <model>/config.pbtxt): not an exported "
                             "model repository; export one (recsys-export --run-dir <run>) and pass it")
        if repo.is_dir() and not args.no_supervise and not (repo / "recommend" / "config.pbtxt").is_file():
            raise ValueError(f"{args.model_repository} has no recommend model (recommend/config.pbtxt), which the "
                             "supervisor probes; export the run again (recsys-export) or pass --no-supervise")
        if stale:
            print(f"warning: serving older model code for {', '.join(stale)} (--allow-stale-code)", file=sys.stderr)
        server = TritonServer(args.model_repository, grpc_port=args.grpc_port or None,
                              http_port=args.http_port or None, metrics_port=args.metrics_port or None,
                              model_control_mode=args.model_control_mode, binary=args.binary,
                              log_path=args.log_file, security=security_options(args))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    supervisor = None if args.no_supervise else Supervisor(
        server, interval=args.probe_interval, timeout=args.probe_timeout, startup_timeout=args.startup_timeout,
        drain_timeout=args.drain_timeout, stop_grace=args.stop_grace)

    def interrupt(signum, _frame):
        # SIGTERM behaves like Ctrl-C, so startup and serving are interrupted the same way.
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    status, health = 0, None
    marker = mark_served(server.model_repository)  # recsys-export refuses to write over a served repository
    try:
        if supervisor is None:
            server.start()
            server.wait_ready(args.startup_timeout)
        else:
            try:  # first: a taken port fails before Triton starts; /ready answers 503 while it starts
                health = HealthServer(supervisor, args.health_port).start()
            except OSError as err:
                raise RuntimeError(f"--health-port {args.health_port}: {err.strerror or err}; choose another port "
                                   "(0 picks a free one)") from err
            supervisor.start()
        print(f"tritonserver ready (PID {server.pid}, binary {server.binary})\n"
              f"  grpc    {server.grpc_url}{' (TLS)' if server.security.tls else ''}\n"
              f"  http    {server.http_url or 'off (--allow-http to serve it)'}\n"
              f"  metrics {server.metrics_url}\n"
              f"  health  {health.url + '/ready' if health else 'off (--no-supervise)'}\n"
              f"  models  {', '.join(server.ready_models()) or '(none ready)'}\n"
              f"  log     {server.log_path}\n"
              f"  events  {served_event_log_dir(args.model_repository)} (the event, impression and catalog log)\n"
              "Ctrl-C to stop.", flush=True)
        while supervisor.watching if supervisor is not None else server.is_running():
            time.sleep(0.5)
        if supervisor is None:
            print(f"error: tritonserver exited unexpectedly; log {server.log_path}:\n"
                  f"{server.log_tail(20)}", file=sys.stderr)
        else:  # nothing heals the server any more: stop rather than serve unwatched
            print(f"error: the supervisor stopped watching the server; its last events: "
                  f"{[f'{e.kind} {e.detail}' for e in supervisor.events[-3:]]}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt as why:
        print(f"\n{str(why) or 'SIGINT'} received: readiness off, draining, stopping tritonserver", flush=True)
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        status = 1
    except InferenceServerException as err:  # a server that answered but not as ours: say it, no traceback
        print(f"error: the server on {server.grpc_url} answered {err.status()}: {err.message()}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not abandon a half-stopped server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = supervisor.stop() if supervisor is not None else server.stop()
        if health is not None:
            health.stop()
        unmark_served(marker)
    print(f"tritonserver stopped (exit status {code})" if code is not None else "tritonserver was not started")
    return status


if __name__ == "__main__":
    sys.exit(main())
