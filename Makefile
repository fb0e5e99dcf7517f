# The two commands of the README: `make demo` and `make test`. Both set up what is missing first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo test lab-test lint notebook clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/ispcp-recover demo --workdir build/demo --report-dir reports

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m ispcp_lib.runbook.notebook_build --check
	$(PY) -m pytest -q --ignore=tests/lab

# Real ispCP servers built from the release tarballs in ../shared/ispcp-src (or ISPCP_LAB_SOURCES).
lab-test: bootstrap
	$(PY) -m pytest -q tests/lab

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

notebook: bootstrap
	$(PY) -m ispcp_lib.runbook.notebook_build

clean:
	rm -rf build reports/*.html reports/*.ipynb reports/*.json
