#!/usr/bin/env bash
# The built wheel works outside the checkout: install it into a fresh venv (reusing the dev venv's
# packages, so nothing is downloaded) and run the installed commands from an empty directory:
# recsys-train on tiny synthetic data, recsys-batch on that run, recsys-export of it.
# Usage: .ci/wheel_check.sh <python of the dev venv> <folder holding the wheel>
set -euo pipefail
DEV_PY="$1"
WHEEL="$(ls -t "$2"/hybrid_recommender-*.whl | head -1)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SITE="$("$DEV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$DEV_PY" -m venv "$WORK/venv"
# The dev venv's third-party packages, without its editable install of this checkout.
"$WORK/venv/bin/python" - "$SITE" <<'PY'
import sys, sysconfig, pathlib
site = pathlib.Path(sysconfig.get_paths()["purelib"])
(site / "dev_packages.pth").write_text(sys.argv[1] + "\n")
PY
"$WORK/venv/bin/python" -m pip install --quiet --no-deps --no-index "$WHEEL"
cd "$WORK"
test ! -e "$WORK/configs"  # nothing here but the venv: configs come from the wheel
"$WORK/venv/bin/python" - <<'PY'
import export, train
assert "site-packages" in export.__file__ and "site-packages" in train.__file__, (export.__file__, train.__file__)
PY
OMP_NUM_THREADS=1 "$WORK/venv/bin/recsys-train" stage=ranking data=synthetic data.loader.n_users=200 \
  data.loader.n_items=300 data.loader.n_interactions=4000 data.loader.n_categories=6 logger=csv trainer=cpu \
  trainer.max_epochs=1 retrieval.batch_size=256 retrieval.history_len=10 "retrieval.eval_ks=[10,50]" \
  "eval.ks=[10]" ranking.max_epochs=1 retrieval.refit.mode=none progress=false hydra.run.dir="$WORK/run" > "$WORK/train.log" 2>&1 \
  || { tail -30 "$WORK/train.log"; exit 1; }
printf "user_id\nu1\nnobody\n" > "$WORK/req.csv"
"$WORK/venv/bin/recsys-batch" --run-dir "$WORK/run" --requests "$WORK/req.csv" --k 5 --out "$WORK/recs.csv" --no-progress
test "$(wc -l < "$WORK/recs.csv")" -eq 11
# Default repository: ./triton_repo of the current directory (never the installed templates).
"$WORK/venv/bin/recsys-export" --run-dir "$WORK/run" > "$WORK/export.log" 2>&1 \
  || { tail -30 "$WORK/export.log"; exit 1; }
for f in recommend/config.pbtxt recommend/1/model.py user_tower/1/model.onnx ranker/1/model.onnx retrieval/1/items.faiss; do
  test -s "$WORK/triton_repo/$f" || { echo "missing $f in the exported repository"; exit 1; }
done
PKG_REPO="$("$WORK/venv/bin/python" -c 'import export.config as c; print(c.ROOT / "triton_repo")')"
test ! -e "$PKG_REPO/user_tower/1/model.onnx" || { echo "export wrote into the installed package $PKG_REPO"; exit 1; }
echo "wheel check ok: $(basename "$WHEEL") trains, answers a batch and exports from an installed copy"
