"""Run Triton Inference Server on a model repository until Ctrl-C or SIGTERM.

Example:
    recsys-serve --model-repository triton_repo
    recsys-serve --model-repository triton_repo --grpc-port 0   # any free port
    (``python -m serving.serve ...`` from a source checkout)

Binds 127.0.0.1 only. The server is the nvidia-pytriton wheel's `tritonserver` (or, with a GPU
visible, a stock `tritonserver` on PATH); see serving/triton_server.py.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from serving.triton_server import TritonServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see `--help`)."""
    parser = argparse.ArgumentParser(
        prog="recsys-serve",
        description="Start a Triton Inference Server on 127.0.0.1, print its ports and ready "
                    "models, and stop it cleanly on Ctrl-C or SIGTERM.",
        epilog="Ports bind 127.0.0.1 only. The server log goes to a file; its path is printed.")
    parser.add_argument("--model-repository", default="triton_repo",
                        help="Triton model repository (one folder per model with config.pbtxt "
                             "and a version folder), as written by the export step "
                             "(default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001,
                        help="gRPC port, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000,
                        help="HTTP port, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus metrics port, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                        default="none",
                        help="Triton's --model-control-mode (default: %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for the server to report ready "
                             "(default: %(default)s)")
    parser.add_argument("--binary", default=None,
                        help="tritonserver to run (default: stock one on PATH when a GPU is "
                             "visible, otherwise the nvidia-pytriton wheel's)")
    parser.add_argument("--log-file", default=None,
                        help="file for the server's log (default: a new file under /tmp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; returns the process exit status."""
    args = parse_args(argv)
    try:
        server = TritonServer(args.model_repository, grpc_port=args.grpc_port or None,
                              http_port=args.http_port or None,
                              metrics_port=args.metrics_port or None,
                              model_control_mode=args.model_control_mode, binary=args.binary,
                              log_path=args.log_file)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def interrupt(signum, _frame):
        # SIGTERM behaves like Ctrl-C, so startup and serving are interrupted the same way.
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    server.start()
    status = 0
    try:
        server.wait_ready(args.startup_timeout)
        print(f"tritonserver ready (PID {server.pid}, binary {server.binary})\n"
              f"  grpc    {server.grpc_url}\n  http    {server.http_url}\n"
              f"  metrics {server.metrics_url}\n"
              f"  models  {', '.join(server.ready_models()) or '(none ready)'}\n"
              f"  log     {server.log_path}\n"
              "Ctrl-C to stop.", flush=True)
        while server.is_running():
            time.sleep(0.5)
        print(f"error: tritonserver exited unexpectedly; log {server.log_path}:\n"
              f"{server.log_tail(20)}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt as why:
        print(f"\n{str(why) or 'SIGINT'} received, stopping tritonserver", flush=True)
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not abandon a half-stopped server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = server.stop()
    print(f"tritonserver stopped (exit status {code})")
    return status


if __name__ == "__main__":
    sys.exit(main())
