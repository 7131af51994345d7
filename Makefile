# Two commands do all set-up: `make demo` and `make test`. Each creates or
# updates .venv from pyproject.toml when that file is newer than the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coupler-installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/augmentation.py

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) artifacts .pytest_cache
