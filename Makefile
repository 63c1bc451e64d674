# Quickstart: `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-slow bench clean-venv

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# torch is pinned to the local CPU wheel on purpose: a range would pull a multi-GB CUDA build.
$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,tfds,bench]'
	touch $@

# runs/.compile_cache: JAX's persistent compilation cache, so a second demo (any workdir) reads its
# compiled programs back instead of compiling them again (mrepe_jax/compile_cache.py).
demo: $(VENV)/.base
	$(PY) -m launch.run --config=configs/toyworld.py --workdir=runs/demo --compile_cache=runs/.compile_cache

test: $(VENV)/.test
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(VENV)/.test
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.test
	$(PY) bench/forward.py
	$(PY) bench/patching.py
	$(PY) bench/streaming.py

clean-venv:
	rm -rf $(VENV)
