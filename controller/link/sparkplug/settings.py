"""The `[sparkplug]` table: the cell as a Sparkplug B edge node (off by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellspec.configtools import Section

# Characters Sparkplug 3.0 reserves in Group, Edge Node and Host IDs (they are MQTT topic levels).
RESERVED = "+/#"


@dataclass(frozen=True)
class SparkplugSettings:
    enabled: bool = False
    group_id: str = "crushcell"
    edge_node_id: str = ""             # "" until read: the cell id
    primary_host_id: str = ""          # "": no primary host, publish as soon as connected
    sample_period_s: float = 0.5       # how often values are compared against their deadbands
    commands: bool = False             # operator commands over NCMD (Rebirth always works)
    client_id: str = ""                # "": crushcell-<cell id>-spb
    store_max_messages: int = 100_000  # held NDATA records while the primary host is away
    deadbands: dict[str, float] = field(default_factory=dict)   # sensor -> report-by-exception band
    # The node's own broker user ("": the [mqtt] user). A broker that takes the username as the
    # client id (our sample) needs one: two connections of one user throw each other off.
    username: str = ""
    password_file: str = ""
    password_env: str = ""

    def __repr__(self) -> str:  # keep secrets' sources out of logs
        return (f"SparkplugSettings(enabled={self.enabled}, group_id={self.group_id!r}, "
                f"edge_node_id={self.edge_node_id!r}, primary_host_id={self.primary_host_id!r})")


def _check_id(section: Section, key: str, value: str) -> None:
    bad = sorted({c for c in value if c in RESERVED})
    if bad:
        section.key_error(key, f"must not contain {' or '.join(repr(c) for c in bad)} "
                               "(Sparkplug reserves them: the ID is an MQTT topic level)")
    # MQTT forbids U+0000 in topic names and advises against the other control characters.
    controls = sorted({c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F})
    if controls:
        codes = ", ".join(f"U+{ord(c):04X}" for c in controls)
        section.key_error(key, f"must not contain control characters ({codes}): it is an MQTT topic level")


def read_sparkplug(section: Section, cell_id: str, sensors: tuple[str, ...] | list[str],
                   mqtt_enabled: bool, mqtt_client_id: str = "") -> SparkplugSettings:
    enabled = section.boolean("enabled", False)
    group_id = section.string("group_id", "crushcell", nonempty=True)
    edge_node_id = section.string("edge_node_id", cell_id, nonempty=True)
    primary_host_id = section.string("primary_host_id", "")
    sample_period_s = section.number("sample_period_s", 0.5, minval=0.05, maxval=60.0)
    commands = section.boolean("commands", False)
    client_id = section.string("client_id", "")
    store_max = section.integer("store_max_messages", 100_000, minval=100, maxval=10_000_000)
    username = section.string("username", "")
    password_file = section.string("password_file", "")
    password_env = section.string("password_env", "")
    if (password_file or password_env) and not username:
        section.error("password_file and password_env go with username (without it the node uses "
                      "the [mqtt] user and password)")
    if password_file and password_env:
        section.error("give password_file or password_env, not both")
    bands = section.table("deadbands", {})
    deadbands = {}
    for name in list(bands.data):
        if name not in sensors:
            bands.key_error(name, f"is not a sensor (sensors: {', '.join(sensors)})")
            bands.used.add(name)
            continue
        deadbands[name] = bands.number(name, minval=0.0)
    bands.check_unknown()
    for key, value in (("group_id", group_id), ("edge_node_id", edge_node_id),
                       ("primary_host_id", primary_host_id)):
        _check_id(section, key, value)
    json_id = mqtt_client_id or f"crushcell-{cell_id}"
    if (client_id or f"crushcell-{cell_id}-spb") == json_id:
        # Hazard: two clients with one id throw each other off the broker, over and over.
        section.key_error("client_id", f"must differ from the JSON link's client id ({json_id!r}): "
                                       "the broker would disconnect one client whenever the other connects")
    if enabled and not mqtt_enabled:
        section.key_error("enabled", "needs [mqtt] enabled = true: the edge node uses the [mqtt] broker, "
                                     "credentials and TLS settings")
    section.check_unknown()
    return SparkplugSettings(enabled=enabled, group_id=group_id, edge_node_id=edge_node_id,
                             primary_host_id=primary_host_id, sample_period_s=sample_period_s,
                             commands=commands, client_id=client_id, store_max_messages=store_max,
                             deadbands=deadbands, username=username, password_file=password_file,
                             password_env=password_env)
