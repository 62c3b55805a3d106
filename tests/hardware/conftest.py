from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory
from hwfakes import FakeCellWiring, make_config

from hal.hardware import HardwareCell


@pytest.fixture
def config():
    return make_config()


@pytest.fixture
def wiring():
    return FakeCellWiring()


@pytest.fixture
def factory():
    return MockFactory()


@pytest.fixture
def cell(config, wiring, factory):
    c = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    yield c
    c.close()
