# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The extras this machine gets: cpu (faiss-cpu, onnxruntime) or gpu (CUDA 13); see docs/install.md.
EXTRAS ?= cpu,dev
# PyPI's torch is the CUDA 13 build (~530 MB of CUDA libraries). On a CPU machine point this at
# PyTorch's CPU wheels to get 2.13.0+cpu instead: make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: run test reliability venv baselines clean-venv rehearsal-numpy2 wheel-check

venv: $(STAMP)

# Re-installs only when pyproject.toml changes; idempotent otherwise.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip >= 24 reads package metadata without downloading wheels (tests/test_extras.py resolves from PyPI).
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_INDEX) -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The main job: data -> baselines -> retrieval -> ranking -> distill -> export -> Triton -> gRPC answers.
# The comparison-only refit of the towers (two_tower_refit, not served) costs ~80 s: off here;
# `make run ARGS=retrieval.refit.mode=scratch` (or plain `python train.py`) reports it.
run: $(STAMP)
	$(PY) train.py retrieval.refit.mode=none $(ARGS)
	$(PY) -m serving.demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not reliability" $(ARGS)

# Failure cases against a real supervised server (docs/reliability.md); longer than 3 min on 2 cores.
reliability: $(STAMP)
	$(PY) -m pytest -q -s -m reliability $(ARGS)

baselines: $(STAMP)
	$(PY) train.py stage=baselines $(ARGS)

# The GPU check's CPU rehearsal under numpy 2 (what the GPU machine has): a numpy 2 wheel on
# PYTHONPATH ahead of the venv's numpy 1 (docs/gpu.md). Downloads the wheel once into .cache/.
rehearsal-numpy2: $(STAMP)
	test -d .cache/np2site || ($(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .cache/np2whl "numpy>=2" \
		&& $(PY) -m pip install --quiet --no-deps --no-index --target .cache/np2site .cache/np2whl/*.whl)
	PYTHONPATH=.cache/np2site $(PY) -m bench.gpu_check --cpu-rehearsal --out outputs/gpu_check_numpy2
# Build the wheel, install it into a fresh venv and run the installed commands on a tiny run (CI).
wheel-check: $(STAMP)
	rm -rf build dist/hybrid_recommender-*.whl
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	bash .ci/wheel_check.sh "$(PY)" dist

clean-venv:
	rm -rf $(VENV)
