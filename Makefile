# crushcell: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SPEED  ?= 10

.PHONY: run test lint bench mutation docs clean mosquitto deploy-lint check-arm64

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: the controller on the simulated cell, normal-shift scenario, $(SPEED)x real time
# The demo starts from a clean cell every time: its state dir (latch, journal, outbox) is fresh.
# A real controller keeps its --state-dir, so a latched trip survives a restart.
run: $(STAMP)
	rm -rf var/demo
	$(VENV)/bin/crushcell run --config config/cell.toml --hal sim --state-dir var/demo \
		--scenario config/scenarios/normal_shift.toml --speed $(SPEED)

## test: install what the tests need (Python deps, Mosquitto) and run them all
test: $(STAMP) mosquitto
	$(PY) -m pytest -q

mosquitto:
	@tools/ensure-mosquitto.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## deploy-lint: shellcheck the deploy scripts
deploy-lint:
	shellcheck deploy/*.sh tools/*.sh

## check-arm64: build the wheel and run it in an emulated arm64 Debian root (slow, needs root)
check-arm64:
	deploy/check-arm64.sh

## check-systemd: install with deploy/install.sh and check the service under a real systemd
## (Debian 12 booted in systemd-nspawn; needs root and the network; about 2 minutes once cached)
.PHONY: check-systemd
check-systemd:
	deploy/check-systemd.sh

bench: $(STAMP) mosquitto
	$(PY) -m bench

## mutation: mutmut 3 on the safety core (controller/core.py, health.py); see [tool.mutmut] in pyproject
mutation: $(STAMP)
	$(VENV)/bin/mutmut run --max-children $$(nproc)
	$(VENV)/bin/mutmut results > mutants/results.txt || true
	$(PY) tools/mutation_score.py

## docs: regenerate the cause-and-effect matrix embedded in docs/safety.md
docs: $(STAMP)
	$(PY) -c "from controller import causeeffect as c; c.update_doc('docs/safety.md', 'config/cell.toml')"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache mutants
