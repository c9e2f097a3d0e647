# Two commands for a new user: `make serve` runs the gateway, `make test` runs the tests.
# Both create .venv in the repository root and install what they need into it.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint install-serve install-dev perf-analyzer demo-data demo-model demo-model-4d demo-model-2d clean

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

# NVIDIA's perf_analyzer (benchmarks/open_loop.py measures bare Triton with it): from the last tritonclient
# wheel that ships the binary, with its two shared libraries (scripts/install_perf_analyzer.sh).
$(VENV)/bin/perf_analyzer: scripts/install_perf_analyzer.sh | $(VENV)/.dev-installed
	scripts/install_perf_analyzer.sh $(VENV)
perf-analyzer: $(VENV)/bin/perf_analyzer

serve: install-serve
	$(VENV)/bin/occ serve --host $(HOST) --port $(PORT)

test: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

# The demo models' recipes (model_repository/<model>/*/model_card.md): a synthetic world (~20 min on 2
# cores), then for each model `occ train` with its config's recipe, evaluation on the held-out scenes
# (a temporal model with the frames before each one) and export into a new version of
# model_repository/<model>. On 2 idle cores: demo-model (demo-tiny, 3D labels, 2,550 iterations, ~20 min),
# demo-model-4d (demo-tiny-4d-stereo, three frames, 2,040 iterations), demo-model-2d (demo-tiny-2d, 2D
# labels only, 2,550 iterations); the cards give the measured times.
DEMO_DATA ?= work/synth-demo

# $(call demo_model,config,final iteration): train into work/<config>, evaluate, export.
define demo_model
	$(VENV)/bin/occ train --config $(1) --data-root $(DEMO_DATA) --work-dir work/$(1) --num-workers 1
	$(VENV)/bin/occ eval --config $(1) --checkpoint work/$(1)/iter_$(2).pt --data-root $(DEMO_DATA) \
		--json work/$(1)/eval.json
	$(VENV)/bin/occ export --config $(1) --checkpoint work/$(1)/iter_$(2).pt --repository model_repository
endef

demo-data: install-dev
	$(VENV)/bin/occ synth --out $(DEMO_DATA) --scenes 40 --frames 5 --val-scenes 6 --seed 2026
	$(VENV)/bin/occ prepare --data-root $(DEMO_DATA)

demo-model: install-dev
	$(call demo_model,demo-tiny,0002550)

demo-model-4d: install-dev
	$(call demo_model,demo-tiny-4d-stereo,0002040)

demo-model-2d: install-dev
	$(call demo_model,demo-tiny-2d,0002550)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
