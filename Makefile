# `make demo` and `make test` work on a fresh machine: they create .venv, install, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m commfor_fast demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m commfor_fast bench --out bench-output

bench-quick: $(STAMP)
	$(PY) -m commfor_fast bench --quick --out bench-output

clean:
	rm -rf $(VENV) demo-output bench-output
