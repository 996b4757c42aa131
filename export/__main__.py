"""Export a finished run: ``python -m export --run-dir outputs/<run> [export.flavour=stock ...]``.

The config is the run's own (``<run>/.hydra/config.yaml``) when present, else configs/train.yaml;
``key=value`` overrides apply on top (e.g. ``export.repository=/tmp/repo``). See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.config import run_config
from export.repository import run_export


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="recsys-export", description="Export a finished training run to ONNX and "
                                     "write the Triton model repository (see docs/serving.md).")
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="output directory of `python train.py` (holds artifacts/)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. export.flavour=stock")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        repo = run_export(run_config(args.run_dir.resolve(), args.overrides), args.run_dir.resolve())
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a repository folder that cannot be written
        print(f"error: the model repository could not be written ({err.strerror or err}: {err.filename or ''}); "
              "choose another export.repository=<folder>", file=sys.stderr)
        return 2
    print(f"model repository: {repo}\nserve it: recsys-serve --model-repository {repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
