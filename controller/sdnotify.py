"""systemd notification protocol (sd_notify), implemented directly.

Why not a library: the protocol is one datagram on a Unix socket, and the scan loop needs
guarantees that are easier to give than to check in someone else's code: a notification
never raises into the loop and never blocks it. A notification that cannot be sent is
counted in ``failed`` (and its error kept in ``last_error``); it costs, at worst, a
watchdog restart, which is the safe direction.

How the scan loop uses it (the watchdog is the dead-man of the loop, see deploy/README.md):

* ``ready()`` once, after the first healthy scan: with ``Type=notify`` the unit only
  becomes active then, so a controller that cannot scan never looks started.
* ``watchdog()`` only while scans are healthy, at most every ``watchdog_interval_s() / 2``:
  a hung or overrunning loop stops pinging and systemd kills and restarts it.
* ``stopping()`` when a controlled shutdown starts; ``status(text)`` for ``systemctl status``.

Outside systemd (``NOTIFY_SOCKET`` unset: tests, simulation, a shell) every call is a no-op.
CPython only: the MicroPython subset never runs under systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Sends notifications to the service manager named by ``$NOTIFY_SOCKET``.

    ``environ`` is read once, at construction (default ``os.environ``), so tests can pass a
    plain dict and the loop never pays for environment look-ups per scan.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: bytes | None = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s: float | None = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        """True when a usable ``NOTIFY_SOCKET`` was given (the process runs under systemd)."""
        return self._address is not None

    def ready(self) -> bool:
        """Startup finished: the first healthy scan has run."""
        return self._send("READY=1")

    def watchdog(self) -> bool:
        """The loop is alive and its scans are healthy. Call only then."""
        return self._send("WATCHDOG=1")

    def stopping(self) -> bool:
        """A controlled shutdown has started (outputs are going to their safe state)."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``.

        Line breaks are replaced: the protocol is newline-separated ``KEY=value`` pairs, and
        a status text containing ``\\nWATCHDOG=1`` must not be able to ping the watchdog.
        """
        line = " ".join(str(text).splitlines())
        return self._send("STATUS=" + line)

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout systemd enforces (``WatchdogSec=``), in seconds, or None.

        None when ``WATCHDOG_USEC`` is unset or invalid, or when ``WATCHDOG_PID`` names another
        process (the watchdog then belongs to a parent, not to us). Ping at half this.
        """
        return self._watchdog_s

    def close(self) -> None:
        """Release the socket. Later calls reopen it; safe to call twice."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _send(self, message: str) -> bool:
        """Send one datagram; True when the kernel took it. Never raises, never blocks."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must not stall the scan loop: fail with EAGAIN instead.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except (OSError, ValueError) as exc:
            # Counted, not raised: the loop keeps scanning; a lost WATCHDOG=1 at worst ends
            # in a watchdog restart, which is the safe direction.
            self.failed += 1
            self.last_error = f"{message.split('=', 1)[0]}: {exc}"
            self.close()
            return False
        self.sent += 1
        return True


def _socket_address(value: str) -> bytes | None:
    """The ``NOTIFY_SOCKET`` address as bytes, or None when unset or not a Unix socket.

    ``@name`` is Linux's abstract namespace (a leading NUL byte); anything else must be an
    absolute path. Other forms (e.g. ``vsock:``) are not used on a board and are ignored.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds from ``WATCHDOG_USEC``, honouring ``WATCHDOG_PID`` as sd_watchdog_enabled() does."""
    usec = env.get("WATCHDOG_USEC", "")
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid != "":
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return value / 1_000_000
