"""The independent Sparkplug B decoder checks itself, without our encoder.

pysparkplug's OWN encoder (run in the decoder venv) makes an NBIRTH and alias-only NDATA; decode() must
give back the names, datatypes, values and nulls, report a garbage payload as an error and go on.
If this file fails, the encoder tests that use decode() prove nothing.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from .decoder import decode, decoder_python, run_in_decoder_venv

GROUP, NODE = "crushcell", "cell-1"
NBIRTH_T = f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
NDATA_T = f"spBv1.0/{GROUP}/NDATA/{NODE}"
NDEATH_T = f"spBv1.0/{GROUP}/NDEATH/{NODE}"

# Runs in the decoder venv: pysparkplug encodes, prints {label: base64 payload}.
ENCODE_WITH_PYSPARKPLUG = r"""
import base64, json, math
from pysparkplug import DataType, Metric, NBirth, NData, NDeath

def m(name, dt, value=None, alias=None, ts=None, is_null=False):
    return Metric(timestamp=ts, name=name, datatype=dt, value=value, alias=alias, is_null=is_null)

bdseq = m("bdSeq", DataType.INT64, 3)
birth = NBirth(timestamp=1700000000000, seq=0, metrics=(
    bdseq,
    m("cell/temp_c", DataType.DOUBLE, 21.5, alias=1, ts=1700000000001),
    m("cell/estop", DataType.BOOLEAN, True, alias=2),
    m("cell/state", DataType.STRING, "RUN", alias=3),
    m("cell/o2_pct", DataType.DOUBLE, None, alias=4, is_null=True),
    m("cell/uptime_ms", DataType.UINT64, 2**64 - 1, alias=5),
    m("cell/dp_pa", DataType.DOUBLE, math.nan, alias=6),
))
# Aliases only: pysparkplug's NData.encode() leaves out names (None) and datatypes (its default).
data = NData(timestamp=1700000001000, seq=1, metrics=(
    m(None, DataType.DOUBLE, 22.25, alias=1),
    m(None, DataType.BOOLEAN, False, alias=2),
    m(None, DataType.DOUBLE, None, alias=4, is_null=True),
))
data2 = NData(timestamp=1700000002000, seq=2, metrics=(
    m(None, DataType.STRING, "TRIP", alias=3),
    m(None, DataType.DOUBLE, -math.inf, alias=6),
))
death = NDeath(timestamp=1700000003000, bd_seq_metric=bdseq)
out = {"birth": birth.encode(), "data": data.encode(), "data2": data2.encode(), "death": death.encode()}
print(json.dumps({k: base64.b64encode(v).decode() for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    encoded = json.loads(run_in_decoder_venv(ENCODE_WITH_PYSPARKPLUG))
    return {label: base64.b64decode(b64) for label, b64 in encoded.items()}


def by_name(result: dict) -> dict[str, dict]:
    return {metric["name"]: metric for metric in result["metrics"]}


def test_decoder_python_is_the_decoder_venv():
    out = run_in_decoder_venv("import sys, pysparkplug; print(sys.prefix, pysparkplug.__version__)")
    prefix, version = out.split()
    assert version == "0.6.1"
    assert os.path.abspath(decoder_python()).startswith(os.path.join(prefix, ""))


def test_birth_then_alias_only_data_resolve_names_and_datatypes(payloads):
    garbage = b"\xff\xff\xff\xff"
    birth, data, bad, data2 = decode([
        (NBIRTH_T, payloads["birth"]),
        (NDATA_T, payloads["data"]),
        (NDATA_T, garbage),
        (NDATA_T, payloads["data2"]),
    ])

    assert birth["verb"] == "NBIRTH" and "error" not in birth, birth
    assert (birth["topic"], birth["timestamp"], birth["seq"]) == (NBIRTH_T, 1700000000000, 0)
    metrics = by_name(birth)
    assert metrics["bdSeq"] == {
        "name": "bdSeq", "alias": None, "datatype": "Int64", "value": 3, "is_null": False,
        "is_historical": False, "is_transient": False, "timestamp": None,
    }
    temp = metrics["cell/temp_c"]
    assert (temp["alias"], temp["datatype"], temp["value"]) == (1, "Double", 21.5)
    assert temp["timestamp"] == 1700000000001
    assert (metrics["cell/estop"]["datatype"], metrics["cell/estop"]["value"]) == ("Boolean", True)
    assert (metrics["cell/state"]["datatype"], metrics["cell/state"]["value"]) == ("String", "RUN")
    o2 = metrics["cell/o2_pct"]
    assert (o2["datatype"], o2["value"], o2["is_null"]) == ("Double", None, True)
    uptime = metrics["cell/uptime_ms"]
    assert (uptime["datatype"], uptime["value"]) == ("UInt64", 2**64 - 1)
    assert metrics["cell/dp_pa"]["value"] == "NaN"
    # The raw protobuf: every NBIRTH metric has its name and datatype on the wire; 64-bit ints are strings.
    assert all("name" in m and "datatype" in m for m in birth["raw"]["metrics"])
    assert birth["raw"]["seq"] == "0"

    assert data["verb"] == "NDATA" and "error" not in data, data
    assert (data["timestamp"], data["seq"]) == (1700000001000, 1)
    assert [(m["name"], m["alias"], m["datatype"], m["value"], m["is_null"]) for m in data["metrics"]] == [
        ("cell/temp_c", 1, "Double", 22.25, False),
        ("cell/estop", 2, "Boolean", False, False),
        ("cell/o2_pct", 4, "Double", None, True),
    ]
    # ... resolved from the birth: on the wire the NDATA metrics had aliases only.
    assert [sorted(m) for m in data["raw"]["metrics"]] == [
        ["alias", "double_value"], ["alias", "boolean_value"], ["alias", "is_null"],
    ]

    assert bad["topic"] == NDATA_T and bad["error"].startswith("DecodeError: "), bad
    assert "metrics" not in bad

    assert "error" not in data2, data2
    assert data2["seq"] == 2
    assert [(m["name"], m["datatype"], m["value"]) for m in data2["metrics"]] == [
        ("cell/state", "String", "TRIP"), ("cell/dp_pa", "Double", "-Infinity"),
    ]


def test_alias_only_data_without_a_birth_is_pysparkplugs_error(payloads):
    # No NBIRTH before it: pysparkplug cannot know the datatype, refuses, and we say so (no workaround).
    (data,) = decode([(NDATA_T, payloads["data"])])
    assert data["error"] == "NotImplementedError: UNKNOWN not implemented"
    assert data["raw"]["seq"] == "1"


def test_ndeath_and_state(payloads):
    death, state, not_spb = decode([
        (NDEATH_T, payloads["death"]),
        ("spBv1.0/STATE/scada-1", b'{"online": true, "timestamp": 1700000004000}'),
        ("crushcell/cell-1/state", b"{}"),
    ])
    assert death["verb"] == "NDEATH" and "error" not in death, death
    assert death["seq"] is None and "seq" not in death["raw"]
    assert [(m["name"], m["datatype"], m["value"]) for m in death["metrics"]] == [("bdSeq", "Int64", 3)]
    # pysparkplug 0.6.1 gets an NDEATH's timestamp backwards; the decoder takes the wire's, and says so.
    assert death["timestamp"] == 1700000003000
    assert len(death["notes"]) == 1 and "inverts" in death["notes"][0]

    assert state == {
        "topic": "spBv1.0/STATE/scada-1",
        "verb": "STATE",
        "state": {"online": True, "timestamp": 1700000004000},
    }
    assert not_spb["error"].startswith("ValueError: not a spBv1.0 topic")


def test_missing_decoder_venv_raises_not_skips(monkeypatch, tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    monkeypatch.setenv("CRUSHCELL_SPB_PYTHON", str(missing))
    assert decoder_python() == str(missing)
    with pytest.raises(RuntimeError, match=r"make \.venv-spb/\.installed-stamp"):
        decode([(NDATA_T, b"")])
