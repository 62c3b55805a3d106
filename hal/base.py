"""What every HAL backend offers the scan loop.

Why this shape: the loop reads everything, steps the safety core, then writes every output at
once, all against one clock value it owns (real monotonic time or simulated time). Faults travel
as values (a reading's `fault`, a failed input as None, a failed write as False), never as
exceptions, so one bad device can never stop the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from cellspec.names import INPUTS, OUTPUTS, SENSORS

# Fault codes a backend may put in Reading.fault. The core adds its own health verdicts
# (nan, out_of_range, stale, stuck) on top of these.
FAULT_DISCONNECT = "disconnect"    # no answer from the device (I2C NACK, OSError 5/121, absent)
FAULT_CRC = "crc"                  # answer failed its checksum
FAULT_TIMEOUT = "timeout"          # conversion never finished
FAULT_OPEN_CIRCUIT = "open_circuit"  # thermocouple open (MCP9600 status bit 4 with the bias network)
FAULT_LOOP_LOW = "loop_low"        # 4-20 mA below the channel's valid band (default 3.8 mA, NAMUR NE43)
FAULT_LOOP_HIGH = "loop_high"      # 4-20 mA above the channel's valid band (default 20.9 mA, NE43)
FAULT_MAINTENANCE = "maintenance"  # 4-20 mA in the transmitter's maintenance band: not measuring
FAULT_INPUT_RANGE = "input_range"  # MCP9600 status bit 4 without the bias network: EMF out of range
FAULT_OPEN_SUSPECT = "open_suspect"  # thermocouple without bias: a jump, or pinned at the cold junction
FAULT_DEVICE = "device"            # the device reports its own fault


class Reading(NamedTuple):
    """One sensor sample: value in engineering units, fault code or None, sample time (ms).

    t_ms is on the clock the loop passes as `now_ms` (the core's raw clock): the time the sample
    was taken, never later than the read that returns it; a sample repeated unchanged keeps its
    t_ms. The core takes its age when it first sees a t_ms, wrap-safe, and ages it on its own
    time from then, so a wrap or a backward step of that clock cannot make a sample fresh or stale
    for longer than its stale_s.
    """

    value: float
    fault: str | None
    t_ms: int


class CellIO(Protocol):
    """A backend: the simulated cell or real hardware."""

    def read_sensors(self, now_ms: int) -> Sequence[Reading]:
        """Every sensor, in `SENSORS` order. Must not block longer than a scan."""

    def read_inputs(self, now_ms: int) -> Sequence[bool | None]:
        """Every digital input, in `INPUTS` order; None where the read failed.

        Inputs in `EDGE_LATCHED_INPUTS` (estop_ok, door_closed) read False if they went False at any
        time since the previous read, even if True again now (a pulse shorter than a scan must
        still trip); the read after that gives the live value.
        """

    def write_outputs(self, values: Sequence[bool]) -> bool:
        """Apply every logical output (in `OUTPUTS` order) at once; False if any write failed."""

    def force_safe(self) -> None:
        """Put every output in its configured safe state. Never raises."""

    def heartbeat(self) -> None:
        """Toggle the external watchdog heartbeat; called once per healthy scan."""

    def close(self) -> None:
        """Force the safe state, then release the devices. Never raises."""


__all__ = ["CellIO", "Reading", "SENSORS", "INPUTS", "OUTPUTS"]
