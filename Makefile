# Two commands for a new user: `make serve` runs the gateway, `make test` runs the tests.
# Both create .venv in the repository root and install what they need into it.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint install-serve install-dev demo-data demo-model clean

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

# The demo model's recipe (model_repository/demo-tiny/*/model_card.md): a synthetic world (~20 min on
# 2 cores), then `occ train` with demo-tiny's recipe (2,550 iterations, ~26 min on 2 idle cores),
# evaluation on the held-out scenes, and export into a new version of model_repository/demo-tiny.
DEMO_DATA ?= work/synth-demo
DEMO_RUN ?= work/demo-tiny

demo-data: install-dev
	$(VENV)/bin/occ synth --out $(DEMO_DATA) --scenes 40 --frames 5 --val-scenes 6 --seed 2026
	$(VENV)/bin/occ prepare --data-root $(DEMO_DATA)

demo-model: install-dev
	$(VENV)/bin/occ train --config demo-tiny --data-root $(DEMO_DATA) --work-dir $(DEMO_RUN) --num-workers 1
	$(VENV)/bin/occ eval --config demo-tiny --checkpoint $(DEMO_RUN)/iter_0002550.pt --data-root $(DEMO_DATA) \
		--json $(DEMO_RUN)/eval.json
	$(VENV)/bin/occ export --config demo-tiny --checkpoint $(DEMO_RUN)/iter_0002550.pt --repository model_repository

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
