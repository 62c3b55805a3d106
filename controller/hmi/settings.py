"""The `[hmi]` table: where the web HMI listens, whether it may send commands, and which state dir it
reads (the journal and the calibration records; docs/hmi.md).

Read by controller/config.py like every other table (errors name file, table, key and problem);
kept free of imports so that loading a config never pulls in the web server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True)
class HmiSettings:
    listen: str = DEFAULT_LISTEN   # HOST:PORT ([v6addr]:PORT)
    commands: bool = False         # the page offers purge/start/stop/shutdown/ack (reset: cell.remote_reset)
    state_dir: str | None = None   # the controller's state dir, read only; None: controller/statedir.py

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6addr]:PORT' -> (host, port); ValueError with the problem in words."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1:].startswith(":"):
            raise ValueError("must be [IPv6-ADDRESS]:PORT, e.g. \"[::1]:8080\"")
        host, port_text = text[1:end], text[end + 2:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError("must be HOST:PORT, e.g. \"127.0.0.1:8080\" (IPv6 in brackets: \"[::1]:8080\")")
    if not host:
        raise ValueError("has no host: give HOST:PORT, e.g. \"127.0.0.1:8080\" "
                         "(\"0.0.0.0:8080\": every interface)")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("must end in a port number from 1 to 65535")
    return host, int(port_text)


def read_hmi(section: Any) -> HmiSettings:
    """`section` is a cellspec.configtools.Section over `[hmi]` (absent: the defaults)."""
    listen = section.string("listen", DEFAULT_LISTEN, nonempty=True)
    commands = section.boolean("commands", False)
    state_dir = section.string("state_dir", "", nonempty=True)
    if isinstance(listen, str) and listen.strip():
        try:
            parse_listen(listen)
        except ValueError as exc:
            section.key_error("listen", str(exc))
            listen = DEFAULT_LISTEN
    section.check_unknown()
    return HmiSettings(listen=listen, commands=commands,
                       state_dir=state_dir if isinstance(state_dir, str) and state_dir.strip() else None)
