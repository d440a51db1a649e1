# The two commands a new user needs: `make demo` and `make test`. Both build .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.muxrec-installed

# Tests and the demo read MovieLens from ../shared/data when it is there (CI lays it out so);
# otherwise muxrec looks in the user cache dir and, for the demo, downloads it.
ifneq ($(wildcard ../shared/data),)
export MUXREC_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: venv demo test test-unit bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap-venv.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap-venv.sh $(VENV)
	touch $@

demo: $(STAMP)
	$(BIN)/muxrec demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

GRADED_MODELS = deepfm,final_mlp,dcn_v2,wide_deep,fm,lr,autoint,hiformer

bench: $(STAMP)
	$(BIN)/muxrec bench ctr --dataset ml-100k --model all --seeds 2026,2027,2028 --json
	$(BIN)/muxrec bench ctr --dataset ml-100k-graded --model $(GRADED_MODELS) --seeds 2026,2027,2028 --json
	$(BIN)/muxrec bench ctr --dataset ml-100k-graded-history --model din,final_mlp --seeds 2026,2027,2028 --json

lint: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit/test_layering.py

clean:
	rm -rf runs artifacts .pytest_cache
