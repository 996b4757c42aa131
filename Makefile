# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test venv baselines clean-venv

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
	$(PY) -m pytest -q $(ARGS)

baselines: $(STAMP)
	$(PY) train.py stage=baselines $(ARGS)

clean-venv:
	rm -rf $(VENV)
