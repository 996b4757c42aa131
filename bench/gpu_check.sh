#!/bin/sh
# The device tool's one call (docs/gpu.md): install the carried .whl/ wheels, then run the check into $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 && exec python3 -m bench.gpu_check --out "${OUT:?OUT is not set: run through the device tool or pass OUT=dir}" "$@"
