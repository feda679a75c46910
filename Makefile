# adaptguard: `make run` runs the default experiment, `make test` runs the tests.
# Both install what is missing first (a .venv with pinned torch; nothing else is needed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
ARGS   ?= experiment=quickstart
PYTEST_ARGS ?=
# one pytest-xdist worker per usable CPU (its affinity and any container quota: tests/conftest.py; at
# most 4, for memory), whole files per worker (their fixtures are shared), handed out in collection
# order (tests/conftest.py puts the longest first)
PYTEST := $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-fast bench gpu-check results lint format docs pretrain clean

PAGES := compare_watermarks compare_freezing compare_freezing_none forgetting_curves aiao_ablation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

run: install  ## AIAO x LoRA on the latent tiny model (163 s from an empty cache on 2 cores) (ARGS="defense=backdoor attack=lora" for others)
	$(BIN)/python -m experiments.run $(ARGS)

test: install  ## every test, the end-to-end tiny-model experiments included
	$(PYTEST) $(PYTEST_ARGS)

test-fast: install  ## skip the slow end-to-end tests
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

bench: install  ## speed and memory targets -> bench/results.json
	$(BIN)/python -m benchmarks.bench --out bench/results.json

gpu-check: install  ## the SD code path at SD 1.5's size on a CUDA GPU, timed -> bench/gpu_check.json
	$(BIN)/python -m benchmarks.gpu_check --out bench/gpu_check.json

results: install  ## docs/results.md: the five page sweeps (hours on 2 CPU cores; a rerun resumes), then the report; a failed sweep: the others still run, no report, exit 1
	failed=""; for p in $(PAGES); do $(BIN)/python -m experiments.run -m experiment=page/$$p || failed="$$failed $$p"; done; \
	if [ -n "$$failed" ]; then echo "make results: sweeps with failed jobs:$$failed (docs/results.md left as it was; rerun to resume)" >&2; exit 1; fi; \
	$(BIN)/python -m experiments.report $(addprefix multirun/page/,$(PAGES)) --out docs/results \
		--intro docs/results-intro.md

lint: install  ## ruff, and import-linter's layer contracts (pyproject.toml)
	$(BIN)/ruff check src experiments tests benchmarks examples reference
	$(BIN)/ruff format --check src experiments tests benchmarks examples reference
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix src experiments tests benchmarks examples reference
	$(BIN)/ruff format src experiments tests benchmarks examples reference

docs: install  ## the key tables of docs/ from the config classes' field docs (tests/test_docs.py fails when stale)
	$(BIN)/python -m adaptguard.cli.reference

pretrain: install  ## (re)make the shipped base weights (latent tiny/micro, pixel) and shapes feature extractors
	$(BIN)/adaptguard pretrain model=tiny
	$(BIN)/adaptguard pretrain model=micro
	$(BIN)/adaptguard pretrain model=pixel
	$(BIN)/adaptguard pretrain model=pixel_micro
	$(BIN)/adaptguard pretrain model=tiny experiment=freeze +features_only=true
	$(BIN)/adaptguard pretrain model=micro experiment=freeze +features_only=true
	$(BIN)/adaptguard pretrain model=pixel_micro experiment=freeze +features_only=true

clean:
	rm -rf outputs multirun .pytest_cache
