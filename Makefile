# Two commands for a new user: `make serve` runs the gateway, `make test` runs the tests.
# Both create .venv in the repository root and install what they need into it.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint install-serve install-dev clean

$(VENV)/bin/activate:
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install -e '.[serve]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install -e '.[serve,train,dev]'
	touch $@ $(VENV)/.serve-installed

install-serve: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed

serve: install-serve
	$(VENV)/bin/occ serve --host $(HOST) --port $(PORT)

test: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
