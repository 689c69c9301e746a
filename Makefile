# The AttFC course: two commands, `make lab` and `make test`.
# Both build the virtual environment first; pyproject.toml is the one source of versions.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 8888
LAB_ARGS ?=

STAMP := $(VENV)/.installed
VENV_PYTHON := $(VENV)/bin/python
# root (containers, CI images) must opt in explicitly or JupyterLab refuses to start
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
NBVAL_ARGS := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

.DEFAULT_GOAL := help
.PHONY: help venv lab test notebooks clean

help:
	@echo "make lab    set up $(VENV) and open JupyterLab on notebooks/ (PORT=$(PORT), LAB_ARGS=...)"
	@echo "make test   set up $(VENV), run the unit tests and re-run every notebook with nbval"
	@echo "make venv   only set up $(VENV): pip install -e '.[course]'"
	@echo "make notebooks  re-run every lesson top to bottom and store its outputs (NOTEBOOKS=... for some)"
	@echo "make clean  remove $(VENV) and caches"

venv: $(STAMP)

# The stamp makes a re-run a no-op until pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[course]'
	touch $@

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 \
		--port=$(PORT) --no-browser $(ALLOW_ROOT) $(LAB_ARGS)

# One pytest run: with --nbval pytest still collects tests/test_*.py as usual and
# adds each notebooks/*.ipynb as a file of cells; --nbval-current-env runs the
# notebooks in this venv rather than whatever kernel their metadata names.
# MPLBACKEND is cleared so the notebooks' kernels keep the inline backend (their stored
# figure outputs are compared); tests/conftest.py puts the unit tests on Agg. -rs lists every
# skipped test with its reason (the CUDA tests on a CPU; the browser test without chromium).
test: $(STAMP)
	env -u MPLBACKEND $(VENV_PYTHON) -m pytest tests notebooks $(NBVAL_ARGS) -q -rs -p no:cacheprovider

# Re-execute lessons in a fresh kernel and store their outputs (and widget state), without
# per-cell timing metadata, so a re-run only changes what the lesson shows.
NOTEBOOKS ?= notebooks/*.ipynb
notebooks: $(STAMP)
	env -u MPLBACKEND $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=900 --ExecutePreprocessor.record_timing=False $(NOTEBOOKS)

# Remove the venv only if it looks like one, so a stray VENV=/usr cannot wipe a system.
clean:
	if [ -f $(VENV)/pyvenv.cfg ]; then rm -rf $(VENV); else rm -f $(STAMP); fi
	find . \( -path ./.git -o -path ./.venv \) -prune -o \( -name __pycache__ \
		-o -name .pytest_cache -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +
	rm -rf *.egg-info build
