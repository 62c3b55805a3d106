"""The public names of the cell: sensors, inputs, outputs, states.

They are a contract with dashboards, scripts and acceptance tests: extend, never rename.
Tuples, not dicts, because order matters on MicroPython too.
"""

SENSORS = (
    "o2_a", "o2_b", "o2_c", "lel_cell", "h2_cell", "co_cell", "hf_room",
    "lel_rto", "temp_gas", "temp_material", "dp_cell", "n2_supply",
)
O2_SENSORS = ("o2_a", "o2_b", "o2_c")
# Gas sensors that need bump tests and calibrations (electrochemical, NDIR): tracked per sensor.
CALIBRATED_SENSORS = ("o2_a", "o2_b", "o2_c", "lel_cell", "h2_cell", "co_cell", "hf_room", "lel_rto")
INPUTS = ("estop_ok", "door_closed", "rto_ready", "crusher_running", "local_reset", "remote_enable")
# `alarm` is the beacon (on while TRIPPED or while an alarm is unacknowledged); `horn` sounds until
# an acknowledgement silences it. `horn` was added after `alarm`: extend, never reorder.
OUTPUTS = ("crusher", "feed", "n2_purge", "n2_boost", "exhaust", "vent", "alarm", "horn")
STATES = ("BOOT", "IDLE", "PURGING", "READY", "RUNNING", "STOPPING", "TRIPPED")
COMMANDS = ("purge", "start", "stop", "shutdown", "reset", "ack")
SOURCES = ("local", "remote")

# What a failed read of a digital input counts as: the unsafe value for what it guards.
INPUT_FAILSAFE = {
    "estop_ok": False,
    "door_closed": False,
    "rto_ready": False,
    "crusher_running": True,
    "local_reset": False,
    "remote_enable": False,
}

# Named indexes into INPUTS and OUTPUTS (the core and the HAL use these, never bare numbers).
IN_ESTOP, IN_DOOR, IN_RTO, IN_CRUSHER, IN_RESET, IN_REMOTE = 0, 1, 2, 3, 4, 5
OUT_CRUSHER, OUT_FEED, OUT_PURGE, OUT_BOOST = 0, 1, 2, 3
OUT_EXHAUST, OUT_VENT, OUT_ALARM, OUT_HORN = 4, 5, 6, 7
# Inputs whose falling edges the HAL latches between reads: a pulse shorter than a scan still trips.
EDGE_LATCHED_INPUTS = ("estop_ok", "door_closed")
