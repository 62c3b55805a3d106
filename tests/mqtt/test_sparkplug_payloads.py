"""The Sparkplug B 3.0 edge node's payloads over a real broker, judged by the specification.

Every message is read back through the independent decoder (pysparkplug in .venv-spb, see
tests/sparkplug/decoder.py) and, where the wire matters (names, aliases, datatypes present or not),
through its `raw` protobuf dict. Expected datatypes come from the spec's DataType table, expected metric
names from the cell's own name lists (cellspec.names, controller.rules), never from the node's catalogue.
Commands go out encoded by pysparkplug, as a host would send them. Each test names the normative
statements (tck-id-...) it checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid

import pytest
from conftest import CONFIG, wait_for
from plant import Plant
from spb import (
    LiveDecoder,
    Witness,
    births,
    config_on_port,
    host_values,
    ncmd_payloads,
    ncmd_topic,
    node_messages,
    reported,
)

import controller
from cellspec.names import COMMANDS, INPUTS, OUTPUTS, SENSORS, STATES
from controller.rules import ALARMS, CAUSES

GROUP, NODE = "plant", "cell1"
BASE = "crushcell/cell1"
T_NBIRTH = f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
T_NDATA = f"spBv1.0/{GROUP}/NDATA/{NODE}"
T_NDEATH = f"spBv1.0/{GROUP}/NDEATH/{NODE}"
T_NCMD = ncmd_topic(GROUP, NODE)
REBIRTH = "Node Control/Rebirth"

# Sparkplug 3.0, 6.4.16 "Data Types": the enum values are the wire contract (copied from the spec).
INT64, UINT64, DOUBLE, BOOLEAN, STRING = 4, 8, 10, 11, 12
SPEC_DATATYPE_VALUES = range(0, 35)          # Unknown = 0 .. DateTimeArray = 34
# 6.4.17 "Datatype Details": the protobuf type (Metric value oneof member) each datatype travels in.
VALUE_FIELD = {INT64: "long_value", UINT64: "long_value", DOUBLE: "double_value",
               BOOLEAN: "boolean_value", STRING: "string_value"}
VALUE_FIELDS = ("int_value", "long_value", "float_value", "double_value", "boolean_value",
                "string_value", "bytes_value", "dataset_value", "template_value", "extension_value")


def alarm_metric(name: str, leaf: str) -> str:
    return f"Alarms/{name.replace(':', '/')}/{leaf}"


def expected_datatypes() -> dict[str, int]:
    """Metric name -> spec datatype for what the brief and docs promise, built from the cell's names."""
    want = {"bdSeq": INT64, REBIRTH: BOOLEAN, "State": STRING, "Trip/Latched": BOOLEAN,
            "Voted/O2": DOUBLE, "Properties/Version": STRING, "Properties/Config SHA256": STRING,
            "Commands/Last Accepted": BOOLEAN, "Commands/Last Reason": STRING}
    want.update({f"Trip/{cause}": BOOLEAN for cause in CAUSES})
    for name, _severity, _mask in ALARMS:
        want[alarm_metric(name, "Active")] = BOOLEAN
        want[alarm_metric(name, "Acked")] = BOOLEAN
    for name in SENSORS:
        want[f"Sensors/{name}"] = DOUBLE
        want[f"Sensors/{name}/Quality"] = STRING
    want.update({f"Inputs/{n}": BOOLEAN for n in INPUTS})
    want.update({f"Outputs/{n}": BOOLEAN for n in OUTPUTS})
    return want


class Cell:
    """A Plant (real scan loop, simulated cell, PlantLink with the edge node) on the test's broker, a
    Witness on spBv1.0/# (QoS and retain as published), a JSON Subscriber on crushcell/cell1/#."""

    def __init__(self, broker, tmp_path, subscriber_factory, *, before_start=None, mqtt=None, **sparkplug):
        self.witness = Witness(broker.port).wait_ready()
        self.json = subscriber_factory(broker.port, [f"{BASE}/#"])
        wait_for(self.json.subscribed.is_set, what="the JSON subscriber's SUBACK")
        self.decoder = LiveDecoder(self.witness)
        self.config = config_on_port(broker.port, mqtt=mqtt, **sparkplug)
        self.plant = Plant(self.config, tmp_path / "state")
        if before_start is not None:
            before_start(self.plant)
        self.t0_ms = int(time.time() * 1000)
        self.plant.start()
        self.stopped = False

    # -- reading -----------------------------------------------------------------------------------
    def node(self) -> list[dict]:
        return node_messages(self.decoder.messages())

    def wait_node(self, predicate, what: str, timeout: float = 20.0) -> list[dict]:
        """Wait until predicate(node messages) holds; the node messages then."""
        self.decoder.wait(lambda ms: predicate(node_messages(ms)), what, timeout=timeout)
        return self.node()

    def first_birth(self) -> list[dict]:
        return self.wait_node(lambda ms: births(ms), "the NBIRTH")

    def json_state(self) -> str | None:
        statuses = self.json.json("/status")
        return statuses[-1]["state"] if statuses else None

    def events(self) -> list[dict]:
        out = []
        for body in self.json.json("/events"):
            out.extend(body["events"] if "events" in body else [body])
        return out

    # -- writing -----------------------------------------------------------------------------------
    def ncmd(self, payload: bytes) -> None:
        """An NCMD as Sparkplug 3.0 says a host publishes it: QoS 0, not retained."""
        self.witness.publish(T_NCMD, payload, qos=0, retain=False)

    def json_command(self, action: str, by: str = "alice") -> dict:
        cmd_id = uuid.uuid4().hex[:12]
        self.json.publish(f"{BASE}/cmd", json.dumps({"id": cmd_id, "action": action, "by": by}))
        return wait_for(lambda: next((r for r in self.json.json("/cmd/reply") if r["id"] == cmd_id), None),
                        what=f"the JSON reply to {action}")

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.plant.stop()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.decoder.close()
            self.witness.close()


@pytest.fixture
def cell(broker, tmp_path, subscriber_factory):
    made: list[Cell] = []

    def make(**kwargs) -> Cell:
        c = Cell(broker, tmp_path / f"cell{len(made)}", subscriber_factory, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def by_name(message: dict) -> dict[str, dict]:
    return {m["name"]: m for m in message["metrics"]}


def raw_by_name(message: dict) -> dict[str, dict]:
    return {m["name"]: m for m in message["raw"]["metrics"]}


def ndata_with(name: str, predicate=lambda _x: True, since: int = 0):
    """A node-message predicate: some NDATA from index `since` carries `name` with predicate(metric)."""
    return lambda ms: [x for _m, x in reported(ms, name, since) if predicate(x)]


def last_reply(ms: list[dict], since: int, action: str) -> dict | None:
    """The first 'Commands/Last Reply' reported from index `since` for `action` (parsed JSON)."""
    for _m, x in reported(ms, "Commands/Last Reply", since):
        body = json.loads(x["value"])
        if body.get("action") == action:
            return body
    return None


def settle() -> None:
    """Leave the node alone for a moment after making a change: the test's polling (decoding) competes
    with the node's threads, and the node must act on the change by itself. Not a timing check: what
    is asserted afterwards is only waited for."""
    time.sleep(0.3)


def assert_seq_run(messages: list[dict], start: int) -> None:
    seqs = [m["seq"] for m in messages]
    assert seqs and seqs[0] == start, seqs[:5]
    for a, b in zip(seqs, seqs[1:], strict=False):
        assert b == (a + 1) % 256, f"seq {a} then {b}: {seqs}"


# -- 1. NBIRTH -----------------------------------------------------------------------------------------
def test_nbirth_declares_every_metric_with_name_alias_spec_datatype_timestamp_and_value(cell):
    """tck-id-principles-birth-certificates-order, tck-id-topics-nbirth-mqtt, tck-id-payloads-nbirth-qos,
    tck-id-payloads-nbirth-retain, tck-id-topics-nbirth-seq-num, tck-id-payloads-nbirth-seq,
    tck-id-topics-nbirth-timestamp, tck-id-payloads-nbirth-timestamp, tck-id-payloads-timestamp-in-UTC,
    tck-id-topics-nbirth-bdseq-included, tck-id-payloads-nbirth-bdseq, tck-id-topics-nbirth-bdseq-increment,
    tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq, tck-id-topics-nbirth-rebirth-metric,
    tck-id-payloads-nbirth-rebirth-req, tck-id-operational-behavior-data-commands-rebirth-name,
    tck-id-operational-behavior-data-commands-rebirth-name-aliases,
    tck-id-operational-behavior-data-commands-rebirth-datatype,
    tck-id-operational-behavior-data-commands-rebirth-value, tck-id-topics-nbirth-metrics,
    tck-id-topics-nbirth-metric-reqs, tck-id-operational-behavior-data-publish-nbirth,
    tck-id-operational-behavior-data-publish-nbirth-values, tck-id-payloads-alias-birth-requirement,
    tck-id-payloads-alias-uniqueness, tck-id-payloads-name-birth-data-requirement,
    tck-id-payloads-metric-datatype-req, tck-id-payloads-metric-datatype-value,
    tck-id-payloads-metric-timestamp-in-UTC, tck-id-payloads-propertyset-keys-array-size,
    tck-id-payloads-propertyset-values-array-size, tck-id-payloads-metric-propertyvalue-type-req,
    tck-id-payloads-metric-propertyvalue-type-value, tck-id-case-sensitivity-metric-names.

    co_cell reads NaN from the first scan on (Plant.fault before start): its metric is null."""
    c = cell(before_start=lambda plant: plant.fault("co_cell", "nan"))
    node = c.first_birth()
    t1_ms = int(time.time() * 1000)
    birth = node[0]
    assert birth["verb"] == "NBIRTH", "the birth certificate must be the node's first message"
    assert "error" not in birth, birth.get("error")
    assert set(c.witness.flags(T_NBIRTH)) == {(0, False)}, "NBIRTH: QoS 0, retain false"

    raw = birth["raw"]
    assert raw.get("seq") == "0" and birth["seq"] == 0
    assert "timestamp" in raw and c.t0_ms <= birth["timestamp"] <= t1_ms, (c.t0_ms, birth["timestamp"], t1_ms)

    names = [m["name"] for m in birth["metrics"]]
    assert all(names), "every NBIRTH metric has a name"
    assert len(names) == len(set(names)), "a metric name twice in one NBIRTH"
    assert len({n.lower() for n in names}) == len(names), "metric names that differ only in case"
    metrics, raws = by_name(birth), raw_by_name(birth)

    # bdSeq: Int64, the first CONNECT from a fresh state dir carries 0.
    assert raws["bdSeq"]["datatype"] == INT64 and metrics["bdSeq"]["value"] == 0
    # Node Control/Rebirth: Boolean false, and no alias.
    assert "alias" not in raws[REBIRTH]
    assert raws[REBIRTH]["datatype"] == BOOLEAN
    assert raws[REBIRTH].get("boolean_value") is False and metrics[REBIRTH]["value"] is False

    aliases = []
    for m in raw["metrics"]:
        assert "timestamp" in m, f"{m['name']}: no timestamp"
        assert c.t0_ms <= int(m["timestamp"]) <= t1_ms, m
        assert m.get("datatype") in SPEC_DATATYPE_VALUES, m
        if m["name"] != REBIRTH:
            assert "alias" in m, f"{m['name']}: no alias in the NBIRTH"
            aliases.append(int(m["alias"]))
        present = [f for f in VALUE_FIELDS if f in m]
        if m.get("is_null"):
            assert present == [], f"{m['name']} is null but carries {present}"
        else:
            assert present == [VALUE_FIELD[m["datatype"]]], (m["name"], m["datatype"], present)
        if "properties" in m:
            keys, values = m["properties"].get("keys", []), m["properties"].get("values", [])
            assert len(keys) == len(values), m
            assert all(v.get("type") in SPEC_DATATYPE_VALUES for v in values), m
    assert len(aliases) == len(set(aliases)), "aliases must be unique across the node's metrics"

    want = expected_datatypes()
    missing = sorted(set(want) - set(raws))
    assert not missing, f"metrics missing from the NBIRTH: {missing[:10]} ({len(missing)})"
    wrong = {n: (raws[n]["datatype"], dt) for n, dt in want.items() if raws[n]["datatype"] != dt}
    assert not wrong, f"(datatype sent, spec datatype) differ: {wrong}"

    # Current values.
    assert metrics["State"]["value"] in STATES
    assert metrics["Properties/Version"]["value"] == controller.__version__
    sha = hashlib.sha256(CONFIG.read_bytes()).hexdigest()
    assert metrics["Properties/Config SHA256"]["value"] == sha == c.config.sha256
    for name in SENSORS:
        value, quality = metrics[f"Sensors/{name}"], metrics[f"Sensors/{name}/Quality"]["value"]
        if name == "co_cell":
            assert value["is_null"] is True and value["value"] is None, value
            assert quality.startswith("fault"), quality
        else:
            assert value["is_null"] is False and math.isfinite(value["value"]), value
            assert not quality.startswith("fault"), (name, quality)
    for name in [f"Inputs/{n}" for n in INPUTS] + [f"Outputs/{n}" for n in OUTPUTS]:
        assert isinstance(metrics[name]["value"], bool), metrics[name]


# -- 2. NDATA ------------------------------------------------------------------------------------------
def test_ndata_carries_only_declared_aliases_with_timestamps_and_consecutive_seq(cell):
    """tck-id-payloads-alias-data-cmd-requirement, tck-id-payloads-name-requirement,
    tck-id-payloads-metric-datatype-not-req, tck-id-payloads-name-birth-data-requirement,
    tck-id-topics-ndata-mqtt, tck-id-payloads-ndata-qos, tck-id-payloads-ndata-retain,
    tck-id-topics-ndata-seq-num, tck-id-payloads-ndata-seq, tck-id-payloads-ndata-seq-inc,
    tck-id-payloads-sequence-num-always-included, tck-id-payloads-sequence-num-incrementing,
    tck-id-topics-ndata-timestamp, tck-id-payloads-ndata-timestamp, tck-id-payloads-ndata-order,
    tck-id-operational-behavior-data-publish-nbirth-change, tck-id-principles-rbe-recommended."""
    c = cell()
    node = c.wait_node(lambda ms: births(ms) and len(ms) - births(ms)[0] >= 12, "an NBIRTH and 11 NDATA")
    t1_ms = int(time.time() * 1000)
    assert births(node) == [0], "one NBIRTH, first: no NDATA before it"
    birth, data = node[0], node[1:]
    assert all(m["verb"] == "NDATA" for m in data)
    assert set(c.witness.flags(T_NDATA)) == {(0, False)}, "NDATA: QoS 0, retain false"
    assert_seq_run(node, 0)

    declared = {int(m["alias"]): m for m in birth["raw"]["metrics"] if "alias" in m}
    held = host_values([birth])
    for message in data:
        assert "error" not in message, message.get("error")
        raw = message["raw"]
        assert "seq" in raw and "timestamp" in raw
        assert c.t0_ms <= message["timestamp"] <= t1_ms
        assert raw["metrics"], "an NDATA with no metric"
        for m in raw["metrics"]:
            assert "name" not in m, f"NDATA metric with a name: {m}"
            assert "datatype" not in m, f"NDATA metric with a datatype: {m}"
            assert "alias" in m and int(m["alias"]) in declared, f"alias not declared in the NBIRTH: {m}"
            assert "timestamp" in m and c.t0_ms <= int(m["timestamp"]) <= t1_ms, m
            datatype = declared[int(m["alias"])]["datatype"]
            present = [f for f in VALUE_FIELDS if f in m]
            assert present == ([] if m.get("is_null") else [VALUE_FIELD[datatype]]), (m, datatype)
        # Report by exception (no deadbands here): a metric is sent when its value changed.
        for x in message["metrics"]:
            assert x["name"] is not None, "the decoder resolved every alias against the NBIRTH"
            now = None if x["is_null"] else x["value"]
            assert held.get(x["name"], object()) != now, f"{x['name']} re-sent unchanged ({now!r})"
            held[x["name"]] = now


# -- 3. seq wrap ---------------------------------------------------------------------------------------
def test_seq_wraps_from_255_to_0(cell):
    """tck-id-payloads-sequence-num-incrementing, tck-id-topics-ndata-seq-num, tck-id-payloads-ndata-seq-inc.

    White box: the node's seq is set to 250 after the NBIRTH (the sensors' noise brings an NDATA per
    sample); 251.., 254, 255, 0, 1 must follow each other on the broker."""
    c = cell()
    c.first_birth()
    spb_node = c.plant.link.sparkplug
    commands = spb_node._commands

    def jump_once():
        # Runs on the node's worker thread (it calls _commands() every pass), so the write cannot
        # land inside the worker's own seq increment.
        spb_node._commands = commands
        spb_node._seq = 250
        commands()

    spb_node._commands = jump_once

    def after_jump(ms):
        return [m for m in ms if m["verb"] == "NDATA" and m["seq"] > 250]

    def tail(ms):
        return ms[ms.index(after_jump(ms)[0]):] if after_jump(ms) else []

    node = c.wait_node(lambda ms: [m for m in tail(ms) if m["seq"] == 1], "seq 251 .. 255, 0, 1")
    assert all(m["verb"] == "NDATA" for m in tail(node)), [m["verb"] for m in tail(node)]
    assert_seq_run(tail(node), 251)
    seqs = [m["seq"] for m in tail(node)]
    i = seqs.index(254)
    assert seqs[i:i + 4] == [254, 255, 0, 1], seqs


# -- 4. Rebirth ----------------------------------------------------------------------------------------
def test_rebirth_request_by_name_gives_a_new_nbirth_with_seq_0_and_the_same_bdseq(cell):
    """tck-id-operational-behavior-data-commands-ncmd-rebirth-verb,
    tck-id-operational-behavior-data-commands-ncmd-rebirth-name,
    tck-id-operational-behavior-data-commands-ncmd-rebirth-value,
    tck-id-operational-behavior-data-commands-rebirth-action-1,
    tck-id-operational-behavior-data-commands-rebirth-action-2,
    tck-id-operational-behavior-data-commands-rebirth-action-3, tck-id-payloads-nbirth-bdseq-repeat,
    tck-id-topics-nbirth-seq-num, tck-id-payloads-sequence-num-incrementing,
    tck-id-message-flow-edge-node-ncmd-subscribe, and at the clean stop: tck-id-payloads-ndeath-bdseq,
    tck-id-topics-ndeath-payload, tck-id-topics-ndeath-seq, tck-id-payloads-ndeath-seq,
    tck-id-payloads-ndeath-will-message-qos, tck-id-payloads-ndeath-will-message-retain,
    tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt50."""
    c = cell()
    c.wait_node(lambda ms: births(ms) and len(ms) >= 4, "an NBIRTH and 3 NDATA")
    (rebirth,) = ncmd_payloads([{"name": REBIRTH, "datatype": "BOOLEAN", "value": True}])
    c.ncmd(rebirth)
    node = c.wait_node(lambda ms: len(births(ms)) >= 2 and len(ms) - births(ms)[1] >= 4,
                       "a second NBIRTH and 3 NDATA after it")
    first, second = births(node)
    assert births(node) == [0, second], "exactly one NBIRTH per rebirth request"
    old, new = node[first], node[second]
    assert new["seq"] == 0 and new["raw"].get("seq") == "0"
    assert by_name(new)["bdSeq"]["value"] == by_name(old)["bdSeq"]["value"], "same bdSeq: same MQTT session"
    assert set(by_name(new)) == set(by_name(old)), "the new NBIRTH declares every metric again"
    assert by_name(new)[REBIRTH]["value"] is False
    assert_seq_run(node[first:second], 0)
    assert_seq_run(node[second:], 0)    # data stopped, birth, data again from seq 1

    c.stop()   # clean stop: MQTT 5 DISCONNECT 'with will message', the broker publishes our NDEATH
    node = c.wait_node(lambda ms: ms[-1]["verb"] == "NDEATH", "the NDEATH")
    death = node[-1]
    assert "error" not in death, death.get("error")
    assert "seq" not in death["raw"], "an NDEATH has no seq"
    assert [m["name"] for m in death["raw"]["metrics"]] == ["bdSeq"]
    assert death["raw"]["metrics"][0]["datatype"] == INT64
    assert death["metrics"][0]["value"] == by_name(new)["bdSeq"]["value"]
    assert c.witness.flags(T_NDEATH) == [(1, False)], "NDEATH: will QoS 1, not retained"


def test_ncmds_that_are_not_a_rebirth_request_change_nothing_and_the_node_runs_on(cell):
    """tck-id-operational-behavior-data-commands-ncmd-rebirth-value (only true asks for a rebirth),
    tck-id-operational-behavior-data-commands-ncmd-metric-name,
    tck-id-payloads-sequence-num-incrementing: garbage, an empty payload, Rebirth = false and a write to
    a read-only metric are ignored (no NBIRTH, no gap in seq); a rebirth request sent after them is
    then honoured, which shows the node read them all and is still alive."""
    c = cell()
    c.wait_node(lambda ms: births(ms) and len(ms) >= 3, "an NBIRTH and 2 NDATA")
    no_rebirth, write_sensor, rebirth = ncmd_payloads(
        [{"name": REBIRTH, "datatype": "BOOLEAN", "value": False}],
        [{"name": "Sensors/o2_a", "datatype": "DOUBLE", "value": 0.0}],
        [{"name": REBIRTH, "datatype": "BOOLEAN", "value": True}])
    for payload in (b"\xff\xff\xff\xff", b"\x12\x50trunc", b"", no_rebirth, write_sensor, rebirth):
        c.ncmd(payload)
    node = c.wait_node(lambda ms: len(births(ms)) >= 2 and len(ms) - births(ms)[1] >= 3,
                       "the NBIRTH the last NCMD asked for, and NDATA after it")
    first, second = births(node)
    assert births(node) == [0, second], "only the rebirth request (value true) gives an NBIRTH"
    assert_seq_run(node[first:second], 0)
    assert_seq_run(node[second:], 0)
    assert all("error" not in m for m in node)
    # The refused write is told to the host (in an NDATA, or in the NBIRTH that followed at once).
    told = [json.loads(x["value"]) for m in node if m["verb"] in ("NBIRTH", "NDATA")
            for x in m["metrics"] if x["name"] == "Commands/Last Reply" and x["value"]]
    assert any(r["accepted"] is False and "Sensors/o2_a" in r["reason"] for r in told), told
    assert c.plant.thread.is_alive()


# -- 5. Report by exception ----------------------------------------------------------------------------
def test_a_sensor_inside_its_deadband_is_not_sent_and_outside_it_is(cell):
    """tck-id-principles-rbe-recommended, tck-id-operational-behavior-data-publish-nbirth-change,
    tck-id-topics-ndata-payload: with [sparkplug.deadbands] temp_gas = 5.0 a move of temp_gas by less
    than 5 since the value last sent brings no temp_gas metric; a move by more than 5 does. Falling
    steps, so the temperature-rise trip stays out of it; JSON telemetry shows the plant really moved."""
    c = cell(deadbands={"temp_gas": 5.0}, mqtt={"telemetry_period_s": 0.2})
    node = c.first_birth()
    start = by_name(node[0])["Sensors/temp_gas"]["value"]

    def telemetry_near(value):
        return lambda: [t for t in c.json.json("/telemetry")
                        if abs(t["sensors"]["temp_gas"]["value"] - value) < 1.0]

    c.plant.force("temp_gas", start - 2.5)
    wait_for(telemetry_near(start - 2.5), what="temp_gas about 2.5 below its NBIRTH value in telemetry")
    mark = len(c.node())
    node = c.wait_node(lambda ms: len(reported(ms, "Sensors/temp_material", mark)) >= 5,
                       "5 more samples (temp_material, deadband 0, moves with noise)")
    assert reported(node, "Sensors/temp_gas") == [], "temp_gas moved less than its deadband: not sent"

    c.plant.force("temp_gas", start - 9.0)
    node = c.wait_node(ndata_with("Sensors/temp_gas"), "temp_gas sent after moving past its deadband")
    (_m, sent), *_rest = reported(node, "Sensors/temp_gas")
    assert abs(sent["value"] - start) > 5.0 and abs(sent["value"] - (start - 9.0)) < 1.0, (start, sent)


def test_alarms_and_trips_are_sent_at_once_whatever_the_sample_period_and_deadbands(cell):
    """tck-id-topics-ndata-payload (the NDATA includes the metrics that changed),
    tck-id-operational-behavior-data-publish-nbirth-change: an alarm raised, its acknowledgement and a
    trip (State, Trip/estop, Trip/Latched) must reach the host at once, not at the next sample. The
    sample period is the longest allowed (60 s) and every sensor's deadband is huge, so only the
    event-driven sampling the node promises ("state changes, trips and alarms are sampled at once,
    whatever the period") can bring them within each wait (10 s, well under the period). JSON
    telemetry is slowed down as well, so nothing else asks the scan loop for snapshots by chance."""
    c = cell(sample_period_s=60.0, deadbands={n: 1000.0 for n in SENSORS},
             mqtt={"telemetry_period_s": 3600.0})
    c.first_birth()
    wait_for(lambda: c.json_state() == "IDLE", what="IDLE on the JSON status")

    mark = len(c.node())
    c.plant.force("h2_cell", 1.5)    # above its warning (1.0), below its trip (2.0)
    settle()
    c.wait_node(ndata_with("Alarms/h2_cell/Active", lambda x: x["value"] is True, mark),
                "Alarms/h2_cell/Active true", timeout=10.0)
    mark = len(c.node())
    assert c.json_command("ack")["accepted"] is True
    settle()
    c.wait_node(ndata_with("Alarms/h2_cell/Acked", lambda x: x["value"] is True, mark),
                "Alarms/h2_cell/Acked true", timeout=10.0)

    mark = len(c.node())
    c.plant.event("estop")
    settle()
    node = c.wait_node(ndata_with("State", lambda x: x["value"] == "TRIPPED", mark),
                       "an NDATA with State = TRIPPED", timeout=10.0)
    held = host_values(node)
    assert held["State"] == "TRIPPED"
    assert held["Trip/estop"] is True
    assert held["Trip/Latched"] is True
    assert "estop" in held["Trip/Causes"].split(",")
    assert reported(node, "Sensors/h2_cell") == [], "h2_cell moved 1.5, inside its deadband"


# -- 6. Commands over NCMD -----------------------------------------------------------------------------
def test_ncmd_commands_are_refused_by_default_visibly_and_audited(cell):
    """On the node: tck-id-topics-ndata-payload (the refusal changes Commands/Last Reply and Last Reason,
    so an NDATA carries them). The NCMDs are what the spec has a host send
    (tck-id-operational-behavior-data-commands-ncmd-verb, tck-id-payloads-ncmd-timestamp,
    tck-id-payloads-ncmd-seq, tck-id-operational-behavior-data-commands-ncmd-metric-value), by name.

    With [sparkplug] commands = false an operator command over NCMD never reaches the core: the host
    holds Commands/Last Accepted false and gets Commands/Last Reason saying commands are off, and the
    event log gets an audit record (stage link, by sparkplug:...). purge, which IDLE would accept, is
    refused as well, and the state does not move."""
    c = cell()
    c.first_birth()
    wait_for(lambda: c.json_state() == "IDLE", what="IDLE on the JSON status")
    payloads = ncmd_payloads([{"name": "Commands/start", "datatype": "BOOLEAN", "value": True}],
                             [{"name": "Commands/purge", "datatype": "BOOLEAN", "value": True}])
    for action, payload in zip(("start", "purge"), payloads, strict=True):
        mark = len(c.node())
        c.ncmd(payload)
        node = c.wait_node(lambda ms, a=action, m=mark: last_reply(ms, m, a), f"the refusal of {action}")
        reply = last_reply(node, mark, action)
        held = host_values(node)
        assert reply["accepted"] is False
        assert "commands" in reply["reason"].lower() and "off" in reply["reason"].lower(), reply
        assert held["Commands/Last Accepted"] is False
        assert held["Commands/Last Reason"] == reply["reason"]
        audit = wait_for(lambda a=action: [e for e in c.events() if e.get("type") == "command"
                                           and e.get("action") == a], what=f"the audit record of {action}")
        assert len(audit) == 1, audit
        record = audit[0]
        assert record["accepted"] is False and record["stage"] == "link" and record["source"] == "remote"
        assert record["by"].startswith("sparkplug:") and record["reason"] == reply["reason"]
    assert c.json_state() == "IDLE"
    assert not [e for e in c.events() if e.get("type") == "state" and e.get("to") == "PURGING"]
    assert host_values(c.node())["State"] == "IDLE"


def test_ncmd_commands_when_enabled_take_the_json_command_path_and_its_interlocks(cell):
    """On the node: tck-id-topics-nbirth-metric-reqs and tck-id-operational-behavior-data-publish-nbirth
    (the writable Commands/<action> metrics are declared in the NBIRTH, Boolean false),
    tck-id-topics-ndata-payload (each reply's metrics reported). The NCMDs are a host's
    (tck-id-operational-behavior-data-commands-ncmd-verb, ...-ncmd-metric-name, ...-ncmd-metric-value,
    tck-id-payloads-alias-data-cmd-requirement: purge is written by alias; start by name, as hosts do).

    With commands = true a write goes the way of a JSON command: the core decides with the same
    guards (no interlock is bypassed: start from IDLE, and from READY without the remote_enable key
    switch, are refused) and the same reason text as cmd/reply, and the event log audits it."""
    c = cell(commands=True)
    node = c.first_birth()
    birth = by_name(node[0])
    raws = raw_by_name(node[0])
    for action in COMMANDS:
        name = f"Commands/{action}"
        assert raws[name]["datatype"] == BOOLEAN and birth[name]["value"] is False, name
    wait_for(lambda: c.json_state() == "IDLE", what="IDLE on the JSON status")

    start_by_name, purge_by_alias = ncmd_payloads(
        [{"name": "Commands/start", "datatype": "BOOLEAN", "value": True}],
        [{"alias": birth["Commands/purge"]["alias"], "datatype": "BOOLEAN", "value": True}])

    # An interlock holds whatever the path: start from IDLE is refused, for the reason JSON gets.
    mark = len(c.node())
    c.ncmd(start_by_name)
    node = c.wait_node(lambda ms: last_reply(ms, mark, "start"), "the reply to start in IDLE")
    reply = last_reply(node, mark, "start")
    assert reply["accepted"] is False and reply["state"] == "IDLE"
    assert reply["reason"] == c.json_command("start")["reason"]
    assert host_values(node)["Commands/Last Reason"] == reply["reason"]

    # purge from IDLE: accepted by the core, the state moves, the audit names the Sparkplug caller.
    c.plant.inert()
    mark = len(c.node())
    c.ncmd(purge_by_alias)
    node = c.wait_node(ndata_with("Commands/Last Accepted", lambda x: x["value"] is True, mark),
                       "Commands/Last Accepted true")
    reply = last_reply(node, mark, "purge")
    assert reply["accepted"] is True and reply["state"] == "PURGING", reply
    node = c.wait_node(ndata_with("State", lambda x: x["value"] == "READY", mark), "State READY")
    record = wait_for(lambda: [e for e in c.events() if e.get("type") == "command"
                               and e.get("action") == "purge"], what="the purge's audit record")
    assert len(record) == 1 and record[0]["accepted"] is True and record[0]["stage"] == "core"
    assert record[0]["by"].startswith("sparkplug:") and record[0]["id"] == reply["id"]

    # start in READY without the remote_enable key switch: refused, with JSON's reason, visibly.
    wait_for(lambda: c.json_state() == "READY", what="READY on the JSON status")
    mark = len(c.node())
    c.ncmd(start_by_name)
    node = c.wait_node(ndata_with("Commands/Last Accepted", lambda x: x["value"] is False, mark),
                       "Commands/Last Accepted false again")
    reply = last_reply(node, mark, "start")
    assert reply["accepted"] is False and reply["state"] == "READY", reply
    json_reply = c.json_command("start")
    assert json_reply["accepted"] is False and reply["reason"] == json_reply["reason"]
    assert host_values(node)["Commands/Last Reason"] == reply["reason"]
    assert c.json_state() == "READY"
