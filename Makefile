# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test reliability venv baselines clean-venv rehearsal-numpy2

venv: $(STAMP)

# Re-installs only when pyproject.toml changes; idempotent otherwise.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# The main job: data -> baselines -> retrieval -> ranking -> distill -> export -> Triton -> gRPC answers.
run: $(STAMP)
	$(PY) train.py $(ARGS)
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

clean-venv:
	rm -rf $(VENV)
