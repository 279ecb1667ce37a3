#!/usr/bin/env bash
# The GPU check, prepared for the day a GPU machine is lent (one script, under 8 minutes):
#   1. the parity tests (tests/models: our Flax RoBERTa/Llama vs transformers) with JAX on the GPU;
#   2. the bench at roberta-large shape (random-roberta-large) in bf16 at pop 20 and 200, ours as
#      shipped vs the PyTorch references on CUDA, written to experiments/bench/bench-gpu.json.
#
# The GPU machine is offline and already has jax (0.11, CUDA), flax, optax, orbax, transformers,
# torch and peft. Before the run, here:  bash tools/make_gpu_wheels.sh   (fills wheelhouse/)
# Then on the device:  run(command="bash tools/gpu_check.sh", carry=["wheelhouse"], timeout_s=540)
# jax is never reinstalled (pyproject pins jax<0.11; everything installs with --no-deps --no-index).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
LOG=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$LOG") 2>&1
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, "cuda", torch.cuda.is_available())'

stamp "install (offline, --no-deps: jax/torch untouched)"
PIPOFF="python -m pip install -q --no-deps --no-index --find-links wheelhouse"
if [ -d wheelhouse ]; then
  $PIPOFF evosax==0.3.2 gguf || echo "warning: evosax/gguf wheels did not install"
  # matplotlib (imported by evosax.problems) only where the image lacks it: never replace its packages
  python -c 'import matplotlib.pyplot' 2>/dev/null || $PIPOFF matplotlib contourpy cycler fonttools kiwisolver \
    pyparsing python-dateutil six $(python -c 'import PIL' 2>/dev/null || echo pillow) \
    || echo "warning: matplotlib wheels did not install (another Python? GPU_PY=3.x bash tools/make_gpu_wheels.sh)"
else
  echo "warning: wheelhouse/ missing (bash tools/make_gpu_wheels.sh, then carry it)"
fi
python -m pip install -q --no-deps --no-build-isolation --no-index -e . \
  || echo "note: editable install failed; using PYTHONPATH=$REPO"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if ! python -c 'import matplotlib.pyplot' 2>/dev/null; then
  # evosax.problems imports matplotlib for BBOB plots only; bbt_jax never plots. Last resort: a stub.
  echo "warning: matplotlib unavailable; using an import stub (evosax's BBOB plotting only)"
  STUB=$(mktemp -d); mkdir -p "$STUB/matplotlib"
  printf 'def __getattr__(name):\n    raise ImportError("matplotlib stub (tools/gpu_check.sh)")\n' > "$STUB/matplotlib/__init__.py"
  touch "$STUB/matplotlib/colors.py" "$STUB/matplotlib/pyplot.py"
  export PYTHONPATH=$PYTHONPATH:$STUB
fi
python -c 'import jax, bbt_jax, evosax, gguf; print("jax", jax.__version__, "on", jax.default_backend(), "| bbt_jax", bbt_jax.__file__)' \
  || { echo "FAILED: imports"; exit 1; }

stamp "parity tests on the GPU (fp32 matmuls at full precision, not TF32)"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 180 python -m pytest -q -p no:cacheprovider tests/models
parity=$?

stamp "bench: random-roberta-large, bf16, pop 20 and 200, torch references on CUDA"
mkdir -p experiments/bench
timeout 270 python -m tools.bench --device gpu --shapes random-roberta-large --dtype bfloat16 --pops 20 200 \
  --only-shipped --no-eval --ref-candidates 3 --json experiments/bench/bench-gpu.json
bench=$?
if [ -n "${OUT:-}" ] && [ -f experiments/bench/bench-gpu.json ]; then cp experiments/bench/bench-gpu.json "$OUT/"; fi

stamp "done: parity rc=$parity, bench rc=$bench (results: experiments/bench/bench-gpu.json; log: $LOG)"
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ]
