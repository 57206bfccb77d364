# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   - set up .venv and run the workflow on the embedded demo cohort
#   make test   - set up .venv and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo test test-fast lint install-check bench slurm-profile clean

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
	$(BIN)/snakemake --lint

# The package installs on its own: a copy of the working tree (git's files, no ignored ones) is
# installed with `pip install` into a fresh venv (pyproject's ranges, held to the pins of
# requirements.txt), the copy is deleted, and outside the checkout the shipped models segment a
# phantom and super-resolve a thick one (no --model, no $HIPAS_MODEL).
CHECK_DIR ?= /tmp/hipas-install-check
CHECK_RUN = cd $(CHECK_DIR)/run && env -u HIPAS_MODEL -u PYTHONPATH $(CHECK_DIR)/venv/bin

install-check:
	rm -rf $(CHECK_DIR) && mkdir -p $(CHECK_DIR)/src $(CHECK_DIR)/run
	git ls-files -z --cached --others --exclude-standard | tar -c --null --ignore-failed-read -T - | tar -x -C $(CHECK_DIR)/src
	sed 's/\[[^]]*\]//' requirements.txt > $(CHECK_DIR)/constraints.txt  # pip constraints take no extras
	$(PYTHON) -m venv $(CHECK_DIR)/venv
	$(CHECK_DIR)/venv/bin/pip install --quiet -c $(CHECK_DIR)/constraints.txt $(CHECK_DIR)/src
	rm -rf $(CHECK_DIR)/src
	$(CHECK_RUN)/hipas phantom --seed 3 --size small --out ph
	$(CHECK_RUN)/hipas segment -i ph/ct.nii.gz -o seg.nii.gz --device cpu
	$(CHECK_RUN)/hipas phantom --seed 3 --size small --slice-thickness 3 --out thick
	$(CHECK_RUN)/hipas super-resolve -i thick/ct.nii.gz -o sr.nii.gz --device cpu --quiet
	$(CHECK_RUN)/python -c 'import json, pathlib, numpy, SimpleITK as sitk, hipas_core, hipas_models; \
	  venv = pathlib.Path("$(CHECK_DIR)/venv").resolve(); \
	  assert all(venv in pathlib.Path(m.__file__).resolve().parents for m in (hipas_core, hipas_models)); \
	  ct, seg = sitk.ReadImage("ph/ct.nii.gz"), sitk.ReadImage("seg.nii.gz"); \
	  assert seg.GetSize() == ct.GetSize() and {1, 2} <= set(numpy.unique(sitk.GetArrayViewFromImage(seg)).tolist()); \
	  assert json.loads(pathlib.Path("sr.json").read_text())["copied_through"] is False'
	rm -rf $(CHECK_DIR)
	@echo "install check passed: a fresh venv, pip install, hipas segment and super-resolve with the shipped models"

slurm-profile:
	mkdir -p $(HOME)/.config/snakemake/slurm
	cp workflow/profiles/slurm/config.yaml workflow/profiles/slurm/partitions.yaml $(HOME)/.config/snakemake/slurm/
	@echo "Installed the 'slurm' profile in ~/.config/snakemake/slurm: set slurm_partition and slurm_account there."

clean:
	rm -rf results .snakemake
