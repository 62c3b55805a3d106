"""Independent Sparkplug B 3.0 payload decoder: pysparkplug 0.6.1, in the decoder venv only.

Run ONLY with the decoder venv's Python (`make .venv-spb/.installed-stamp`), as tests/sparkplug/decoder.py
does: `.venv-spb/bin/python -I tests/sparkplug/spb_decode.py`. It imports pysparkplug (which pins
paho-mqtt<2 and imports it itself) and google.protobuf, never our `controller` package: it is the second
opinion on what our encoder (controller/link/sparkplug) puts on the wire.

stdin: JSON lines `{"topic": str, "payload_b64": str}`, in arrival order.
stdout: one JSON line per input line (blank lines are skipped), flushed after each:

    Sparkplug payload (NBIRTH NDATA NCMD NDEATH, and the D... verbs):
        {"topic", "verb", "timestamp": int|null, "seq": int|null,
         "metrics": [{"name": str|null, "alias": int|null, "datatype": "Int64"|"Double"|...,
                      "value": json|null, "is_null": bool, "is_historical": bool,
                      "is_transient": bool, "timestamp": int|null}, ...],
         "raw": {...}, "notes": [str, ...]}
    STATE (spBv1.0/STATE/<host_id>):
        {"topic", "verb": "STATE", "state": <the parsed JSON>}
    a message that does not decode:
        {"topic", "verb": str|null, "error": "<ExceptionType>: <message>"[, "raw": {...}]}

`datatype` is the Sparkplug B name of the DataType (the .proto enum's: Int64, UInt64, Boolean, Double,
String, DateTime, Unknown, ...). `value` is JSON: NaN and infinities become "NaN", "Infinity",
"-Infinity"; Bytes/File values are base64; DateTime is milliseconds since the epoch; arrays are lists.
`raw` is google.protobuf.json_format.MessageToDict(payload, preserving_proto_field_name=True) of the bytes
as received (parsed apart from pysparkplug, which fills names and datatypes from the birth into its
copy): a field is in it only when it is on the wire; 64-bit integers (timestamp, seq, alias,
long_value) are strings there, per the proto3 JSON mapping, and datatype is a number.
`notes` says where this script did not take pysparkplug's answer as it is (see NDEATH below): empty
almost always.

Births: the last NBIRTH decoded per (group, edge node) (DBIRTH: per device) is passed as `birth=` to
the NDATA/NCMD (DDATA/DCMD) that follow, so pysparkplug resolves aliases to names and fills the
datatypes it omitted. A birth that fails to decode forgets the previous one. An NDEATH does not.
A message pysparkplug refuses is reported as its error, with no workaround (an NDATA metric without a
name or datatype and no birth known, for one), and the next line is decoded all the same.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import sys

import pysparkplug
from google.protobuf import json_format
from pysparkplug import _protobuf as spb_pb

assert "controller" not in sys.modules, "the independent decoder must not import the project's code"

NAMESPACE = "spBv1.0"
PAYLOAD_CLASSES = {
    "NBIRTH": pysparkplug.NBirth,
    "NDATA": pysparkplug.NData,
    "NCMD": pysparkplug.NCmd,
    "NDEATH": pysparkplug.NDeath,
    "DBIRTH": pysparkplug.DBirth,
    "DDATA": pysparkplug.DData,
    "DCMD": pysparkplug.DCmd,
    "DDEATH": pysparkplug.DDeath,
}
BIRTH_VERBS = {"NBIRTH", "DBIRTH"}
NODE_VERBS = {"NBIRTH", "NDATA", "NCMD", "NDEATH"}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def json_value(value):
    """A metric value as pysparkplug decoded it, made JSON (strict: no bare NaN)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    raise TypeError(f"no JSON form for a {type(value).__name__} metric value: {value!r}")


def datatype_name(datatype) -> str:
    return spb_pb.DataType.Name(int(datatype))


def metric_dict(metric) -> dict:
    return {
        "name": metric.name,
        "alias": metric.alias,
        "datatype": datatype_name(metric.datatype),
        "value": json_value(metric.value),
        "is_null": bool(metric.is_null),
        "is_historical": bool(metric.is_historical),
        "is_transient": bool(metric.is_transient),
        "timestamp": metric.timestamp,
    }


def parse_topic(topic: str) -> tuple[str, tuple[str, ...]]:
    """(verb, birth key) of a Sparkplug B topic; ValueError for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != NAMESPACE:
        raise ValueError(f"not a {NAMESPACE} topic: {topic!r}")
    if parts[1] == "STATE":
        if len(parts) != 3 or not parts[2]:
            raise ValueError(f"a STATE topic is {NAMESPACE}/STATE/<host_id>: {topic!r}")
        return "STATE", ()
    verb = parts[2]
    if verb not in PAYLOAD_CLASSES:
        raise ValueError(f"unknown Sparkplug verb {verb!r} in {topic!r}")
    want = 4 if verb in NODE_VERBS else 5
    if len(parts) != want or not all(parts):
        raise ValueError(f"a {verb} topic has {want} levels ({NAMESPACE}/group/{verb}/node...): {topic!r}")
    return verb, (parts[1], *parts[3:])


class Decoder:
    def __init__(self) -> None:
        self.births: dict[tuple[str, ...], object] = {}

    def decode_line(self, line: str) -> dict:
        try:
            message = json.loads(line)
            topic = message["topic"]
            payload = base64.b64decode(message["payload_b64"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            return {"topic": None, "verb": None, "error": f"bad input line: {error_text(exc)}"}
        out: dict = {"topic": topic, "verb": None}
        try:
            out["verb"], key = parse_topic(topic)
        except ValueError as exc:
            out["error"] = error_text(exc)
            return out
        if out["verb"] == "STATE":
            return self.decode_state(out, payload)
        return self.decode_payload(out, key, payload)

    def decode_state(self, out: dict, payload: bytes) -> dict:
        try:
            state = json.loads(payload)
            pysparkplug.State.decode(payload)  # its check: a JSON object with timestamp and online
        except Exception as exc:  # any failure is this message's error
            out["error"] = error_text(exc)
            return out
        out["state"] = state
        return out

    def decode_payload(self, out: dict, key: tuple[str, ...], payload: bytes) -> dict:
        verb = out["verb"]
        try:
            raw = spb_pb.Payload.FromString(payload)
        except Exception as exc:
            out["error"] = error_text(exc)
            if verb in BIRTH_VERBS:
                self.births.pop(key, None)
            return out
        raw_dict = json_format.MessageToDict(raw, preserving_proto_field_name=True)
        notes: list[str] = []
        try:
            if verb in BIRTH_VERBS:
                self.births.pop(key, None)
                decoded = PAYLOAD_CLASSES[verb].decode(payload)
                self.births[key] = decoded
            else:
                decoded = PAYLOAD_CLASSES[verb].decode(payload, birth=self.births.get(key))
            if verb == "NDEATH":
                metrics = [metric_dict(decoded.bd_seq_metric)]
                # pysparkplug 0.6.1 NDeath.decode tests HasField("timestamp") the wrong way round: None
                # when the payload has a timestamp, 0 when it has none. The wire's answer, said so.
                timestamp = raw.timestamp if raw.HasField("timestamp") else None
                if decoded.timestamp != timestamp:
                    notes.append(
                        f"timestamp from the protobuf ({timestamp}), not pysparkplug's NDeath.timestamp "
                        f"({decoded.timestamp}): pysparkplug 0.6.1 inverts the HasField check"
                    )
            else:
                metrics = [metric_dict(m) for m in getattr(decoded, "metrics", ())]
                timestamp = decoded.timestamp
            result = {
                "timestamp": timestamp,
                "seq": getattr(decoded, "seq", None),
                "metrics": metrics,
                "raw": raw_dict,
                "notes": notes,
            }
            json.dumps(result, allow_nan=False)
        except Exception as exc:
            out["error"] = error_text(exc)
            out["raw"] = raw_dict
            return out
        out.update(result)
        return out


def main() -> int:
    decoder = Decoder()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = decoder.decode_line(line)
        except Exception as exc:  # never die on one message
            out = {"topic": None, "verb": None, "error": f"decoder bug: {error_text(exc)}"}
        sys.stdout.write(json.dumps(out, allow_nan=False) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
