"""Syslog priorities for the lines crushcell writes, when the stream is the systemd journal.

`run` writes its JSON event lines to stdout (priorities from `event_priority`) and its log to
stderr (priorities by level: controller/logsetup.py); under systemd both are the journal.

Why: journald stores every stderr line at priority 6 (info) unless the line starts with an
sd-daemon prefix such as ``<3>``. With the prefix, ``journalctl -u crushcell -p warning`` shows
trips, stalls, failed writes and active alarms, and nothing else. Outside systemd (a terminal, a
pipe, a file) lines are written as they are, so a human or a script never sees the prefixes.

systemd tells a service that its stderr is the journal through ``JOURNAL_STREAM=<dev>:<inode>``;
the variable is inherited by children whose stderr may be something else, so it counts only when
it names the file stderr really is (sd_journal_stream_fd(3), systemd.exec(5)).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6


def stream_is_journal(stream: Any, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM matches it)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def event_priority(event: Mapping[str, Any]) -> int:
    """The syslog priority of one event: errors for trips, warnings for what needs a look."""
    kind = event.get("type")
    if kind in ("trip", "stall"):
        return ERR
    if kind == "state":
        return ERR if event.get("to") == "TRIPPED" else INFO
    if kind == "alarm":
        return WARNING if event.get("active") else NOTICE
    if kind == "persist":
        return WARNING if "error" in event or "restored" in event else INFO
    if kind == "sensor":
        return INFO if event.get("quality") == "good" else WARNING
    if kind == "command":
        return INFO if event.get("accepted", True) else NOTICE
    if kind == "end":
        return WARNING if event.get("signal") not in (None, "SIGTERM", "SIGINT") else INFO
    return INFO


def prefix(priority: int) -> str:
    return f"<{priority}>"
