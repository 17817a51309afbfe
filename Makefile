# Two commands: `make bench` runs the benchmark on the embedded default, `make test` passes the tests.
# Each creates .venv and installs on first use.
PY := .venv/bin/python
export OMP_WAIT_POLICY ?= PASSIVE
VENV_STAMP := .venv/.installed

.PHONY: bench test install ui clean

$(VENV_STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,onnx]'
	touch $(VENV_STAMP)

install: $(VENV_STAMP)

bench: $(VENV_STAMP)
	.venv/bin/prunebench benchmark

test: $(VENV_STAMP)
	$(PY) -m pytest

ui: $(VENV_STAMP)
	.venv/bin/prunebench ui

clean:
	rm -rf .venv models/cache reports mlflow.db mlruns
