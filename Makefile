# graft-sglang: every target sets up its own environment (scripts/make_venv.sh) on first use.
SHELL := /bin/bash
VENV = $(shell ./scripts/make_venv.sh)
PY = $(VENV)/bin/python
# The venv first on PATH: the kernel JIT build runs its ninja.
export PATH := $(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE = 1
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test lint bench venv clean

venv:
	@echo "venv: $(VENV)"

demo:
	$(PY) -m graft_sglang.engine.demo

test:
	@$(PY) -m ruff check .
	@$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint:
	$(PY) -m ruff check .

bench:
	$(PY) -m bench.tree_build

clean:
	rm -rf build *.egg-info
