# Two commands for a fresh machine:  `make up` (the service with the demo)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; on a GPU machine install your CUDA torch into $(VENV) first and it is kept.
TORCH ?= torch==2.13.0

.PHONY: setup up demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

HOST ?= 127.0.0.1
PORT ?= 8000

up: setup
	$(VENV)/bin/mol up --host $(HOST) --port $(PORT)

demo: setup
	$(VENV)/bin/mol train examples/demo-mol.yaml --out runs/demo-mol --resume

test: setup
	bash scripts/start-services
	bash scripts/ensure-chromium
	bash scripts/ensure-firefox
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2  # two processes: much of the suite waits on servers, browsers and subprocesses

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .mol .pytest_cache .ruff_cache
