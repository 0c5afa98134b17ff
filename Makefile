# graft-sglang: every target sets up its own environment (scripts/make_venv.sh) on first use.
SHELL := /bin/bash
VENV = $(shell ./scripts/make_venv.sh)
PY = $(VENV)/bin/python
# The venv first on PATH: the kernel JIT build runs its ninja.
export PATH := $(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE = 1
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test lint bench bench-serving calibrate bench-offline venv clean

venv:
	@echo "venv: $(VENV)"

# SGLang's own server on this CPU: plain, EAGLE3, NGRAM and GRAFT, SGLang's serving benchmark.
demo:
	$(PY) -m bench.demo

test:
	@$(PY) -m ruff check .
	@$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint:
	$(PY) -m ruff check .

bench:
	$(PY) -m bench.tree_build

# The serving recipe on this CPU: every workload x method x concurrency 1 / 2 / 4.
bench-serving:
	$(PY) -m bench.serving.run --device cpu --out bench/results/serving-cpu

# Thresholds of graft / graft-paper for the shipped head, measured on calibration prompts
# (written to the head's calibration.json, the default of the engine and the plugin).
calibrate:
	$(PY) -m bench.calibrate --budget 16 --prompts 6 --write-head

# Every method and paper mode over N (graft's thresholds, and suffix retrieval alone or with the
# successor table) on both datasets, side by side (one thread each).
OFFLINE_METHODS = chain dense pruned retrieval graft graft-paper graft-noprune graft-root graft-tail
bench-offline:
	$(PY) -m bench.offline --dataset mtbench --prompts 3 --threads 1 --budget 8 16 32 \
	  --threshold 0.05 0.1 0.2 --retrieval suffix both --methods $(OFFLINE_METHODS) \
	  --out bench/results/offline-eagle3 & pid=$$!; \
	$(PY) -m bench.offline --dataset longctx --prompts 3 --threads 1 --budget 16 32 \
	  --retrieval suffix both --methods $(OFFLINE_METHODS) --out bench/results/offline-eagle3 \
	  && wait $$pid

clean:
	rm -rf build *.egg-info
