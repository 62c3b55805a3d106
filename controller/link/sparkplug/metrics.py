"""The edge node's metrics: names, Sparkplug datatypes, aliases, values, report by exception.

Every metric the node will ever publish is in the catalogue, so the NBIRTH can declare them all
(Sparkplug 3.0: the NBIRTH includes every metric the node will report). Names are a public
contract like the JSON topics (docs/sparkplug.md): extended, never renamed. The values come
from the same snapshot of the scan as the JSON status and telemetry.
"""

from __future__ import annotations

import math
from typing import Any

from cellspec.names import COMMANDS, INPUTS, O2_SENSORS, OUTPUTS, SENSORS
from controller import __version__
from controller.link import payloads
from controller.link.sparkplug.schema import BOOLEAN, DOUBLE, INT64, STRING, UINT64
from controller.rules import ALARMS, CAUSES

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
LAST_REPLY = "Commands/Last Reply"
LAST_ACCEPTED = "Commands/Last Accepted"
LAST_REASON = "Commands/Last Reason"


def alarm_path(name: str) -> str:
    """`input_fault:estop_ok` -> `input_fault/estop_ok`: Sparkplug folders, not colons."""
    return name.replace(":", "/")


def command_metric(action: str) -> str:
    return f"Commands/{action}"


class MetricDef:
    __slots__ = ("name", "alias", "datatype", "deadband", "unit")

    def __init__(self, name: str, alias: int | None, datatype: int, deadband: float = 0.0, unit: str = ""):
        self.name, self.alias, self.datatype, self.deadband, self.unit = name, alias, datatype, deadband, unit


class Catalogue:
    """All metrics of this node, in birth order, with their aliases (fixed for a config)."""

    def __init__(self, config: Any, *, commands: bool):
        sp = config.sparkplug
        sensors = getattr(config, "sensors", {})
        self.places = [payloads.decimals(getattr(sensors.get(n), "resolution", None)) for n in SENSORS]
        o2 = [p for n, p in zip(SENSORS, self.places, strict=True) if n in O2_SENSORS and p is not None]
        self.o2_places = max(o2) if o2 else None
        defs: list[tuple[str, int, float, str]] = [
            ("State", STRING, 0.0, ""),
            ("Trip/Latched", BOOLEAN, 0.0, ""),
            ("Trip/Causes", STRING, 0.0, ""),
        ]
        defs += [(f"Trip/{cause}", BOOLEAN, 0.0, "") for cause in CAUSES]
        for name, _severity, _mask in ALARMS:
            defs += [(f"Alarms/{alarm_path(name)}/Active", BOOLEAN, 0.0, ""),
                     (f"Alarms/{alarm_path(name)}/Acked", BOOLEAN, 0.0, "")]
        for name in SENSORS:
            unit = getattr(sensors.get(name), "unit", "") or ""
            defs += [(f"Sensors/{name}", DOUBLE, float(sp.deadbands.get(name, 0.0)), unit),
                     (f"Sensors/{name}/Quality", STRING, 0.0, "")]
        defs.append(("Voted/O2", DOUBLE, float(sp.deadbands.get("o2_a", 0.0)), "%"))
        defs += [(f"Inputs/{n}", BOOLEAN, 0.0, "") for n in INPUTS]
        defs += [(f"Outputs/{n}", BOOLEAN, 0.0, "") for n in OUTPUTS]
        defs += [("Health/Overruns Total", UINT64, 0.0, ""), ("Health/Scan Max s", DOUBLE, 0.001, "s"),
                 ("Health/Events Dropped", UINT64, 0.0, ""), ("Health/Outbox Pending", UINT64, 0.0, ""),
                 ("Health/Outbox Dropped", UINT64, 0.0, ""), ("Health/Link Restarts", UINT64, 0.0, "")]
        defs += [(LAST_REPLY, STRING, 0.0, ""), (LAST_ACCEPTED, BOOLEAN, 0.0, ""),
                 (LAST_REASON, STRING, 0.0, "")]
        self.commands = commands
        if commands:
            defs += [(command_metric(a), BOOLEAN, 0.0, "") for a in COMMANDS]
        defs += [("Properties/Version", STRING, 0.0, ""), ("Properties/Config SHA256", STRING, 0.0, ""),
                 ("Properties/Cell ID", STRING, 0.0, "")]
        # Aliases from 1 in birth order; bdSeq has one too (every birth metric carries name and
        # alias), Node Control/Rebirth none (Sparkplug 3.0 forbids it).
        self.bdseq = MetricDef(BDSEQ, 1, INT64)
        self.rebirth = MetricDef(REBIRTH, None, BOOLEAN)
        self.defs = [MetricDef(name, i + 2, dt, band, unit) for i, (name, dt, band, unit) in enumerate(defs)]
        self.by_name = {d.name: d for d in self.defs}
        self.by_alias = {d.alias: d for d in self.defs}
        self.static = {"Properties/Version": __version__,
                       "Properties/Config SHA256": getattr(config, "sha256", ""),
                       "Properties/Cell ID": config.cell_id}

    def sample(self, snap: Any, health: dict | None, extra: dict[str, Any]) -> dict[str, Any]:
        """Every metric's current value from one snapshot (plus the node's own: command replies)."""
        causes = snap.causes
        values: dict[str, Any] = {"State": snap.state, "Trip/Latched": bool(causes),
                                  "Trip/Causes": ",".join(causes)}
        for cause in CAUSES:
            values[f"Trip/{cause}"] = cause in causes
        active = {a[0]: bool(a[2]) for a in snap.alarms}
        for name, _severity, _mask in ALARMS:
            path = alarm_path(name)
            values[f"Alarms/{path}/Active"] = name in active
            values[f"Alarms/{path}/Acked"] = active.get(name, False)
        for i, name in enumerate(SENSORS):
            values[f"Sensors/{name}"] = payloads.rounded(snap.values[i], self.places[i])
            values[f"Sensors/{name}/Quality"] = snap.quality[i]
        values["Voted/O2"] = payloads.rounded(snap.voted_o2, self.o2_places)
        for name, on in zip(INPUTS, snap.inputs, strict=True):
            values[f"Inputs/{name}"] = bool(on)
        for name, on in zip(OUTPUTS, snap.outputs, strict=True):
            values[f"Outputs/{name}"] = bool(on)
        if health is not None:
            values["Health/Overruns Total"] = health["overruns_total"]
            values["Health/Scan Max s"] = health["scan_max_s"]
            values["Health/Events Dropped"] = health["events_dropped"]
            values["Health/Outbox Pending"] = health["outbox_pending"]
            values["Health/Outbox Dropped"] = health["outbox_dropped"]
            values["Health/Link Restarts"] = health["link_restarts"]
        if self.commands:
            for action in COMMANDS:
                values[command_metric(action)] = False
        values.update(self.static)
        values.update(extra)
        return values

    def changes(self, values: dict[str, Any], last: dict[str, Any]) -> list[tuple[str, Any]]:
        """The metrics to report: changed, or for a number moved past its deadband since the value
        last reported. A move to or from null (a failed sensor) is always reported."""
        out = []
        for d in self.defs:
            name = d.name
            if name not in values:
                continue
            new = values[name]
            old = last.get(name, _UNSET)
            if old is _UNSET or not _same(new, old, d.deadband if d.datatype == DOUBLE else None):
                out.append((name, new))
        return out


_UNSET = object()


def _same(new: Any, old: Any, band: float | None) -> bool:
    if band is None:
        return new == old
    new_null = new is None or not math.isfinite(new)
    old_null = old is None or not math.isfinite(old)
    if new_null or old_null:
        return new_null and old_null
    return abs(new - old) <= band if band > 0 else new == old
