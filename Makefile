# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   - set up .venv and run the workflow on the embedded demo cohort
#   make test   - set up .venv and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo test test-fast lint bench slurm-profile clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --report results/report.html
	@echo "Demo finished: results/cohort/metrics.parquet, results/figure4/, results/report.html"

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

slurm-profile:
	mkdir -p $(HOME)/.config/snakemake/slurm
	cp workflow/profiles/slurm/config.yaml workflow/profiles/slurm/partitions.yaml $(HOME)/.config/snakemake/slurm/
	@echo "Installed the 'slurm' profile in ~/.config/snakemake/slurm: set slurm_partition and slurm_account there."

clean:
	rm -rf results .snakemake
