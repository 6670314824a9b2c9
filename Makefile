# Two commands matter: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench docs lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==26.3
	# torch first and pinned, so no dependency pulls a CUDA build; every other version comes from constraints.txt,
	# so pip never backtracks (the loose extras alone end in resolution-too-deep)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

run: $(STAMP)  ## export the sample MobileNetV2 to every device profile and print the report
	$(BIN)/edge-sdk export samples/mobilenet_v2.py:build --device all --out out/

test: $(STAMP)  ## the whole test suite, after ruff and the import-layer contracts (both configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadfile  # two workers, one test file each (module fixtures stay per file)

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## heavy measurements on real pretrained models (not part of make test)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python -m benchmarks.passes_table  # docs/passes.md's digits table, measured on this machine
	$(BIN)/python benchmarks/labeled_accuracy.py  # top-1 / Spearman fp32 vs INT8 with intervals (docs/accuracy.md)
	$(BIN)/python benchmarks/llm.py  # int4 LLM decode tok/s vs torch eager fp32 generate() (out/bench-llm)
	$(BIN)/python benchmarks/zoo.py  # every zoo architecture x target x fp32/INT8: parity or the error (docs/zoo.md)
	$(BIN)/python benchmarks/optimize.py  # sdk.optimize vs each runtime's default path (docs/optimize.md)

docs: $(STAMP)  ## build the documentation site into site/ (MkDocs Material); fails on any broken link
	$(BIN)/mkdocs build --strict

# Re-resolve every extra from scratch and write constraints.txt. The two hints steer pip past the one conflict
# (xdsl, via litert-torch, caps typing-extensions below 4.13; newer pydantic needs more).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip==26.3 && .venv-lock/bin/pip install --quiet torch==2.13.0
	printf 'typing-extensions==4.12.2\npydantic==2.10.6\n' > .venv-lock/hints.txt
	.venv-lock/bin/pip install --quiet -c .venv-lock/hints.txt ".[all,dev,bench]"
	{ sed -n '1,/^# Regenerate/p' constraints.txt; .venv-lock/bin/pip freeze --exclude edge-sdk | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

clean:
	rm -rf out build dist *.egg-info .pytest_cache
