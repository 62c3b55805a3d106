# crushcell: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The Sparkplug B decoder the tests check our encoder with (tests/sparkplug/spb_decode.py) lives in a
# venv of its own: pysparkplug pins paho-mqtt<2, and ours runs on paho-mqtt 2.
SPB_VENV  ?= .venv-spb
SPB_PY    := $(SPB_VENV)/bin/python
SPB_STAMP := $(SPB_VENV)/.installed-stamp
SPEED  ?= 10

.PHONY: run test lint bench mutation docs clean mosquitto protoc deploy-lint check-arm64

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## .venv-spb/.installed-stamp: the independent Sparkplug B decoder venv (pysparkplug, its protobuf, paho-mqtt<2)
# Only tests/sparkplug/spb_decode.py runs in it, as a subprocess of the tests (tests/sparkplug/decoder.py).
# Another venv than .venv-spb: make test SPB_VENV=... CRUSHCELL_SPB_PYTHON=$PWD/.../bin/python
$(SPB_STAMP):
	$(PYTHON) -m venv $(SPB_VENV)
	$(SPB_PY) -m pip install --quiet --upgrade pip
	$(SPB_PY) -m pip install --quiet 'pysparkplug==0.6.1'
	@touch $(SPB_STAMP)

## run: the controller on the simulated cell, normal-shift scenario, $(SPEED)x real time
# The demo starts from a clean cell every time: its state dir (latch, journal, outbox) is fresh.
# A real controller keeps its --state-dir, so a latched trip survives a restart.
run: $(STAMP)
	@$(PY) -c 'import tomllib; s = tomllib.load(open("config/scenarios/normal_shift.toml", "rb")); n, d = s["name"], s["duration_s"]; print(f"make run: plays \"{n}\" (config/scenarios/normal_shift.toml) on the simulated cell: {d:g} s at $(SPEED)x real time, {d / $(SPEED) / 60:.0f} min")'
	@$(PY) -c 'import tomllib; c = tomllib.load(open("config/cell.toml", "rb")); m = c.get("mqtt", {}); h, p, t, i = m.get("host", "127.0.0.1"), m.get("port", 1883), m.get("topic_prefix", "crushcell"), c["cell"]["id"]; print(f"make run: publishes to the MQTT broker {h}:{p} under {t}/{i}/ when one runs there (watch: mosquitto_sub -v -t \"{t}/#\"), and runs the same without one" if m.get("enabled", True) else "make run: the MQTT plant link is off in config/cell.toml")'
	@echo "make run: state dir var/demo, made fresh (journal: crushcell journal --state-dir var/demo; panel: crushcell panel reset --state-dir var/demo)"
	@echo "make run: stop with Ctrl-C (every output is forced to its safe state); another speed: make run SPEED=30"
	rm -rf var/demo
	$(VENV)/bin/crushcell run --config config/cell.toml --hal sim --state-dir var/demo \
		--scenario config/scenarios/normal_shift.toml --speed $(SPEED)

## test: install what the tests need (Python deps, Mosquitto) and run them all
# Two workers (pytest-xdist), each taking a whole test file at a time: half the wall time on two
# cores, and a file's module fixtures and test order stay as written. TEST_JOBS=0: one process.
# HYPOTHESIS_PROFILE=thorough: ten times the property-test examples and the soak's whole week.
TEST_JOBS ?= 2
test: $(STAMP) $(SPB_STAMP) mosquitto protoc
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

mosquitto:
	@tools/ensure-mosquitto.sh

protoc:
	@tools/ensure-protoc.sh

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

## bench: every benchmark (or BENCH="bench_memory bench_mqtt"), figures with PASS/MISS, bench/results.json
bench: $(STAMP) mosquitto
	$(PY) -m bench $(BENCH)

## mutation: mutmut 3 on the safety core (controller/core.py, health.py); see [tool.mutmut] in pyproject
mutation: $(STAMP)
	$(VENV)/bin/mutmut run --max-children $$(nproc)
	$(VENV)/bin/mutmut results > mutants/results.txt || true
	$(PY) tools/mutation_score.py

## docs: regenerate the cause-and-effect matrix embedded in docs/safety.md and the README's trend chart
docs: $(STAMP)
	$(PY) -c "from controller import causeeffect as c; c.update_doc('docs/safety.md', 'config/cell.toml')"
	$(VENV)/bin/crushcell simulate config/scenarios/thermal_runaway.toml --config config/cell.toml \
		--events /dev/null --plot docs/trend-thermal-runaway.png

clean:
	rm -rf $(VENV) $(SPB_VENV) build dist *.egg-info .pytest_cache .ruff_cache mutants
