"""An environment that runs another checkout's code (e.g. a git worktree of an older commit) with
this venv's packages, the served Triton models included: for before/after benchmarks.

Why: the project is installed in editable mode, and the Triton python backend's stub runs Python in
isolated mode (``PYTHONPATH`` ignored), so a served model started from a worktree still imports
*this* checkout's library code through the editable install's import hook. A plain venv whose only
``.pth`` puts the worktree first and this venv's site-packages after it (added as a path, so their
``.pth`` files, the editable hook among them, are not run) imports the worktree's code everywhere:
in the benchmark process and in every stub, which takes its environment from the first ``python3``
on PATH (``serving.triton_server`` puts the running interpreter's directory there).

    python -m bench.worktree_env --worktree /work/wt-base --out /tmp/venv_base
    cd /work/wt-base && /tmp/venv_base/bin/python -m bench.load --run-dir RUN --repository REPO ...

Nothing is installed: the environment is a few files and symlinks (``python -m venv --without-pip``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH = "worktree_env.pth"


def create(worktree: Path, out: Path) -> Path:
    """Create (or refresh) the environment at ``out``; -> its python. Raises ValueError for a
    worktree that is not a directory, or an ``out`` that exists and is not such an environment."""
    worktree, out = worktree.resolve(), out.resolve()
    if not worktree.is_dir():
        raise ValueError(f"--worktree {worktree} is not a directory (e.g. `git worktree add /work/wt-base <commit>`)")
    if out.exists() and not list(out.glob(f"lib/python*/site-packages/{PTH}")):  # never clear another venv
        raise ValueError(f"--out {out} exists and is not an environment this command made; pick a new path")
    if sys.prefix == sys.base_prefix:
        raise ValueError("run this from the project's venv (.venv/bin/python): its packages are the ones shared")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(out)], check=True)
    packages = Path(sysconfig.get_paths()["purelib"])  # this venv's site-packages
    site = Path(sysconfig.get_paths(vars={"base": str(out), "platbase": str(out)})["purelib"])
    (site / PTH).write_text(f"{worktree}\n{packages}\n")
    return out / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worktree", type=Path, required=True, help="the checkout whose code the environment runs")
    p.add_argument("--out", type=Path, required=True, help="where to write the environment (a new directory)")
    args = p.parse_args(argv)
    try:
        python = create(args.worktree, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{python}: runs {args.worktree.resolve()} with this venv's packages\n"
          f"e.g. cd {args.worktree.resolve()} && {python} -m bench.load --run-dir RUN --repository REPO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
