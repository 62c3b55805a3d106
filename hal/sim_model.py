"""Physics of the simulated crushing cell, integrated in fixed sub-steps by `hal.sim`.

Why a model and not canned curves: the controller must be tested against a plant that answers
its outputs (purge, boost, exhaust, vent, crusher, feed) the way the real cell would, with
realistic time constants, so that reaction times and interlocks are exercised end to end.

One well-mixed gas volume (CELL_VOLUME_M3). Flows are in m3/min, times in s, concentrations in
the sensors' units. Every balance is `V dC/dt = source - Q_in * (C - baseline)`, where Q_in is
what enters the cell (N2 + air leak + runaway gas): at constant pressure the same volume leaves
through the exhaust or the vent.

Figures that follow from the constants (nominal 6 bar N2):
- O2: from air with purge + boost (2.5 m3/min) tau = 0.8 min: below 1.5 % after about 2.1 min.
  Purge only with the baseline leak settles at 0.21 %; with `air_ingress` (0.15 m3/min) at 4.8 %,
  crossing 2.5 % about 2 min after the leak starts; purge + boost then settle near 1.2 %.
- dp: exhaust open -80 Pa, vent only -40 Pa (tau 1 s); both closed, N2 purge alone raises dp by
  12.5 Pa/s (+250 Pa about 26 s after isolation), purge + boost by 62 Pa/s; relief caps 400 Pa.
- Steady crushing (purge only, full feed): lel_cell 8 %LEL, h2 0.30 vol%, co 65 ppm,
  temp_gas 30 C, temp_material 35 C (two-stage heating, tau 420 s each: the rise never
  exceeds 0.8 K/min, below the 2 K/min warning).
- Thermal runaway: 30 K/min at start, rate doubling every 49 K (capped at 600 K/min), 500 C
  after about 160 s, burn-out at 180 s; peak gas 3 m3/min carrying (with purge + boost) about
  3000 ppm CO, 3 vol% H2, 60 %LEL, 200 ppm HF; then the material cools with tau 600 s / (1 +
  N2 flow in m3/min): 170 s with purge + boost open.
"""

from __future__ import annotations

import math

# -- Cell and gas supply -------------------------------------------------------------------------
CELL_VOLUME_M3 = 2.0             # free gas volume of the cell
AMBIENT_C = 20.0                 # room, material and gas temperature at rest
AIR_O2_PCT = 20.9                # O2 in air, vol %
N2_PURGE_M3_MIN = 0.5            # purge valve flow at nominal supply pressure
N2_BOOST_M3_MIN = 2.0            # high-flow valve at nominal supply pressure
N2_NOMINAL_BAR = 6.0             # supply pressure; valve flows scale linearly with it
N2_LOST_BAR = 0.5                # residual supply pressure after `n2_supply_loss`
N2_SUPPLY_TAU_S = 2.5            # supply pressure change: 6 -> 0.6 bar in 10 s

# -- Leaks and pressure --------------------------------------------------------------------------
AIR_LEAK_M3_MIN = 0.005          # baseline air leak into the cell at DP_LEAK_REF_PA suction
AIR_INGRESS_LEAK_M3_MIN = 0.15   # leak during `air_ingress` (torn seal)
DOOR_OPEN_LEAK_M3_MIN = 3.0      # leak with the door open
DP_LEAK_REF_PA = 80.0            # leaks flow as sqrt(|dp| / this); air in when dp < 0
DP_EXHAUST_PA = -80.0            # cell pressure held by the RTO extraction (exhaust open)
DP_VENT_PA = -40.0               # cell pressure with only the scrubber vent open
DP_TAU_S = 1.0                   # pressure settling time with exhaust or vent open
DP_STIFFNESS_PA_PER_M3 = 1500.0  # pressure rise per m3 of net inflow (cell, ducts, seals)
DP_RELIEF_PA = 400.0             # mechanical relief (bursting disc) caps the cell pressure

# -- Crushing ------------------------------------------------------------------------------------
FEED_TAU_S = 10.0                # material load in the crusher builds up and clears with this
CRUSH_LEL_SOURCE = 3.8           # %LEL.m3/min at full load (1.6 L/min of DMC vapour)
CRUSH_H2_SOURCE = 0.14           # vol%.m3/min at full load (1.4 L/min of H2)
CRUSH_CO_SOURCE = 28.8           # ppm.m3/min at full load (29 mL/min of CO)
CRUSH_HEAT_K = 15.0              # steady material temperature rise from crushing
CRUSH_HEAT_TAU_S = 420.0         # each of the two heating stages
GAS_CRUSH_FRACTION = 2.0 / 3.0   # share of the crushing heat seen by the gas thermocouple

# -- Baselines (kept several noise sd above the sensors' range low) ------------------------------
LEL_BASE = 0.8                   # %LEL, residual solvent
H2_BASE = 0.03                   # vol %
CO_BASE = 8.0                    # ppm
HF_ROOM_BASE = 0.08              # ppm in the room
LEL_RTO_BASE = 0.8               # %LEL at the RTO inlet
RTO_DILUTION = 0.3               # RTO inlet %LEL / cell %LEL (dilution air downstream)
LEL_RTO_TAU_S = 2.0              # duct transport and mixing to the RTO inlet

# -- Thermal runaway -----------------------------------------------------------------------------
RUNAWAY_RATE0_K_S = 0.5          # initial heating rate (30 K/min)
RUNAWAY_ACCEL_K = 70.0           # heating rate grows as exp(excess / this)
RUNAWAY_RATE_MAX_K_S = 10.0      # cap on the heating rate
RUNAWAY_PEAK_C = 500.0           # material temperature at full burn
RUNAWAY_BURN_S = 180.0           # the reaction ends this long after it started
RUNAWAY_SPAN_K = 400.0           # release intensity = min(1, excess / this)
RUNAWAY_GAS_M3_MIN = 3.0         # vent gas at full intensity
RUNAWAY_LEL_SOURCE = 330.0       # %LEL.m3/min at full intensity
RUNAWAY_H2_SOURCE = 16.5         # vol%.m3/min at full intensity
RUNAWAY_CO_SOURCE = 16500.0      # ppm.m3/min at full intensity
RUNAWAY_HF_SOURCE = 1100.0       # ppm.m3/min at full intensity
COOL_TAU_S = 600.0               # cooling of the hot material with no N2 flow
COOL_N2_REF_M3_MIN = 1.0         # each m3/min of N2 adds one more unit of cooling
GAS_HOT_FRACTION = 0.6           # share of the runaway excess temperature reaching the gas
GAS_HOT_TAU_S = 20.0
HF_ROOM_LEAK_PER_PA_S = 2e-6     # room HF gain per s per Pa of positive dp per ppm HF in the cell
HF_ROOM_TAU_S = 120.0            # room ventilation

# -- Contactor -----------------------------------------------------------------------------------
CONTACTOR_DELAY_S = 0.3          # crusher contactor feedback follows the command this late
# When the hard-wired chain opens (E-stop, `drop` fault) the coil loses its supply and the contactor
# drops out in tens of ms, well inside one scan: the model opens it at once (`open_chain`).

_sqrt = math.sqrt
_exp = math.exp


class CellModel:
    """True (noise-free) state of the cell. Set the `*_open`/`*_cmd` attributes, call `step(h)`."""

    def __init__(self) -> None:
        # Effective actuator states (after the hard-wired chain), set by the owner.
        self.crusher_cmd = False
        self.feed_on = False
        self.purge_open = True
        self.boost_open = True
        self.exhaust_open = False
        self.vent_open = True
        self.welded = False            # crusher contactor welded closed
        self.chain_open = False        # the hard-wired chain has cut the contactor coil
        # Disturbances, set by events.
        self.n2_target_bar = N2_NOMINAL_BAR
        self.leak_m3_min = AIR_LEAK_M3_MIN
        self.door_open = False
        # State.
        self.n2_bar = N2_NOMINAL_BAR
        self.o2 = AIR_O2_PCT           # power-up: the cell is full of air
        self.dp = 0.0
        self.lel = LEL_BASE
        self.h2 = H2_BASE
        self.co = CO_BASE
        self.hf_cell = 0.0
        self.hf_room = HF_ROOM_BASE
        self.lel_rto = LEL_RTO_BASE
        self.heat_a = 0.0              # first crushing-heat stage, K
        self.heat_b = 0.0              # second stage: material excess from crushing, K
        self.hot = 0.0                 # runaway excess temperature of the material, K
        self.gas_hot = 0.0             # runaway excess temperature of the gas, K
        self.runaway_s = -1.0          # time since the runaway started; < 0: none burning
        self.load = 0.0                # material in the crusher, 0..1
        self.contactor = False         # contactor closed (feedback)
        self._contactor_timer = 0.0
        self.n2_m3_min = 0.0
        self.air_in_m3_min = 0.0
        self.gas_m3_min = 0.0
        self.quantities = ()
        self.step(0.0)

    def open_chain(self, is_open: bool) -> None:
        """The hard-wired chain cuts (True) or restores (False) the contactor coil supply.

        Cut, the contactor drops out at once (welded contacts excepted: they cannot open); restored,
        it pulls in again after CONTACTOR_DELAY_S only if the command still asks for it.
        """
        self.chain_open = is_open
        if is_open and not self.welded:
            self.contactor = False
            self._contactor_timer = 0.0

    def start_runaway(self) -> None:
        if self.runaway_s < 0.0:
            self.runaway_s = 0.0

    def step(self, h: float) -> None:
        """Advance the model by `h` seconds (explicit Euler; h <= 0.1 s keeps it well inside stability)."""
        hm = h / 60.0
        # N2 supply pressure and valve flows.
        p = self.n2_bar + (self.n2_target_bar - self.n2_bar) * h / N2_SUPPLY_TAU_S
        self.n2_bar = p
        n2 = ((N2_PURGE_M3_MIN if self.purge_open else 0.0)
              + (N2_BOOST_M3_MIN if self.boost_open else 0.0)) * p / N2_NOMINAL_BAR
        self.n2_m3_min = n2

        # Contactor: the feedback follows the command after CONTACTOR_DELAY_S; an open hard-wired
        # chain keeps it open whatever the command; welded stays closed.
        want = (self.crusher_cmd and not self.chain_open) or self.welded
        if want != self.contactor:
            self._contactor_timer += h
            if self._contactor_timer >= CONTACTOR_DELAY_S - 1e-9:
                self.contactor = want
                self._contactor_timer = 0.0
        else:
            self._contactor_timer = 0.0
        running = self.contactor

        # Material load: the feed fills the crusher, running without feed clears it.
        load = self.load
        if self.feed_on:
            load += (1.0 - load) * h / FEED_TAU_S
        elif running:
            load -= load * h / FEED_TAU_S
        self.load = load
        crushing = load if running else 0.0

        # Thermal runaway: self-accelerating heating, gas release with the excess temperature.
        hot = self.hot
        base_mat = AMBIENT_C + self.heat_b
        if self.runaway_s >= 0.0:
            self.runaway_s += h
            rate = RUNAWAY_RATE0_K_S * _exp(min(hot / RUNAWAY_ACCEL_K, 20.0))
            if rate > RUNAWAY_RATE_MAX_K_S:
                rate = RUNAWAY_RATE_MAX_K_S
            hot = min(hot + rate * h, max(RUNAWAY_PEAK_C - base_mat, hot))
            intensity = hot / RUNAWAY_SPAN_K
            if intensity > 1.0:
                intensity = 1.0
            if self.runaway_s >= RUNAWAY_BURN_S:
                self.runaway_s = -1.0    # burnt out: no more heat or gas
        else:
            intensity = 0.0
            if hot > 0.0:
                hot -= hot * h * (1.0 + n2 / COOL_N2_REF_M3_MIN) / COOL_TAU_S
        self.hot = hot
        gas = RUNAWAY_GAS_M3_MIN * intensity
        self.gas_m3_min = gas

        # Air leaks in only under suction; sqrt(dp) orifice flow.
        dp = self.dp
        leak = DOOR_OPEN_LEAK_M3_MIN if self.door_open else self.leak_m3_min
        air_in = leak * _sqrt(-dp / DP_LEAK_REF_PA) if dp < 0.0 else 0.0
        self.air_in_m3_min = air_in
        q_in = n2 + air_in + gas
        k = hm / CELL_VOLUME_M3

        # Cell pressure: extraction or vent hold it; isolated, the inflow compresses it.
        if self.exhaust_open or self.vent_open:
            target = DP_EXHAUST_PA if self.exhaust_open else DP_VENT_PA
            dp += ((target - dp) / DP_TAU_S + DP_STIFFNESS_PA_PER_M3 * gas / 60.0) * h
        else:
            out = leak * _sqrt(dp / DP_LEAK_REF_PA) if dp > 0.0 else 0.0
            dp += DP_STIFFNESS_PA_PER_M3 * (q_in - out) / 60.0 * h
        if dp > DP_RELIEF_PA:
            dp = DP_RELIEF_PA
        self.dp = dp

        # Gas balances.
        o2 = self.o2 + (air_in * AIR_O2_PCT - q_in * self.o2) * k
        lel = self.lel + (CRUSH_LEL_SOURCE * crushing + RUNAWAY_LEL_SOURCE * intensity
                          - q_in * (self.lel - LEL_BASE)) * k
        h2 = self.h2 + (CRUSH_H2_SOURCE * crushing + RUNAWAY_H2_SOURCE * intensity
                        - q_in * (self.h2 - H2_BASE)) * k
        co = self.co + (CRUSH_CO_SOURCE * crushing + RUNAWAY_CO_SOURCE * intensity
                        - q_in * (self.co - CO_BASE)) * k
        hf_cell = self.hf_cell + (RUNAWAY_HF_SOURCE * intensity - q_in * self.hf_cell) * k
        self.o2, self.lel, self.h2, self.co, self.hf_cell = o2, lel, h2, co, hf_cell

        # HF reaches the room only when the cell is above room pressure.
        hf_room = self.hf_room
        gain = HF_ROOM_LEAK_PER_PA_S * dp * hf_cell if dp > 0.0 else 0.0
        hf_room += (gain - (hf_room - HF_ROOM_BASE) / HF_ROOM_TAU_S) * h
        self.hf_room = hf_room

        # RTO inlet sees diluted cell gas while the exhaust is open.
        rto_target = RTO_DILUTION * lel if self.exhaust_open else 0.0
        if rto_target < LEL_RTO_BASE:
            rto_target = LEL_RTO_BASE
        self.lel_rto += (rto_target - self.lel_rto) * h / LEL_RTO_TAU_S

        # Temperatures: two-stage crushing heat plus the runaway excess.
        self.heat_a += (CRUSH_HEAT_K * crushing - self.heat_a) * h / CRUSH_HEAT_TAU_S
        self.heat_b += (self.heat_a - self.heat_b) * h / CRUSH_HEAT_TAU_S
        self.gas_hot += (GAS_HOT_FRACTION * hot - self.gas_hot) * h / GAS_HOT_TAU_S
        t_mat = AMBIENT_C + self.heat_b + hot
        t_gas = AMBIENT_C + GAS_CRUSH_FRACTION * self.heat_b + self.gas_hot

        self.quantities = (o2, lel, h2, co, hf_room, self.lel_rto, t_gas, t_mat, dp, p)


# Index of each sensor's quantity in CellModel.quantities.
QUANTITY_OF_SENSOR = {
    "o2_a": 0, "o2_b": 0, "o2_c": 0, "lel_cell": 1, "h2_cell": 2, "co_cell": 3, "hf_room": 4,
    "lel_rto": 5, "temp_gas": 6, "temp_material": 7, "dp_cell": 8, "n2_supply": 9,
}
