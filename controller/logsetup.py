"""Human logs for `crushcell run` and `crushcell watch`: stdlib logging on stderr, set up once.

Why here and not in each module: modules only call ``logging.getLogger("crushcell.<part>")``;
what is shown, where and how is decided once, at the start of a command, from ``-v``/``-q`` and
the config's ``[logging] level``.

Streams: stderr is for people (this log, the start banner, the live status line, the exit
summary); stdout carries `run`'s JSON event stream only (one record per line, never prose), as
`simulate` does. Under systemd both are the journal: each line then starts with the sd-daemon
priority of its level (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so that
``journalctl -u crushcell -p warning`` shows warnings and worse; the JSON event lines carry their
own priorities (controller/journald.py). A multi-line record (a traceback) gets the prefix on
every line, because journald cuts at line ends and would store the rest at priority 6.

Colour on a terminal only, and never when ``NO_COLOR`` is set to anything but the empty string
(https://no-color.org) or ``TERM=dumb``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import journald

LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
LEVEL_NAMES = tuple(LEVELS)          # the values `[logging] level` accepts
DEFAULT_LEVEL = "info"

# sd-daemon priorities (sd-daemon(3)) by logging level; a level between two takes the lower one's.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, journald.ERR), (logging.WARNING, journald.WARNING),
               (logging.INFO, journald.INFO), (logging.DEBUG, 7))
_COLOURS = {logging.CRITICAL: "\033[1;31m", logging.ERROR: "\033[31m", logging.WARNING: "\033[33m",
            logging.DEBUG: "\033[2m"}
RESET = "\033[0m"

# The terminal is shared by the log (stderr) and the live status line (stderr, redrawn in place):
# whoever writes takes this lock, and a log line first clears the status line (`before_emit`).
TERMINAL_LOCK = threading.RLock()


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: ERROR 3, WARNING 4, INFO 6, DEBUG 7."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def colour_enabled(stream: Any, environ: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (non-empty) or TERM=dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", "") != "" or env.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class HumanFormatter(logging.Formatter):
    """`HH:MM:SS WARNING crushcell.link: text` on a terminal or in a file; under the journal
    `<4>WARNING crushcell.link: text` on every line (journald adds its own time stamps).

    A record logged with ``extra={"plain": True}`` (the banner, the summary) is its text alone,
    still with the priority prefix under the journal."""

    def __init__(self, *, journal: bool = False, colour: bool = False):
        super().__init__()
        self.journal = journal
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).rstrip("\n")
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info).rstrip("\n")
        if not getattr(record, "plain", False):
            head = f"{record.levelname} {record.name}: "
            if not self.journal:
                head = time.strftime("%H:%M:%S ", time.localtime(record.created)) + head
            text = head + text
        lines = text.split("\n")
        if self.journal:
            tag = journald.prefix(priority(record.levelno))
            return "\n".join(tag + line for line in lines)
        if self.colour:
            code = _COLOURS.get(record.levelno)
            if code:
                return "\n".join(code + line + RESET for line in lines)
        return text


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler that shares the terminal with the status line (see TERMINAL_LOCK)."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.before_emit: Callable[[], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        with TERMINAL_LOCK:
            hook = self.before_emit
            if hook is not None:
                try:
                    hook()
                except Exception:   # noqa: BLE001 - clearing the status line must never lose a log line
                    pass
            super().emit(record)


_handler: ConsoleHandler | None = None


def configure(level: int | str = DEFAULT_LEVEL, stream: Any = None,
              environ: Mapping[str, str] | None = None) -> ConsoleHandler:
    """Send every `logging` record at `level` and above to `stream` (default stderr), formatted
    for a person, or with sd-daemon prefixes when `stream` is the journal. Idempotent: a second
    call replaces the handler the first one installed (the level may come from the config later)."""
    global _handler
    stream = sys.stderr if stream is None else stream
    if isinstance(level, str):
        level = LEVELS[level]
    handler = ConsoleHandler(stream)
    handler.setFormatter(HumanFormatter(journal=journald.stream_is_journal(stream, environ),
                                        colour=colour_enabled(stream, environ)))
    root = logging.getLogger()
    if _handler is not None:
        handler.before_emit = _handler.before_emit
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    return handler


def set_level(level: int | str) -> None:
    logging.getLogger().setLevel(LEVELS[level] if isinstance(level, str) else level)


def current_handler() -> ConsoleHandler | None:
    return _handler


def set_before_emit(hook: Callable[[], None] | None) -> None:
    """Called (under TERMINAL_LOCK) before each log line: the status line clears itself there."""
    if _handler is not None:
        _handler.before_emit = hook


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """-v / -q for a subcommand (they override the config's [logging] level)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true",
                       help="log everything, debug included (overrides [logging] level)")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="log warnings and errors only, no info lines (for `run`: no banner, no "
                            "summary); overrides [logging] level")


def level_from(args: argparse.Namespace, configured: str | None = None) -> str:
    """The level to use: -v debug, -q warning, else the config's [logging] level, else info."""
    if getattr(args, "verbose", False):
        return "debug"
    if getattr(args, "quiet", False):
        return "warning"
    return configured or DEFAULT_LEVEL
