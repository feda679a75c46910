# adaptguard: `make run` runs the default experiment, `make test` runs the tests.
# Both install what is missing first (a .venv with pinned torch; nothing else is needed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONSTRAINTS := constraints.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | cksum | cut -d' ' -f1)
ARGS   ?= experiment=quickstart
PYTEST_ARGS ?=
# torch's CPU build (about 0.2 GB against 5.5 GB of CUDA wheels) where no NVIDIA driver is present and PyTorch's
# CPU index answers; otherwise PyPI's build. TORCH_INDEX= (empty) always takes PyPI's.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
TORCH  := torch==2.14.1 torchvision==0.29.1
# one pytest-xdist worker per usable CPU (its affinity and any container quota: tests/conftest.py; at
# most 4, for memory), whole files per worker (their fixtures are shared), handed out in collection
# order (tests/conftest.py puts the longest first)
PYTEST := $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-fast bench gpu-check results lint format docs pretrain clean constraints check-floors

PAGES := compare_watermarks compare_freezing compare_freezing_none compare_freezing_imma forgetting_curves aiao_ablation

# $(call venv_with_torch,<venv>): a venv holding the pinned torch (the CPU build where TORCH_INDEX says so)
define venv_with_torch
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(1)/bin/python -m pip install -q --no-compile --retries 0 --timeout 20 --index-url $(TORCH_INDEX) $(TORCH) \
		|| echo "make: $(TORCH_INDEX) did not answer; installing PyPI's torch build" >&2)
	$(1)/bin/python -m pip install -q --no-compile $(TORCH)
endef

# $(call byte_compile,<venv>): byte-code for every installed module and ours, once, on all cores (pip's own is
# one core). Where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines) Python never writes it,
# and every process (each test subprocess, DDP rank, sweep job) would compile the ~5000 modules a run
# imports again: 16.2 s -> 7.5 s to import adaptguard.cli.run on 2 cores. A file that fails only stays uncompiled.
define byte_compile
	$(1)/bin/python -m compileall -q -j 0 -x '/tests?/|py31[2-9]_' \
		"$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" src > /dev/null \
		|| echo "make: some modules did not byte-compile; they compile at each import instead" >&2
endef

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(call venv_with_torch,$(VENV))
	$(BIN)/python -m pip install -q --no-compile -c $(CONSTRAINTS) -e '.[dev]'
	$(call byte_compile,$(VENV))
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

gpu-check: install  ## the SD code paths at SD 1.5's and SD3-medium's size on a CUDA GPU, timed -> bench/gpu_check*.json
	$(BIN)/python -m benchmarks.gpu_check --profile --out bench/gpu_check.json
	$(BIN)/python -m benchmarks.gpu_check --model sd3 --out bench/gpu_check_sd3.json

results: install  ## docs/results.md: the six page sweeps (hours on 2 CPU cores; a rerun resumes), then the report; a failed sweep: the others still run, no report, exit 1
	failed=""; for p in $(PAGES); do $(BIN)/python -m experiments.run -m experiment=page/$$p || failed="$$failed $$p"; done; \
	if [ -n "$$failed" ]; then echo "make results: sweeps with failed jobs:$$failed (docs/results.md left as it was; rerun to resume)" >&2; exit 1; fi; \
	$(BIN)/python -m experiments.report $(addprefix multirun/page/,$(PAGES)) --out docs/results \
		--intro docs/results-intro.md

lint: install  ## ruff, and import-linter's layer contracts (pyproject.toml)
	$(BIN)/ruff check src experiments tests benchmarks examples reference tools
	$(BIN)/ruff format --check src experiments tests benchmarks examples reference tools
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix src experiments tests benchmarks examples reference tools
	$(BIN)/ruff format src experiments tests benchmarks examples reference tools

docs: install  ## the key tables of docs/ from the config classes' field docs (tests/test_docs.py fails when stale)
	$(BIN)/python -m adaptguard.cli.reference

pretrain: install  ## (re)make the shipped base weights (latent tiny/micro, pixel, the DiTs) and shapes feature extractors
	$(BIN)/adaptguard pretrain model=tiny
	$(BIN)/adaptguard pretrain model=micro
	$(BIN)/adaptguard pretrain model=pixel
	$(BIN)/adaptguard pretrain model=pixel_micro
	$(BIN)/adaptguard pretrain model=micro_dit
	$(BIN)/adaptguard pretrain model=tiny_dit
	$(BIN)/adaptguard pretrain model=tiny experiment=freeze +features_only=true
	$(BIN)/adaptguard pretrain model=micro experiment=freeze +features_only=true
	$(BIN)/adaptguard pretrain model=pixel_micro experiment=freeze +features_only=true

constraints:  ## refresh constraints.txt: resolve pyproject.toml afresh in a scratch venv and pin what it installed
	rm -rf .venv-constraints
	$(call venv_with_torch,.venv-constraints)
	.venv-constraints/bin/python -m pip install -q --no-compile -e '.[dev]'
	{ sed -n '1,2p' $(CONSTRAINTS); .venv-constraints/bin/python -m pip freeze --exclude-editable \
		| grep -v '^adaptguard' | sed 's/+cpu$$//'; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints

check-floors:  ## the declared lower bounds (tools/floors.py) in a fresh venv, then the fast tests (not in CI)
	rm -rf .venv-floors
	$(call venv_with_torch,.venv-floors)
	$(PYTHON) tools/floors.py > .venv-floors/floors.txt
	.venv-floors/bin/python -m pip install -q --no-compile -c .venv-floors/floors.txt -e '.[dev]'
	.venv-floors/bin/python -m pip freeze --exclude-editable > .venv-floors/installed.txt
	.venv-floors/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
