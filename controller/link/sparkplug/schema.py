"""Sparkplug B payloads as protobuf messages, from the schema in sparkplug_b.proto.

The compiled schema (descriptor.py) is loaded into a descriptor pool of our own: protobuf's
default pool holds one "sparkplug_b.proto", and another Sparkplug library in the process would
clash with ours there.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import descriptor_pool, message_factory

from controller.link.sparkplug.descriptor import SERIALIZED

_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(SERIALIZED)
Payload = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))
_DATATYPE = _POOL.FindEnumTypeByName("org.eclipse.tahu.protobuf.DataType")

# The Sparkplug datatypes we publish (values from the schema's DataType enum, not typed in here).
INT64 = _DATATYPE.values_by_name["Int64"].number
UINT64 = _DATATYPE.values_by_name["UInt64"].number
DOUBLE = _DATATYPE.values_by_name["Double"].number
BOOLEAN = _DATATYPE.values_by_name["Boolean"].number
STRING = _DATATYPE.values_by_name["String"].number
DATATYPE_NAMES = {v.number: v.name for v in _DATATYPE.values}

# Which member of the Metric `value` oneof carries each datatype (Sparkplug 3.0, 6.4.16).
_VALUE_FIELD = {INT64: "long_value", UINT64: "long_value", DOUBLE: "double_value",
                BOOLEAN: "boolean_value", STRING: "string_value"}


def set_value(metric: Any, datatype: int, value: Any) -> None:
    """Fill a Metric's value: None (and NaN, which JSON and most hosts cannot carry) is is_null."""
    if value is None or (datatype == DOUBLE and not math.isfinite(value)):
        metric.is_null = True
        return
    if datatype == INT64:
        # Sparkplug carries signed integers in the uint64 field as two's complement (6.4.16).
        metric.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF
    elif datatype == UINT64:
        metric.long_value = int(value)
    elif datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == STRING:
        metric.string_value = str(value)
    else:  # pragma: no cover - a catalogue entry with a type we do not publish is a bug
        raise ValueError(f"unsupported Sparkplug datatype {datatype}")


def get_value(metric: Any, datatype: int | None = None) -> Any:
    """The value of a received metric (NCMD): None when null or absent."""
    if metric.is_null:
        return None
    which = metric.WhichOneof("value")
    if which is None:
        return None
    value = getattr(metric, which)
    if datatype == INT64 and which == "long_value" and value >= 1 << 63:
        value -= 1 << 64
    return value


def value_field(datatype: int) -> str:
    return _VALUE_FIELD[datatype]
