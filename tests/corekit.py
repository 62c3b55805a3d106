"""A bench for the safety core: plain readings and inputs, a clock we move by hand.

Why not the sim: one test per rule must control every value exactly. This kit is pure Python
and also runs under MicroPython (no typing, no pytest imports). `Clocked` is the bench whose
raw clock wraps (like MicroPython's time.ticks_ms) or steps back.
"""

import json

from cellspec.names import INPUTS, SENSORS
from controller.core import Core

PARAMS_JSON = None   # set by the MicroPython runner (no TOML there)
_BASE = []


def params(**changes):
    """The default plant's core parameters (a fresh copy), with top-level keys changed."""
    if not _BASE:
        if PARAMS_JSON is not None:
            with open(PARAMS_JSON) as f:
                _BASE.append(json.load(f))
        else:
            from controller import config
            _BASE.append(config.load(config_path()).core_params())
    p = json.loads(json.dumps(_BASE[0]))
    for k in changes:
        p[k] = changes[k]
    return p


def config_path():
    import os
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "cell.toml")

# Healthy values of an inert, quiet cell (all below every warning of the default config).
QUIET = {
    "o2_a": 0.5, "o2_b": 0.52, "o2_c": 0.48, "lel_cell": 2.0, "h2_cell": 0.05, "co_cell": 5.0,
    "hf_room": 0.02, "lel_rto": 1.0, "temp_gas": 25.0, "temp_material": 28.0, "dp_cell": -80.0,
    "n2_supply": 6.0,
}
AIR = dict(QUIET, o2_a=20.9, o2_b=20.8, o2_c=20.95)
GOOD_INPUTS = {"estop_ok": True, "door_closed": True, "rto_ready": True, "crusher_running": False,
               "local_reset": False, "remote_enable": False}


class Bench:
    """Drives a Core scan by scan. Sensors jitter by a few counts so none looks stuck."""

    def __init__(self, params, values=None, period_ms=100):
        self.core = Core(params, 0)
        self.values = dict(values or QUIET)
        self.faults = {}
        self.stale = {}
        self.inputs = dict(GOOD_INPUTS)
        self.now = 0
        self.period = period_ms
        self.overruns = 0
        self.write_ok = True
        self.follow_crusher = True   # contactor feedback follows the command
        self.n = 0
        self.res = {s[0]: s[5] for s in params["sensors"]}

    def readings(self):
        self.n += 1
        jitter = 3 if self.n % 2 else -3
        out = []
        for name in SENSORS:
            v = self.values[name]
            if v == v:
                v = v + jitter * self.res[name]
            t = self.stale.get(name, self.now)
            out.append((v, self.faults.get(name), t))
        return out

    def scan(self, commands=()):
        if self.follow_crusher:
            self.inputs["crusher_running"] = self.core.outputs[0]
        ins = [self.inputs[n] for n in INPUTS]
        out = self.core.step(self.now, self.readings(), ins, commands, self.overruns, self.write_ok)
        self.now += self.period
        return out

    def run(self, seconds, commands=()):
        steps = int(seconds * 1000 / self.period)
        for k in range(steps):
            self.scan(commands if k == 0 else ())
        return self.core.state_name

    def command(self, action, source="local"):
        self.scan(((action, source),))
        return self.core.command_results[-1]

    def to_state(self, name):
        """Bring the core from BOOT to IDLE, PURGING, READY or RUNNING the normal way."""
        c = self.core
        self.run(3)
        assert c.state_name == "IDLE", c.state_name
        if name == "IDLE":
            return
        self.command("purge")
        assert c.state_name == "PURGING"
        if name == "PURGING":
            return
        self.run(11)
        assert c.state_name == "READY", c.state_name
        if name == "READY":
            return
        self.command("start")
        assert c.state_name == "RUNNING", c.state_name
        self.run(1)

    def events(self, kind=None):
        return [e for e in self.core.events if kind is None or e["type"] == kind]


WRAP = 1 << 30   # MicroPython's time.ticks_ms() wraps here on most ports


class Clocked(Bench):
    """A bench whose core reads a raw clock that can wrap and step back.

    `true` is the forward-only time (ms) since the bench was made, what a stopwatch beside the cell
    would show; the raw clock that the core and the readings' t_ms see is start + true + the clock
    steps so far, modulo `wrap` (None: a clock that never wraps, like CPython's monotonic ms).
    origin: the core's own time at creation, Core(params, origin, start); None: Core(params, start).
    """

    def __init__(self, params, start=0, wrap=WRAP, origin=None, values=None, period_ms=100):
        Bench.__init__(self, params, values, period_ms)
        if origin is not None:
            self.core = Core(params, origin, start)
        elif start:
            self.core = Core(params, start)
        self.true = 0
        self.offset = start
        self.wrap = wrap
        self.steps = {}   # true time (ms) -> step of the raw clock (ms) just before that scan
        self.now = self.raw()

    def raw(self):
        r = self.offset + self.true
        return r % self.wrap if self.wrap else r

    def step_clock(self, ms):
        """Step the raw clock now (negative: back), as NTP or a hand-set clock would."""
        self.offset += ms
        self.now = self.raw()

    def scan(self, commands=()):
        d = self.steps.pop(self.true, 0)
        if d:
            self.offset += d
        self.now = self.raw()
        out = Bench.scan(self, commands)   # steps the core at self.now, the raw clock
        self.true += self.period
        self.now = self.raw()
        return out
