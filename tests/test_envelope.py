"""Safety envelopes: no configuration can switch a protection off (issue 9, item 2.1).

The bounds come from the hazards in the process-safety reference (NFPA 69's 60 % of the H2 LOC,
50 % of the H2 LFL, UL's 20 K/min runaway, a leak passing the O2 trip about 100 s after it starts,
valves that must fail open). These tests check the table against those numbers, check that the
shipped config lies inside it, that a value just outside each bound is refused by both readers
(the config layer and the core's check_params), and that check_params gives the same answers
under MicroPython.
"""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cellspec.configtools import fmt
from cellspec.names import O2_SENSORS, OUTPUTS, SENSORS
from controller import config, envelope

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "cell.toml"
NAME = "config/cell.toml"
ROWS = {row[0]: row for row in envelope.ENVELOPES}

_spec = importlib.util.spec_from_file_location("run_envelope_tests",
                                               ROOT / "tests" / "micropython" / "run_envelope_tests.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)


def toml():
    return tomllib.loads(DEFAULT.read_text())


def params():
    return json.loads(json.dumps(config.load(DEFAULT).core_params()))


def toml_get(data, key):
    node = data
    for part in key.split("."):
        node = node[part]
    return node


def toml_set(data, key, value):
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node[part]
    node[last] = value


def param_set(p, key, value):
    """Put a value given in config units where core_params() keeps `key` (envelope.PARAM_PATHS and
    the layout documented there)."""
    for k, path, scale in envelope.PARAM_PATHS:
        if k == key:
            node = p
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value * scale
            return
    parts = key.split(".")
    if parts[0] == "thresholds":
        p["thresholds"][parts[1]][parts[2]] = value
    elif parts[0] == "timers":
        p["timers_ms"][parts[1]] = value * 1000
    elif parts[0] == "cell":
        p[parts[1]] = value
    elif parts[0] == "outputs":
        p["safe"][OUTPUTS.index(parts[1])] = value
    else:
        row = next(r for r in p["sensors"] if r[0] == parts[1])
        if parts[2] == "range":
            row[1], row[2] = value
        else:
            row[{"stale_s": 3, "stuck_s": 4, "resolution": 5}[parts[2]]] = (
                value * 1000 if parts[2] != "resolution" else value)


def parse_errors(data):
    try:
        config.parse(data, NAME)
    except config.ConfigError as exc:
        return exc.errors
    return []


# -- the table against the hazards -------------------------------------------------------------
def test_the_envelope_holds_the_cited_limits():
    assert ROWS["thresholds.o2.trip"][2] <= 0.6 * 4.6 + 1e-9       # NFPA 69: 60 % of the H2 LOC
    assert ROWS["thresholds.o2.warning"][2] <= 0.6 * 4.6 + 1e-9
    assert ROWS["thresholds.o2.start_permissive"][2] < 0.6 * 4.6
    assert ROWS["thresholds.h2_cell.trip"][2] <= 0.5 * 4.0            # 50 % of the H2 LFL
    assert ROWS["thresholds.h2_cell.warning"][2] <= 0.5 * 4.0
    assert ROWS["thresholds.lel_cell.trip"][2] <= 50.0                # NFPA 86
    assert ROWS["thresholds.lel_rto.trip"][2] <= 25.0
    assert ROWS["thresholds.hf_room.trip"][2] <= 3.0                  # OSHA PEL
    assert ROWS["thresholds.co_cell.trip"][2] <= 1200.0               # IDLH
    assert ROWS["thresholds.temp_gas.trip"][2] <= 90.0                # SEI decomposition
    assert ROWS["thresholds.temp_rise.trip"][2] <= 20.0               # UL runaway
    for name in O2_SENSORS:                                           # a leak passes the trip at ~100 s
        assert ROWS[f"sensors.{name}.stuck_s"][2] < 100.0
    assert ROWS["voting.o2.frozen_s"][2] < 100.0
    assert ROWS["thresholds.n2_supply.low_low"][1] > 0.0              # 0 bar can never be crossed
    assert ROWS["thresholds.dp_cell.warning_high"][2] <= 0.0          # negative pressure keeps HF in
    for name in SENSORS:                                              # no unbounded range
        lo, hi = ROWS[f"sensors.{name}.range"][1:3]
        assert math.isfinite(lo) and math.isfinite(hi) and hi - lo <= 10000.0


def test_safe_states_follow_the_hazards():
    # Motion and annunciation off with no power; purge and vent fail open.
    assert {name: safe for name, safe, _ in envelope.SAFE_STATES} == {
        "crusher": False, "feed": False, "alarm": False, "horn": False, "n2_purge": True, "vent": True}


def test_every_row_is_well_formed():
    keys = [row[0] for row in envelope.ENVELOPES]
    assert len(keys) == len(set(keys))
    for key, lo, hi, source in envelope.ENVELOPES:
        assert lo < hi, key
        assert source.strip(), key
        assert (key in envelope.INTEGER_KEYS) == (type(lo) is int and type(hi) is int), key
    for name in SENSORS:
        for field in ("range", "stale_s", "stuck_s"):
            assert f"sensors.{name}.{field}" in ROWS


def test_every_rule_reads_only_checked_keys():
    """check_params fetches envelope.keys() only; a rule on any other key would never run."""
    known = set(envelope.keys())
    used = set()
    for key, relation, other, _ in envelope.ORDER:
        assert relation in ("above", "below")
        used |= {key, other}
    used |= set(envelope.HYSTERESIS)
    for table, fields, sensors in envelope.IN_RANGE:
        used |= {f"{table}.{f}" for f in fields} | {f"sensors.{s}.range" for s in sensors}
    for table, sensors, _, _ in envelope.RISES:
        used |= {f"{table}.trip", f"{table}.window_s"} | {f"sensors.{s}.range" for s in sensors}
    used.add("cell.scan_period_s")
    assert used <= known, used - known


# -- the shipped config ------------------------------------------------------------------------
def test_every_default_lies_inside_its_envelope():
    data = toml()
    for key, lo, hi, _ in envelope.ENVELOPES:
        value = toml_get(data, key)      # every bounded key is in the shipped file, with a comment
        if key.endswith(".range"):
            assert lo <= value[0] < value[1] <= hi, key
        else:
            assert lo <= value <= hi, key
    for name, safe, _ in envelope.SAFE_STATES:
        assert data["outputs"][name]["safe"] is safe, name


def test_the_shipped_config_passes_both_readers():
    assert parse_errors(toml()) == []
    assert envelope.check_params(params()) == []


def test_code_defaults_lie_inside_their_envelopes():
    """An older config without the new keys gets these: they must be inside too."""
    for key, default in config.TIMERS.items():
        lo, hi = ROWS[f"timers.{key}"][1:3]
        assert lo <= default <= hi, key


# -- a value just outside each bound ---------------------------------------------------------
def _outside(key, lo, hi):
    """(side, value just below min, value just above max) in config units."""
    if key in envelope.INTEGER_KEYS:
        return lo - 1, hi + 1
    step = lambda v: max(abs(v) * 1e-3, 1e-3)  # noqa: E731
    return lo - step(lo), hi + step(hi)


BOUND_CASES = [(row, side) for row in envelope.ENVELOPES for side in ("min", "max")]


def _case_id(case):
    row, side = case
    return f"{row[0]}-{side}"


@pytest.mark.parametrize("case", BOUND_CASES, ids=[_case_id(c) for c in BOUND_CASES])
def test_a_value_just_outside_each_bound_is_refused(case):
    (key, lo, hi, source), side = case
    below, above = _outside(key, lo, hi)
    data = toml()
    table, name = key.rsplit(".", 1)
    if key.endswith(".range"):
        low, high = toml_get(data, key)
        value = [below, high] if side == "min" else [low, above]
        text = f"must lie within [{envelope.show(lo)}, {envelope.show(hi)}] ({source})"
    else:
        value = below if side == "min" else above
        text = (f"must be at least {envelope.show(lo)} ({source})" if side == "min"
                else f"must be at most {envelope.show(hi)} ({source})")
    toml_set(data, key, value)
    assert f"{NAME}: [{table}] {name} = {fmt(value)} {text}" in parse_errors(data)

    p = params()
    param_set(p, key, tuple(value) if key.endswith(".range") else value)
    problems = envelope.check_params(p)
    assert any(line.startswith(key + " = ") and line.endswith(": " + text) for line in problems), problems


@pytest.mark.parametrize("case", BOUND_CASES, ids=[_case_id(c) for c in BOUND_CASES])
def test_a_value_at_its_bound_is_no_bound_problem_and_both_readers_agree(case):
    (key, lo, hi, source), side = case
    bound = lo if side == "min" else hi
    data = toml()
    if key.endswith(".range"):
        low, high = toml_get(data, key)
        value = [bound, high] if side == "min" else [low, bound]
        if not value[0] < value[1]:
            pytest.skip("the default range lies entirely beyond this bound")
    else:
        value = bound
    toml_set(data, key, value)
    errors = parse_errors(data)
    table, name = key.rsplit(".", 1)
    bound_texts = (f"must be at least {envelope.show(lo)} ({source})",
                   f"must be at most {envelope.show(hi)} ({source})", "must lie within [")
    assert not [e for e in errors if f"[{table}] {name} = " in e and any(t in e for t in bound_texts)]
    # Other rules may refuse it (a trip at its minimum below the default warning); when they do,
    # the core's check refuses it too, and when config accepts it, so does the core.
    p = params()
    param_set(p, key, tuple(value) if key.endswith(".range") else value)
    problems = envelope.check_params(p)
    if errors:
        assert problems, errors
    else:
        assert problems == []
        assert envelope.check_params(config.parse(data, NAME).core_params()) == []


@pytest.mark.parametrize("name, safe, reason", envelope.SAFE_STATES)
def test_a_flipped_safe_state_is_refused(name, safe, reason):
    data = toml()
    data["outputs"][name]["safe"] = not safe
    expected = f"{NAME}: [outputs.{name}] safe = {fmt(not safe)} must be {fmt(safe)}: {reason}"
    assert expected in parse_errors(data)
    p = params()
    p["safe"][OUTPUTS.index(name)] = not safe
    assert f"outputs.{name}.safe = {fmt(not safe)}: must be {fmt(safe)}: {reason}" in envelope.check_params(p)


@pytest.mark.parametrize("rule", envelope.ORDER, ids=[r[0] + "-" + r[2] for r in envelope.ORDER])
def test_each_ordering_rule_is_enforced(rule):
    key, relation, other, reason = rule
    p = params()
    data = toml()
    value = toml_get(data, other)            # equal is not strictly above or below
    param_set(p, key, value)
    expected = f"{key} = {envelope.show(float(value))}: must be {relation} {other} = " \
               f"{envelope.show(value)} ({reason})"
    assert expected in envelope.check_params(p)
    toml_set(data, key, value)
    table, name = key.rsplit(".", 1)
    other_name = other.rsplit(".", 1)[1] if other.rsplit(".", 1)[0] == table else other
    assert (f"{NAME}: [{table}] {name} = {fmt(value)} must be {relation} {other_name} = "
            f"{envelope.show(value)} ({reason})") in parse_errors(data)


@pytest.mark.parametrize("scan_s, window_s, ok", [
    (0.1, 1.0, True),       # exactly 10 scans
    (0.03, 0.3, True),      # 10 scans, though 10 x 0.03 is 0.30000000000000004 in floats
    (0.1, 0.9, False),      # 9 scans
    (0.5, 5.0, True),
    (0.5, 4.9, False),
])
def test_a_rise_window_needs_ten_scans(scan_s, window_s, ok):
    data = toml()
    data["cell"]["scan_period_s"] = scan_s
    data["thresholds"]["dp_rise"]["window_s"] = window_s
    errors = [e for e in parse_errors(data) if "scan periods" in e]
    assert (errors == []) is ok, errors
    p = params()
    p["scan_period_ms"] = int(round(scan_s * 1000))
    p["thresholds"]["dp_rise"]["window_s"] = window_s
    problems = [x for x in envelope.check_params(p) if "scan periods" in x]
    assert (problems == []) is ok, problems


@pytest.mark.parametrize("trip, window_s, ok", [
    (100.0, 19.9, True),    # 1990 ppm fits the 2000 ppm span
    (100.0, 20.0, False),   # a rise of the whole span needs a reading at both ends: never fires
])
def test_a_rise_must_fit_inside_the_span(trip, window_s, ok):
    data = toml()
    data["thresholds"]["co_rise"].update(trip=trip, window_s=window_s)
    errors = [e for e in parse_errors(data) if "could never fire" in e]
    assert (errors == []) is ok, errors
    p = params()
    p["thresholds"]["co_rise"].update(trip=trip, window_s=window_s)
    problems = [x for x in envelope.check_params(p) if "could never fire" in x]
    assert (problems == []) is ok, problems


@pytest.mark.parametrize("resolution, expected", [
    (0.0, "must be above 0 (one count of the sensor)"),       # every jitter is movement: stuck never seen
    (200.0, None),                                             # a tenth of 0..2000 ppm
    (200.5, "must be at most a tenth of the range's span (200.0): one count is the smallest change the "
            "stuck check counts as movement"),
])
def test_a_resolution_must_be_one_count(resolution, expected):
    data = toml()
    data["sensors"]["co_cell"]["resolution"] = resolution
    errors = [e for e in parse_errors(data) if "[sensors.co_cell] resolution" in e]
    p = params()
    p["sensors"][SENSORS.index("co_cell")][5] = resolution
    problems = [x for x in envelope.check_params(p) if x.startswith("sensors.co_cell.resolution")]
    if expected is None:
        assert errors == [] and problems == []
    else:
        assert errors == [f"{NAME}: [sensors.co_cell] resolution = {resolution} {expected}"]
        assert problems == [f"sensors.co_cell.resolution = {resolution}: {expected}"]


# -- check_params: what the core runs at construction ----------------------------------------
def test_check_params_accepts_the_default():
    assert envelope.check_params(config.load(DEFAULT).core_params()) == []   # tuples, as built


@pytest.mark.parametrize("case", runner.CASES, ids=[c[0] for c in runner.CASES])
def test_check_params_names_each_hazard(case):
    name, changes, expected = case
    problems = envelope.check_params(runner.apply(params(), changes))
    assert any(expected in line for line in problems), problems


@pytest.mark.parametrize("key", envelope.keys())
def test_check_params_reports_each_missing_or_mistyped_key(key):
    p = params()
    param_set(p, key, "x" if not key.endswith(".range") else ("x", "y"))
    problems = envelope.check_params(p)
    assert any(line.startswith(key + " = ") and "must be" in line for line in problems), problems
    # Missing: drop the key (or the sensor's row, or the output's entry) from the parameters.
    p = params()
    for k, path, _ in envelope.PARAM_PATHS:
        if k == key:
            node = p
            for part in path[:-1]:
                node = node[part]
            del node[path[-1]]
            break
    else:
        parts = key.split(".")
        if parts[0] == "thresholds":
            del p["thresholds"][parts[1]][parts[2]]
        elif parts[0] == "timers":
            del p["timers_ms"][parts[1]]
        elif parts[0] == "cell":
            del p[parts[1]]
        elif parts[0] == "outputs":
            p["safe"] = p["safe"][:OUTPUTS.index(parts[1])]
        else:
            p["sensors"] = [r for r in p["sensors"] if r[0] != parts[1]]
    assert f"{key}: missing from the parameters" in envelope.check_params(p)


@pytest.mark.parametrize("bad", [None, {}, [], "params", {"thresholds": None, "sensors": 3, "safe": "x"},
                                 {"sensors": [[]], "timers_ms": {"self_test_s": None}}])
def test_check_params_never_raises(bad):
    problems = envelope.check_params(bad)
    assert isinstance(problems, list) and problems


# -- MicroPython ---------------------------------------------------------------------------------
def micropython():
    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    return exe if Path(exe).exists() else None


def test_check_params_under_micropython(tmp_path):
    exe = micropython()
    if exe is None:
        pytest.skip("micropython not installed")
    p = tmp_path / "params.json"
    p.write_text(json.dumps(config.load(DEFAULT).core_params()))
    run = subprocess.run([exe, str(ROOT / "tests/micropython/run_envelope_tests.py"), str(ROOT), str(p)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last == f"micropython envelope tests: {len(runner.CASES) + 5} passed, 0 failed", run.stdout


def test_the_runner_passes_under_cpython_too():
    passed, failures = runner.run(envelope, params())
    assert failures == [] and passed == len(runner.CASES) + 5


# -- the document ------------------------------------------------------------------------------
def test_docs_envelopes_matches_the_table():
    doc = (ROOT / "docs" / "envelopes.md").read_text()
    assert "## Safety envelopes" in doc
    begin = doc.index(envelope.DOC_BEGIN) + len(envelope.DOC_BEGIN)
    end = doc.index(envelope.DOC_END)
    assert doc[begin:end].strip("\n") == envelope.markdown().strip("\n"), (
        "docs/envelopes.md is out of date: paste controller.envelope.markdown() between the markers")
