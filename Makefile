# Two commands do all set-up: `make demo` and `make test`. Each creates or
# updates .venv from pyproject.toml when that file is newer than the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coupler-installed

.PHONY: demo test test-gpu venv clean

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

# Only on a machine with a GPU (and JAX built for it): fails there if the workers find none.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu tests/gpu

clean:
	rm -rf $(VENV) artifacts .pytest_cache
