"""A latch file that parses but is wrong must never clear a trip (issue 11, item 3).

Hazard: {"causes":["estoq"]}, {"causes":[7]} or {"seq":50} came up IDLE (the trip forgotten);
"seq":"abc", null, 1e400 or "acked":5 ended in a traceback (no controller at all); a latch that
is a directory killed the pump thread. Anything that is not exactly what the writer writes is a
corrupt latch: TRIPPED with a named cause, and a message naming the field and the value.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import config, persist
from controller.loop import ScanLoop
from controller.rules import ALARMS, CAUSES
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")
ALARM_NAMES = [a[0] for a in ALARMS]
GOOD = {"causes": ["estop"], "trip_acked": False, "acked": [], "seq": 41,
        "config_sha256": "0" * 64, "written": "2025-01-01T00:00:00.000+00:00"}


def restart(state: Path) -> tuple[ScanLoop, persist.Persister, list[dict]]:
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=1))
    p = persist.Persister(state, loop, CONFIG)
    records = p.restore()
    return loop, p, records


def comes_up_tripped(loop: ScanLoop) -> bool:
    loop.run_simulated(2100)   # past the self-test: a latch goes to TRIPPED, none to IDLE
    return loop.core.state_name == "TRIPPED"


# -- the cases of the issue, and their kin ------------------------------------------------------------
CORRUPT = {
    "unknown cause": ('{"causes":["estoq"],"trip_acked":false,"acked":[],"seq":1}', "estoq"),
    "cause not a string": ('{"causes":[7],"trip_acked":false,"acked":[],"seq":1}', "causes: 7"),
    "causes missing": ('{"seq":50}', "causes"),
    "seq a string": ('{"causes":["estop"],"trip_acked":false,"acked":[],"seq":"abc"}', '"abc"'),
    "seq null": ('{"causes":["estop"],"trip_acked":false,"acked":[],"seq":null}', "seq: "),
    "seq 1e400": ('{"causes":["estop"],"trip_acked":false,"acked":[],"seq":1e400}', "seq: "),
    "seq negative": ('{"causes":[],"trip_acked":false,"acked":[],"seq":-1}', "-1"),
    "seq a float": ('{"causes":[],"trip_acked":false,"acked":[],"seq":5.0}', "5.0"),
    "seq too large": ('{"causes":[],"trip_acked":false,"acked":[],"seq":' + str(2**64) + "}", str(2**64)),
    "seq true": ('{"causes":[],"trip_acked":false,"acked":[],"seq":true}', "true"),
    "acked a number": ('{"causes":["estop"],"trip_acked":false,"acked":5,"seq":1}', "acked: "),
    "unknown alarm acked": ('{"causes":[],"trip_acked":false,"acked":["h3"],"seq":1}', '"h3"'),
    "trip_acked a string": ('{"causes":["estop"],"trip_acked":"no","acked":[],"seq":1}', '"no"'),
    "unknown key": ('{"causes":[],"trip_acked":false,"acked":[],"seq":1,"cuases":["estop"]}', "cuases"),
    "duplicate key": ('{"causes":["estop"],"causes":[],"trip_acked":false,"acked":[],"seq":1}', "twice"),
    "NaN": ('{"causes":[],"trip_acked":false,"acked":[],"seq":NaN}', "NaN"),
    "a list": ('[]', "not a JSON object"),
    "null": ('null', "not a JSON object"),
    "empty": ('', "unreadable"),
    "cut": ('{"causes":["estop"],"trip_ac', "unreadable"),
    "deep": ('[' * 100_000 + ']' * 100_000, "unreadable"),
    "huge digits": ('{"causes":[],"trip_acked":false,"acked":[],"seq":' + "9" * 5000 + "}", "unreadable"),
    "bad sha": ('{"causes":[],"trip_acked":false,"acked":[],"seq":1,"config_sha256":"xyz"}', '"xyz"'),
    "bad time": ('{"causes":[],"trip_acked":false,"acked":[],"seq":1,"written":"yesterday"}', "yesterday"),
    "not UTF-8": (b'{"causes":["\xff"]}', "unreadable"),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_a_wrong_latch_file_comes_up_tripped_and_says_what_was_wrong(tmp_path, name):
    text, shown = CORRUPT[name]
    raw = text if isinstance(text, bytes) else text.encode()
    (tmp_path / "latch.json").write_bytes(raw)
    loop, p, records = restart(tmp_path)
    assert comes_up_tripped(loop) and loop.core.causes() == [persist.CORRUPT_LATCH_CAUSE]
    assert records[0]["type"] == "persist" and shown in records[0]["error"], records[0]
    assert records[0]["restored"] == [persist.CORRUPT_LATCH_CAUSE]
    assert f"moved to {tmp_path / 'latch.json.corrupt'}" in records[0]["error"]
    assert (tmp_path / "latch.json.corrupt").read_bytes() == raw   # kept for whoever looks into it
    p.handle(loop.drain_events())   # and the pump goes on: the latch file is written whole again
    assert json.loads((tmp_path / "latch.json").read_text())["causes"] == [persist.CORRUPT_LATCH_CAUSE]
    p.close()


def test_a_latch_that_is_a_directory_comes_up_tripped_and_the_pump_lives(tmp_path):
    (tmp_path / "latch.json").mkdir()
    (tmp_path / "latch.json" / "x").write_text("x")
    (tmp_path / "latch.json.corrupt").mkdir()        # and it cannot even be moved aside
    (tmp_path / "latch.json.corrupt" / "y").write_text("y")
    loop, p, records = restart(tmp_path)
    assert comes_up_tripped(loop)
    seen = []
    for _ in range(3):
        batch = loop.drain_events()
        p.handle(batch)                              # never raises
        seen += batch
    assert "not a regular file" in records[0]["error"]
    assert loop.platform_alarms() == ("state_write_failed",)
    errors = [e for e in seen if e["type"] == "persist" and "errno" in e]
    assert len(errors) == 1 and errors[0]["errno"] == "EISDIR" and "latch.json" in errors[0]["file"]
    p.close()


def test_a_valid_latch_file_is_restored_exactly(tmp_path):
    doc = dict(GOOD, causes=["estop", "door_open"], trip_acked=True, acked=["h2_cell"])
    (tmp_path / "latch.json").write_text(json.dumps(doc))
    loop, p, records = restart(tmp_path)
    assert records[0] == {"t": 0.0, "type": "persist", "restored": ["estop", "door_open"]}
    assert loop.core.causes() == ["estop", "door_open"] and loop.core.restored_trip_acked
    assert p.seq == 41
    p.close()


# -- property: random documents --------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(CAUSES[:3] + tuple(ALARM_NAMES[:3])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)

valid_docs = st.fixed_dictionaries(
    {"causes": st.lists(st.sampled_from(CAUSES), unique=True, max_size=4),
     "trip_acked": st.booleans(),
     "acked": st.lists(st.sampled_from(ALARM_NAMES), unique=True, max_size=3),
     "seq": st.integers(0, persist.SEQ_MAX)},
    optional={"config_sha256": st.just("a" * 64) | st.just(""),
              "written": st.datetimes().map(lambda d: d.isoformat())})


@st.composite
def documents(draw):
    """Exactly valid documents, and ones with one thing wrong, and arbitrary JSON."""
    kind = draw(st.sampled_from(["valid", "value", "drop", "extra", "any"]))
    if kind == "any":
        return draw(json_values)
    doc = draw(valid_docs)
    if kind == "value":
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_values)
    elif kind == "drop":
        del doc[draw(st.sampled_from(sorted(doc)))]
    elif kind == "extra":
        doc[draw(st.text(max_size=10))] = draw(json_values)
    return doc


def spec_valid(doc) -> bool:
    """The latch format, written out independently of controller/persist.py."""
    if not isinstance(doc, dict):
        return False
    required = {"causes", "trip_acked", "acked", "seq"}
    if not required <= set(doc) <= required | {"config_sha256", "written"}:
        return False
    c, a, s = doc["causes"], doc["acked"], doc["seq"]
    if not (isinstance(c, list) and all(isinstance(x, str) and x in CAUSES for x in c)
            and len(set(c)) == len(c)):
        return False
    if not (isinstance(a, list) and all(isinstance(x, str) and x in ALARM_NAMES for x in a)
            and len(set(a)) == len(a)):
        return False
    if type(doc["trip_acked"]) is not bool or type(s) is not int or not 0 <= s <= 2**53 - 1:
        return False
    sha = doc.get("config_sha256", "")
    hexdigits = set("0123456789abcdef")
    if not isinstance(sha, str) or not (sha == "" or (len(sha) == 64 and set(sha) <= hexdigits)):
        return False
    if "written" in doc:
        try:
            dt.datetime.fromisoformat(doc["written"])
        except (TypeError, ValueError):
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_latch_document_is_restored_exactly_or_comes_up_tripped(doc):
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        (state / "latch.json").write_text(json.dumps(doc))
        loop, p, records = restart(state)   # never a traceback
        if spec_valid(doc):
            assert loop.core.causes() == doc["causes"]
            assert all("error" not in r for r in records)
            assert p.seq == doc["seq"]
            assert comes_up_tripped(loop) == bool(doc["causes"])
        else:
            assert records[0]["type"] == "persist" and "error" in records[0]
            assert loop.core.causes() == [persist.CORRUPT_LATCH_CAUSE]
            assert comes_up_tripped(loop)                           # never IDLE
        p.close()


# -- the writer never writes what the reader would call corrupt ---------------------------------------
odd_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.integers(1, 40).map(lambda k: "x" * (k * 1000)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
event_types = st.sampled_from(persist.JOURNALED + ("alarm",))
events = st.lists(st.fixed_dictionaries({"t": st.floats(), "type": event_types},
                                        optional={"reason": odd_values, "by": odd_values}), max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_the_latch_file_written_is_always_one_the_reader_takes(batch):
    # Audit records ride in the latch file until the journal has them: a NaN in one, or records too
    # large together, must not make the file corrupt (a start would then trip on self_test).
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        (state / "journal.jsonl").mkdir()   # the journal cannot be written: every record is carried
        loop, p, _ = restart(state)
        p.handle(batch)
        doc, error = persist.read_latch(state)
        assert error is None, error
        assert doc["seq"] >= len(batch)
        p.close()
