# `make demo` and `make test` work on a fresh machine: they create .venv, install, then run.
# `make demo DEMO_ARGS=--quick`: the short demo; any `commfor-fast demo` flags go in DEMO_ARGS.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test bench bench-quick clean

$(STAMP): pyproject.toml
	@echo "installing commfor-fast with torch, NVIDIA DALI, timm, datasets and wandb into $(VENV): about 7.3 GB to download and unpack"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)
	@echo "installed into $(VENV) ($$(du -sh $(VENV) | cut -f1))"

demo: $(STAMP)
	$(PY) -m commfor_fast demo --out demo-output $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m commfor_fast bench --out bench-output

bench-quick: $(STAMP)
	$(PY) -m commfor_fast bench --quick --out bench-output

clean:
	rm -rf $(VENV) demo-output bench-output
