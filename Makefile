# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test reliability venv baselines clean-venv

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

clean-venv:
	rm -rf $(VENV)
