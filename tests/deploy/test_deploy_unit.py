"""deploy/crushcell.service: systemd accepts it, and it keeps the public contract."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "crushcell.service"
BIN = "/opt/crushcell/current/bin/crushcell"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package 'systemd'); .ci/run installs it",
)


def verify(unit_text: str, tmp_path: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports for this unit text.

    The ExecStart binary does not exist on a build machine, so the copy points at a stub
    executable in tmp; nothing else changes. verify exits 0 on unknown keys and unparsable
    values (it only logs them), so every line of output that names the unit counts too.
    """
    stub = tmp_path / "bin" / "crushcell"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    assert BIN in unit_text
    copy = tmp_path / "crushcell.service"
    copy.write_text(unit_text.replace(BIN, str(stub)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "crushcell" in ln]
    if proc.returncode != 0:
        lines.append(f"systemd-analyze verify exited {proc.returncode}")
    return lines


@needs_analyze
def test_systemd_accepts_the_unit(tmp_path):
    assert verify(UNIT.read_text(), tmp_path) == []


@needs_analyze
@pytest.mark.parametrize(
    ("line", "broken"),
    [
        ("ProtectHome=yes", "ProtectHomme=yes"),
        ("WatchdogSec=1s", "WatchdogSec=one second"),
        ("DevicePolicy=closed", "DevicePolicy=shut"),
        ("Type=notify", "Type=notfy"),
        ("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "RestrictAddressFamilies=AF_UNIX AF_BOGUS"),
    ],
)
def test_verify_catches_planted_errors(tmp_path, line, broken):
    """Proves the check above can fail: each planted error must be reported."""
    text = UNIT.read_text()
    assert f"\n{line}\n" in text
    assert verify(text.replace(f"\n{line}\n", f"\n{broken}\n"), tmp_path) != []


def service_section() -> dict[str, list[str]]:
    """[Service] as key -> every value (repeated keys such as DeviceAllow= kept in order)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_contract():
    svc = service_section()
    assert svc["Type"] == ["notify"]
    # always: a stray SIGTERM ends the controller with exit 0, which on-failure would not restart.
    assert svc["Restart"] == ["always"]
    # No --hal: the config's [hal] backend chooses (hardware on a board, sim for check-systemd),
    # so the same unit runs both without a drop-in.
    assert svc["ExecStart"] == [f"{BIN} run --config /etc/crushcell/cell.toml --state-dir /var/lib/crushcell"]
    assert "--hal" not in svc["ExecStart"][0]
    assert svc["ExecStartPre"] == [f"{BIN} check-config /etc/crushcell/cell.toml"]
    assert svc["User"] == ["crushcell"]
    assert set(svc["SupplementaryGroups"][0].split()) == {"gpio", "i2c"}
    for key in ("StateDirectory", "ConfigurationDirectory", "LogsDirectory"):
        assert svc[key] == ["crushcell"]
    for key, value in (
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("DevicePolicy", "closed"),
    ):
        assert svc[key] == [value], key
    assert "PrivateDevices" not in svc  # would hide the I2C and GPIO nodes
    assert svc["DeviceAllow"] == ["char-i2c rw", "char-gpiochip rw", "char-*gpiomem rw"]
    assert set(svc["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_watchdog_within_domain_budget():
    """docs/process-safety.md: systemd watchdog 0.5 to 1 s."""
    (value,) = service_section()["WatchdogSec"]
    seconds = float(value[:-2]) / 1000 if value.endswith("ms") else float(value.rstrip("s"))
    assert 0.5 <= seconds <= 1.0


def test_unit_parses_as_ini():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_check_systemd_builds_its_wheel_from_every_package_the_project_ships():
    """check-systemd copies the sources it builds from: a package missing there made an install
    that could not import (cellspec, when the layering moved the names into it)."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"]
    packages = {p.rstrip("*") for p in include}
    line = next(ln for ln in (root / "deploy" / "check-systemd.sh").read_text().splitlines()
                if ln.startswith('cp -a "$repo/pyproject.toml"'))
    copied = set(re.findall(r'"\$repo/([a-z_]+)"', line))
    assert packages <= copied, f"check-systemd.sh does not copy {sorted(packages - copied)}"
