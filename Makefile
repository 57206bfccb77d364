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
	$(BIN)/snakemake --cores $(CORES) --printshellcmds
	@echo "Demo finished: results/cohort/metrics.parquet, results/figure4/, results/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

slurm-profile:
	mkdir -p $(HOME)/.config/snakemake/slurm
	cp workflow/profiles/slurm/config.yaml $(HOME)/.config/snakemake/slurm/config.yaml
	@echo "Installed the 'slurm' profile in ~/.config/snakemake/slurm: set slurm_partition there."

clean:
	rm -rf results .snakemake
