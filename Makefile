# The README's two commands: `make run` and `make test` (both set up first).
PY := .venv/bin/python
export PATH := $(CURDIR)/bin:$(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test test-slow gate-soak lint bench dashboards clean

GATE_SOAK_N ?= 3

setup:
	@scripts/setup.sh

run: setup
	$(PY) -m chaosbed run smoke --slo slos/smoke.yaml

lint: setup
	$(PY) -m ruff check chaosbed rundir services loadtests faults slos dashboards benchmarks examples tests
	$(PY) -m mypy chaosbed rundir services loadtests faults slos dashboards benchmarks examples

test: lint
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q

# every shipped scenario GATE_SOAK_N times with slos/release.yaml on the correct build: false
# alarms per scenario and objective (runs/gate-soak.json); exit 1 if any
gate-soak: setup
	$(PY) -m benchmarks.gate_soak --n $(GATE_SOAK_N)

bench: setup
	$(PY) -m chaosbed.bench

dashboards: setup
	$(PY) -m chaosbed dashboards

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
