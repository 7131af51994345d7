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

# The tests that start no cluster in the test process and need no service (physics/ and
# learners/, which never import Dask, the demo table, the in-process benchmarks, the runtime's
# sans-IO protocol and wire tests, and the docs' code blocks, the site and the wheel, whose
# scripts run in subprocesses of their own) spend most of their time compiling XLA, generating
# hypothesis cases or waiting for a subprocess: they run in TEST_PROCS processes (pytest-xdist),
# with any cluster start in them refused (COUPLER_TEST_NO_CLUSTER, tests/conftest.py), then the
# rest, whose clusters, emulated hosts and Slurm jobs share the machine, one test at a time. Both
# parts always run; the target fails if either does (or collects no tests). A test file of
# neither list runs in the second part: found by running the second part with
# COUPLER_TEST_NO_CLUSTER=1 (the files that pass whole).
TEST_PROCS ?= 2
PURE_TESTS := tests/learners tests/physics tests/demos tests/benchmarks/test_augmentation_speedup_bench.py \
	tests/benchmarks/test_modulation_bench.py tests/benchmarks/test_subgrid_apriori_bench.py \
	tests/benchmarks/test_xhost_bench.py tests/benchmarks/test_data_port_bench.py tests/benchmarks/test_correction_bench.py \
	tests/reliability/test_property.py tests/reliability/test_fencing.py tests/test_layering.py tests/docs/test_commands.py tests/runtime/test_settings_spelling.py \
	tests/docs/test_code_blocks.py tests/docs/test_site.py tests/system/test_wheel.py \
	tests/actors/test_run_loop.py tests/actors/test_hand_outs.py tests/actors/test_busy.py tests/actors/test_checkpointer.py tests/actors/test_port_meta.py \
	$(addprefix tests/runtime/test_,read_role.py receipts.py buffers.py send_window.py spin.py queue_protocol.py \
	lineage.py outbox.py wire.py driver_resend.py cancel.py gathering.py routing_table.py status.py broker.py \
	endpoint_parts.py message.py keeping.py tallies.py actor_ref.py sender.py report_check.py journal.py)

test: $(STAMP)
	COUPLER_TEST_NO_CLUSTER=1 $(PY) -m pytest -n $(TEST_PROCS) $(PURE_TESTS); pure=$$?; \
	$(PY) -m pytest $(addprefix --ignore=,$(PURE_TESTS)); rest=$$?; \
	test $$pure -eq 0 && test $$rest -eq 0

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
