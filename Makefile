# The two commands of the README: `make demo` and `make test`. Both set up what is missing first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo test by-hand-test reliability-test lab-test lint notebook clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/ispcp-recover demo --workdir build/demo --report-dir reports

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m ispcp_lib.runbook.notebook_build --check
	$(PY) -m pytest -q --ignore=tests/lab --ignore=tests/reliability --ignore=tests/runbook/test_by_hand_jupyterlab.py

# A recovery stepped through in JupyterLab by headless Chromium, against a headless run (about 4 min).
by-hand-test: bootstrap
	$(PY) -m pytest -q tests/runbook/test_by_hand_jupyterlab.py

# Kills at operation boundaries with resume (faults.py), and the bad-backup corpus: about 15 minutes.
reliability-test: bootstrap
	$(PY) -m pytest -q tests/reliability
	$(PY) -m tests.reliability.faults

# Real ispCP servers built from the release tarballs in ../shared/ispcp-src (or ISPCP_LAB_SOURCES).
lab-test: bootstrap
	$(PY) -m pytest -q --durations=15 tests/lab

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

notebook: bootstrap
	$(PY) -m ispcp_lib.runbook.notebook_build

clean:
	rm -rf build reports/*.html reports/*.ipynb reports/*.json
