"""bench.worktree_env: an environment that imports another checkout's code with this venv's packages."""

import subprocess

from bench.worktree_env import create, main


def test_the_worktree_shadows_the_editable_install_even_in_isolated_mode(tmp_path):
    tree = tmp_path / "tree"
    (tree / "pipeline").mkdir(parents=True)
    (tree / "pipeline" / "__init__.py").write_text("WHERE = 'worktree'\n")
    python = create(tree, tmp_path / "env")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -I as the Triton stub runs it: no PYTHONPATH, no cwd on sys.path; the environment's .pth still counts
    out = subprocess.run([str(python), "-I", "-c", "import pipeline, numpy, onnxruntime; print(pipeline.WHERE)"],
                         cwd=elsewhere, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "worktree"
    # nothing of this checkout leaks in: the editable install's import hook is not run there
    out = subprocess.run([str(python), "-I", "-c", "import ranking"], cwd=elsewhere, capture_output=True, text=True)
    assert out.returncode == 1 and "No module named 'ranking'" in out.stderr
    assert create(tree, tmp_path / "env") == python  # refreshing an environment it made is fine


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert main(["--worktree", str(tmp_path / "missing"), "--out", str(tmp_path / "env")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["--worktree", str(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert "is not an environment this command made" in capsys.readouterr().err
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # someone's venv: never cleared
    assert main(["--worktree", str(tmp_path), "--out", str(tmp_path / "venv")]) == 2
    assert (tmp_path / "venv" / "pyvenv.cfg").is_file()


def test_main_prints_how_to_use_it(tmp_path, capsys):
    assert main(["--worktree", str(tmp_path), "--out", str(tmp_path / "env")]) == 0
    assert "bench.load" in capsys.readouterr().out
