"""bdSeq: the number that ties an NDEATH to its NBIRTH, kept across restarts.

Sparkplug 3.0: bdSeq starts at 0, goes up by one with every MQTT CONNECT the node sends and
wraps from 255 to 0; the CONNECT's will (NDEATH) and the NBIRTH after it carry the same one.
The number is written to the state dir before the CONNECT goes out, so a restart never sends
a number again that a broker may still hold in a will (a host would then mark the new session
offline when the old will fires). A connection attempt that never reached the broker (no socket)
keeps its number for the next attempt.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from controller.persist import atomic_write

log = logging.getLogger("crushcell.sparkplug")


class BdSeqStore:
    def __init__(self, path: str):
        self.path = Path(path)
        self._warned = False
        last = self._read()
        # The number the next CONNECT carries; `_used`: a CONNECT already carried it.
        self.current = 0 if last is None else (last + 1) % 256
        self._used = False
        self._written: int | None = last

    def _read(self) -> int | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            value = data["bdSeq"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"bdSeq {value!r} is not an integer 0..255")
            return value
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Not safety state: start at 0 and say so (a host may see one NDEATH it cannot match).
            log.warning("sparkplug: %s unreadable (%s); bdSeq starts at 0", self.path, exc)
            return None

    def for_connect(self) -> int:
        """The bdSeq of the CONNECT about to be sent (paho's thread, before the socket opens)."""
        if self._used:
            self.current = (self.current + 1) % 256
            self._used = False
        if self._written != self.current:
            try:
                atomic_write(self.path, json.dumps({"bdSeq": self.current}).encode())
                self._written = self.current
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("sparkplug: cannot write %s (%s); bdSeq is kept in memory only and "
                                "starts again from the file's value at the next start", self.path, exc)
        return self.current

    def used(self) -> None:
        """A CONNECT carrying the current number reached the broker (CONNACK or a dropped session)."""
        self._used = True
