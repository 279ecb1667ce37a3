#!/usr/bin/env bash
# Wheels the offline GPU machine lacks, for tools/gpu_check.sh: evosax and gguf (pure Python), and
# matplotlib with its dependencies (evosax.problems imports it at import time; the GPU image has jax,
# flax, optax, orbax, transformers, torch, peft but no matplotlib). Run here, where the index is
# reachable, before the device run; the folder is git-ignored and travels with `carry: ["wheelhouse"]`.
#
#   bash tools/make_gpu_wheels.sh                 # wheels for this machine's Python
#   GPU_PY=3.12 bash tools/make_gpu_wheels.sh     # for another Python on the GPU machine
#
# Everything is downloaded with --no-deps: nothing pulls jax, jaxlib or torch. About 25 MiB in all
# (the device-run budget is 64 MiB, so no SmolLM2 weights travel).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEELHOUSE:-wheelhouse}
PYV=${GPU_PY:-$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
mkdir -p "$OUT"
# pure-Python wheels: any Python
python -m pip download --no-deps -d "$OUT" evosax==0.3.2 gguf
# matplotlib and what it imports (binary wheels for the GPU machine's Python, manylinux x86_64)
python -m pip download --no-deps -d "$OUT" --only-binary=:all: --python-version "$PYV" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six
du -sh "$OUT"
ls "$OUT"
