"""The [sparkplug] config table and the Sparkplug B schema, without a broker.

Config: mistakes in [sparkplug] are reported by controller.config.load on a copy of the shipped
config/cell.toml, each naming the file, the table, the key and the value. Schema: descriptor.py is
protoc's compilation of sparkplug_b.proto, its DataType enum and field numbers are the Sparkplug 3.0
specification's (copied here as literals: they are the wire contract), a Payload built with it
round-trips (through our parser and through the independent decoder), and the metric catalogue has
unique names and aliases.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from sparkplug.decoder import decode

from controller import config
from controller.link.sparkplug import schema
from controller.link.sparkplug.metrics import Catalogue

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "cell.toml"
GENERATOR = ROOT / "tools" / "gen-sparkplug-descriptor.py"

# Sparkplug 3.0, 6.4.16 "Data Types" (enum DataType), every entry.
SPEC_DATATYPES = {
    "Unknown": 0, "Int8": 1, "Int16": 2, "Int32": 3, "Int64": 4, "UInt8": 5, "UInt16": 6, "UInt32": 7,
    "UInt64": 8, "Float": 9, "Double": 10, "Boolean": 11, "String": 12, "DateTime": 13, "Text": 14,
    "UUID": 15, "DataSet": 16, "Bytes": 17, "File": 18, "Template": 19, "PropertySet": 20,
    "PropertySetList": 21, "Int8Array": 22, "Int16Array": 23, "Int32Array": 24, "Int64Array": 25,
    "UInt8Array": 26, "UInt16Array": 27, "UInt32Array": 28, "UInt64Array": 29, "FloatArray": 30,
    "DoubleArray": 31, "BooleanArray": 32, "StringArray": 33, "DateTimeArray": 34,
}
U64, U32, BOOL, STR, BYTES, DBL, FLT, MSG = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_UINT32,
                                             FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_STRING,
                                             FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_DOUBLE,
                                             FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_MESSAGE)
# Sparkplug 3.0, 6.4.1 (the schema): Payload and Payload.Metric fields, (number, protobuf type).
SPEC_PAYLOAD_FIELDS = {"timestamp": (1, U64), "metrics": (2, MSG), "seq": (3, U64), "uuid": (4, STR),
                       "body": (5, BYTES)}
SPEC_METRIC_FIELDS = {
    "name": (1, STR), "alias": (2, U64), "timestamp": (3, U64), "datatype": (4, U32),
    "is_historical": (5, BOOL), "is_transient": (6, BOOL), "is_null": (7, BOOL), "metadata": (8, MSG),
    "properties": (9, MSG), "int_value": (10, U32), "long_value": (11, U64), "float_value": (12, FLT),
    "double_value": (13, DBL), "boolean_value": (14, BOOL), "string_value": (15, STR),
    "bytes_value": (16, BYTES), "dataset_value": (17, MSG), "template_value": (18, MSG),
    "extension_value": (19, MSG),
}


# -- config ------------------------------------------------------------------------------------------
def write_config(tmp_path: Path, sparkplug: str, *, mqtt_enabled: bool = True) -> Path:
    text = DEFAULT.read_text()
    if not mqtt_enabled:
        text, n = re.subn(r"^\[mqtt\]\nenabled = true", "[mqtt]\nenabled = false", text, flags=re.M)
        assert n == 1, "config/cell.toml no longer starts [mqtt] with enabled = true"
    path = tmp_path / "cell.toml"
    path.write_text(text + "\n" + sparkplug)
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    return info.value.errors


def test_a_valid_sparkplug_table_loads(tmp_path):
    """The positive control of the error tests below: the same copy with a correct table loads."""
    path = write_config(tmp_path, '[sparkplug]\nenabled = true\ngroup_id = "plant"\nedge_node_id = "cell-1"\n'
                                  'primary_host_id = "scada"\ncommands = true\n'
                                  '[sparkplug.deadbands]\ntemp_gas = 5.0\no2_a = 0.0\n')
    sp = config.load(path).sparkplug
    assert (sp.enabled, sp.group_id, sp.edge_node_id, sp.primary_host_id, sp.commands) == \
        (True, "plant", "cell-1", "scada", True)
    assert sp.deadbands == {"temp_gas": 5.0, "o2_a": 0.0}


@pytest.mark.parametrize("key", ["group_id", "edge_node_id", "primary_host_id"])
@pytest.mark.parametrize("char", ["+", "/", "#"])
def test_ids_with_a_character_sparkplug_reserves_are_refused(tmp_path, key, char):
    """tck-id-topic-structure-namespace-valid-group-id, tck-id-topic-structure-namespace-valid-edge-node-id,
    tck-id-intro-group-id-chars, tck-id-intro-edge-node-id-chars (and the same rule for the Host ID,
    which is the last level of spBv1.0/STATE/<host_id>)."""
    value = f"cell{char}1"
    path = write_config(tmp_path, f'[sparkplug]\n{key} = "{value}"\n')
    errs = errors_of(path)
    assert len(errs) == 1, errs
    err = errs[0]
    assert err.startswith(f"{path}: [sparkplug] "), err
    assert f'{key} = "{value}"' in err, err
    assert f"'{char}'" in err or f'"{char}"' in err, f"the error should name the character {char!r}: {err}"


@pytest.mark.parametrize("key", ["group_id", "edge_node_id", "primary_host_id"])
def test_ids_with_a_character_mqtt_forbids_in_topics_are_refused(tmp_path, key):
    """tck-id-intro-group-id-chars, tck-id-intro-edge-node-id-chars: the IDs are MQTT topic levels and
    MUST only contain characters MQTT allows in topics; MQTT 3.1.1 and 5.0 (4.7.3) forbid U+0000 in a
    topic name, so such an ID must be a config error, not a broker refusing every publish."""
    path = write_config(tmp_path, f'[sparkplug]\n{key} = "cell\\u00001"\n')
    try:
        config.load(path)
    except config.ConfigError as exc:
        errs = exc.errors
    else:
        pytest.fail(f"[sparkplug] {key} with U+0000 (not allowed in an MQTT topic) was accepted")
    assert len(errs) == 1 and errs[0].startswith(f"{path}: [sparkplug] ") and key in errs[0], errs


def test_an_unknown_key_is_refused(tmp_path):
    path = write_config(tmp_path, "[sparkplug]\nenabeld = true\n")
    errs = errors_of(path)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: [sparkplug] ") and "'enabeld'" in errs[0], errs


def test_a_deadband_for_something_that_is_not_a_sensor_is_refused(tmp_path):
    path = write_config(tmp_path, "[sparkplug]\nenabled = true\n[sparkplug.deadbands]\ntemp_gass = 1.0\n")
    errs = errors_of(path)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: [sparkplug.deadbands] "), errs
    assert "temp_gass = 1.0" in errs[0], errs


def test_a_negative_deadband_is_refused(tmp_path):
    path = write_config(tmp_path, "[sparkplug]\nenabled = true\n[sparkplug.deadbands]\ntemp_gas = -0.5\n")
    errs = errors_of(path)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: [sparkplug.deadbands] ") and "temp_gas = -0.5" in errs[0], errs


def test_sparkplug_enabled_needs_the_mqtt_link(tmp_path):
    path = write_config(tmp_path, "[sparkplug]\nenabled = true\n", mqtt_enabled=False)
    errs = errors_of(path)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: [sparkplug] ") and "enabled = true" in errs[0], errs
    assert "[mqtt]" in errs[0], errs


@pytest.mark.parametrize("table, says", [
    ('password_file = "/x"\n', "go with username"),
    ('username = "u"\npassword_file = "/x"\npassword_env = "P"\n', "not both"),
    ('client_id = "crushcell-cell1"\n', "must differ from the JSON link's client id"),
])
def test_the_nodes_own_credentials_and_client_id_are_checked(tmp_path, table, says):
    """A password without its user would be silently ignored; two clients with one id (or, on a
    broker that binds ids to users, one user) throw each other off the broker."""
    path = write_config(tmp_path, "[sparkplug]\nenabled = true\n" + table)
    errs = errors_of(path)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: [sparkplug] ") and says in errs[0], errs


# -- schema ------------------------------------------------------------------------------------------
def test_descriptor_is_protoc_output_of_the_proto():
    """descriptor.py must be what protoc makes of sparkplug_b.proto today (tools/... --check)."""
    if shutil.which("protoc") is None:
        pytest.fail("protoc is missing: install protobuf-compiler (Debian: sudo apt-get install "
                    "protobuf-compiler) to check controller/link/sparkplug/descriptor.py against its .proto")
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{GENERATOR.name} --check failed:\n{proc.stdout}\n{proc.stderr}"


def test_datatype_enum_is_the_specs_table():
    """tck-id-payloads-metric-datatype-value: the DataType values are the spec's."""
    assert schema.DATATYPE_NAMES == {number: name for name, number in SPEC_DATATYPES.items()}
    assert (schema.INT64, schema.UINT64, schema.DOUBLE, schema.BOOLEAN, schema.STRING) == (4, 8, 10, 11, 12)


def test_payload_and_metric_field_numbers_are_the_specs():
    payload = schema.Payload.DESCRIPTOR
    metric = payload.nested_types_by_name["Metric"]
    for descriptor, spec in ((payload, SPEC_PAYLOAD_FIELDS), (metric, SPEC_METRIC_FIELDS)):
        got = {f.name: (f.number, f.type) for f in descriptor.fields}
        assert got == spec, descriptor.full_name
    assert [f.name for f in metric.oneofs_by_name["value"].fields] == [
        "int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value",
        "bytes_value", "dataset_value", "template_value", "extension_value"]


def build_payload() -> bytes:
    p = schema.Payload()
    p.timestamp = 1_700_000_000_123
    p.seq = 0
    rows = [("bdSeq", 1, schema.INT64, 255), ("neg", 2, schema.INT64, -2),
            ("big", 3, schema.UINT64, 2**64 - 1), ("t", 4, schema.DOUBLE, -12.5),
            ("nan", 5, schema.DOUBLE, math.nan), ("none", 6, schema.DOUBLE, None),
            ("on", 7, schema.BOOLEAN, True), ("off", 8, schema.BOOLEAN, False),
            ("s", 9, schema.STRING, "Grüße/℃"), ("empty", 10, schema.STRING, "")]
    for name, alias, datatype, value in rows:
        m = p.metrics.add()
        m.name, m.alias, m.datatype, m.timestamp = name, alias, datatype, p.timestamp
        schema.set_value(m, datatype, value)
    return p.SerializeToString()


EXPECTED = {"bdSeq": 255, "neg": -2, "big": 2**64 - 1, "t": -12.5, "nan": None, "none": None, "on": True,
            "off": False, "s": "Grüße/℃", "empty": ""}


def test_a_payload_round_trips_through_our_schema():
    p = schema.Payload.FromString(build_payload())
    assert p.timestamp == 1_700_000_000_123 and p.HasField("seq") and p.seq == 0
    got = {m.name: schema.get_value(m, m.datatype) for m in p.metrics}
    assert got == EXPECTED
    assert [m.alias for m in p.metrics] == list(range(1, 11))
    nulls = {m.name for m in p.metrics if m.is_null}
    assert nulls == {"nan", "none"}
    assert all(m.WhichOneof("value") is None for m in p.metrics if m.is_null), "a null metric has no value"


def test_a_payload_of_our_schema_reads_the_same_in_the_independent_decoder():
    """Our encoding against pysparkplug's reading (tests/sparkplug/decoder.py), value by value."""
    (result,) = decode([("spBv1.0/g/NBIRTH/n", build_payload())])
    assert "error" not in result, result.get("error")
    assert result["seq"] == 0 and result["timestamp"] == 1_700_000_000_123
    got = {m["name"]: (None if m["is_null"] else m["value"]) for m in result["metrics"]}
    assert got == EXPECTED
    types = {m["name"]: m["datatype"] for m in result["metrics"]}
    assert types["bdSeq"] == "Int64" and types["big"] == "UInt64" and types["t"] == "Double"
    assert types["on"] == "Boolean" and types["s"] == "String"


# -- the catalogue -----------------------------------------------------------------------------------
@pytest.mark.parametrize("commands", [False, True])
def test_catalogue_names_and_aliases_are_unique(commands):
    """tck-id-payloads-alias-uniqueness, tck-id-case-sensitivity-metric-names,
    tck-id-operational-behavior-data-commands-rebirth-name-aliases (Node Control/Rebirth: no alias)."""
    cat = Catalogue(config.load(DEFAULT), commands=commands)
    defs = [cat.bdseq, cat.rebirth, *cat.defs]
    names = [d.name for d in defs]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
    lower = [n.lower() for n in names]
    assert len(set(lower)) == len(lower), sorted(n for n in names if lower.count(n.lower()) > 1)
    assert cat.rebirth.name == "Node Control/Rebirth" and cat.rebirth.alias is None
    aliases = [d.alias for d in defs if d is not cat.rebirth]
    assert all(isinstance(a, int) and 0 <= a < 2**64 for a in aliases)
    assert len(set(aliases)) == len(aliases)
    assert ("Commands/start" in names) is commands
