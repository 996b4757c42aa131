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

# Redis for the live events shared across servers (docs/events.md); `make run` needs none.
REDIS_PORT ?= 6390
REDIS_DIR  ?= .cache/redis
REDIS_ABS  := $(abspath $(REDIS_DIR))

.PHONY: run test reliability venv baselines clean-venv rehearsal-numpy2 wheel-check redis-install redis-start redis-stop prometheus-install

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

test: $(STAMP) redis-install prometheus-install
	$(PY) -m pytest -q -m "not reliability" $(ARGS)

# Debian's redis-server (the Redis tests start their own on a free port); installed once, as root.
redis-install:
	@command -v redis-server >/dev/null || apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)

# Debian's prometheus (promtool checks ops/prometheus/alerts.yml; tests/serving/test_alerts.py starts its
# own prometheus on a free 127.0.0.1 port). RUNLEVEL=1 keeps invoke-rc.d from starting the package's
# system-wide one on :9090 on machines without systemd (these and CI); on a systemd host the package
# starts its service as any Debian install does: `systemctl disable --now prometheus` if unwanted.
prometheus-install:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		RUNLEVEL=1 apt-get install -y --no-install-recommends prometheus || \
		(apt-get update && RUNLEVEL=1 apt-get install -y --no-install-recommends prometheus)

# One redis-server on 127.0.0.1:$(REDIS_PORT), data and append-only file in $(REDIS_DIR) (a restart keeps
# the stream and the event-id keys); serve with: python -m serving.serve --redis redis://127.0.0.1:$(REDIS_PORT)/0
redis-start: redis-install
	@mkdir -p $(REDIS_ABS)
	@if [ -f $(REDIS_ABS)/redis.pid ] && kill -0 $$(cat $(REDIS_ABS)/redis.pid) 2>/dev/null; then \
		echo "redis-server already running (PID $$(cat $(REDIS_ABS)/redis.pid), port $(REDIS_PORT))"; \
	else \
		redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --protected-mode yes --dir $(REDIS_ABS) \
			--appendonly yes --save "" --daemonize yes --pidfile $(REDIS_ABS)/redis.pid \
			--logfile $(REDIS_ABS)/redis.log && \
		for i in $$(seq 50); do [ -s $(REDIS_ABS)/redis.pid ] && break; sleep 0.1; done && \
		echo "redis-server running: redis://127.0.0.1:$(REDIS_PORT)/0 (PID $$(cat $(REDIS_ABS)/redis.pid), dir $(REDIS_ABS))"; \
	fi

# Stops the redis-server of redis-start by its pidfile (and waits until it is gone); no-op when none runs.
redis-stop:
	@if [ -f $(REDIS_ABS)/redis.pid ] && kill -0 $$(cat $(REDIS_ABS)/redis.pid) 2>/dev/null; then \
		pid=$$(cat $(REDIS_ABS)/redis.pid); kill $$pid; \
		for i in $$(seq 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
		echo "redis-server stopped (PID $$pid)"; \
	else \
		echo "no redis-server running from $(REDIS_ABS)"; \
	fi

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
