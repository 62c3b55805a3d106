"""The `[mqtt]` table: broker, topics, limits and credentials (never logged)."""

from __future__ import annotations

from dataclasses import dataclass

from cellspec.configtools import Section


@dataclass(frozen=True)
class MqttSettings:
    enabled: bool
    host: str
    port: int
    topic_prefix: str
    keepalive_s: int
    telemetry_period_s: float
    outbox_max_events: int
    command_max_bytes: int
    command_rate_per_s: float
    client_id: str = ""
    username: str = ""
    password_file: str = ""
    password_env: str = ""
    tls: bool = False
    require_tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    homeassistant_discovery: bool = False
    homeassistant_prefix: str = "homeassistant"
    # Added with the plant link (issue 3): reconnect backoff, outbox durability, backlog drain.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 5.0      # issue 10: was 30 s, a broker restart cost half a minute
    outbox_sync: str = "full"
    publish_window: int = 20
    history_batch: int = 100
    history_rate_per_s: float = 100.0

    def __repr__(self) -> str:  # keep secrets' sources out of logs as well
        return f"MqttSettings(host={self.host!r}, port={self.port}, tls={self.tls})"


def read_mqtt(section: Section) -> MqttSettings:
    settings = MqttSettings(
        enabled=section.boolean("enabled", True),
        host=section.string("host", "127.0.0.1", nonempty=True),
        port=section.integer("port", 1883, minval=1, maxval=65535),
        topic_prefix=section.string("topic_prefix", "crushcell", nonempty=True),
        keepalive_s=section.integer("keepalive_s", 15, minval=5, maxval=600),
        telemetry_period_s=section.number("telemetry_period_s", 1.0, minval=0.1, maxval=3600.0),
        outbox_max_events=section.integer("outbox_max_events", 1_000_000, minval=1000, maxval=100_000_000),
        command_max_bytes=section.integer("command_max_bytes", 2048, minval=128, maxval=65536),
        command_rate_per_s=section.number("command_rate_per_s", 5.0, above=0.0, maxval=1000.0),
        client_id=section.string("client_id", ""),
        username=section.string("username", ""),
        password_file=section.string("password_file", ""),
        password_env=section.string("password_env", ""),
        tls=section.boolean("tls", False),
        require_tls=section.boolean("require_tls", False),
        ca_file=section.string("ca_file", ""),
        cert_file=section.string("cert_file", ""),
        key_file=section.string("key_file", ""),
        homeassistant_discovery=section.boolean("homeassistant_discovery", False),
        homeassistant_prefix=section.string("homeassistant_prefix", "homeassistant", nonempty=True),
        # Seconds, fractions kept (0.25 means 0.25 s); each wait is jittered within [d/2, d].
        reconnect_min_s=section.number("reconnect_min_s", 1.0, minval=0.1, maxval=60.0),
        reconnect_max_s=section.number("reconnect_max_s", 5.0, minval=0.1, maxval=3600.0),
        outbox_sync=section.string("outbox_sync", "full", choices=("full", "normal")),
        publish_window=section.integer("publish_window", 20, minval=1, maxval=1000),
        history_batch=section.integer("history_batch", 100, minval=1, maxval=1000),
        history_rate_per_s=section.number("history_rate_per_s", 100.0, above=0.0, maxval=100000.0),
    )
    if any(c in settings.topic_prefix for c in "#+") or settings.topic_prefix.endswith("/"):
        section.key_error("topic_prefix", "must not contain '#' or '+' or end with '/'")
    if settings.require_tls and not settings.tls:
        section.error("require_tls = true needs tls = true")
    if bool(settings.cert_file) != bool(settings.key_file):
        section.error("cert_file and key_file go together: give both or neither")
    if settings.reconnect_min_s > settings.reconnect_max_s:
        section.key_error("reconnect_min_s",
                          f"must not be above reconnect_max_s ({settings.reconnect_max_s:g})")
    if settings.password_file and settings.password_env:
        section.error("give password_file or password_env, not both")
    section.check_unknown()
    return settings
