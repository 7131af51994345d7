# Two commands do all set-up: `make demo` and `make test`. Each creates or
# updates .venv from pyproject.toml when that file is newer than the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coupler-installed
DOCS_STAMP := $(VENV)/.coupler-docs-installed

.PHONY: demo test test-gpu venv docs docs-serve clean

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

# The site in docs/ (mkdocs.yml) into site/; --strict fails on broken links and missing API references.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $(DOCS_STAMP)

# Only on a machine with a GPU (and JAX built for it): fails there if the workers find none.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu tests/gpu

clean:
	rm -rf $(VENV) artifacts .pytest_cache site
