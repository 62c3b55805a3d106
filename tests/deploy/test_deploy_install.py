"""deploy/install.sh run against a temporary root, with fake host commands.

The "versions" are prebuilt environment directories whose bin/crushcell is a shell script:
one passes check-config, one rejects it. A fake systemctl records every call and reports the
service active/running only while /opt/crushcell/current points at a version named in
FAKE_HEALTHY (space-separated), which is how a version that never sends READY=1 looks to
install.sh. The version named by FAKE_FLAPPING is active but changes its main PID each time.
"""

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

GOOD_BIN = '#!/bin/sh\necho "crushcell {version} $*"\nexit 0\n'
BAD_CONFIG_BIN = (
    '#!/bin/sh\n[ "$1" = check-config ] || exit 0\necho "$2: [o2] trip_pct = 7.0 is above 5.0" >&2\nexit 1\n'
)
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ "$1" = show ]; then
    cur="$(readlink "$FAKE_ROOT/opt/crushcell/current")"
    case " $FAKE_HEALTHY " in
        *" ${cur:-none} "*)
            # A flapping version restarts between two looks: its main PID changes.
            pid=4242; [ "$cur" = "$FAKE_FLAPPING" ] && pid=$$
            printf 'ActiveState=active\\nSubState=running\\nNRestarts=0\\nMainPID=%s\\n' "$pid" ;;
        *)
            printf 'ActiveState=activating\\nSubState=start\\nNRestarts=0\\nMainPID=0\\n' ;;
    esac
fi
exit 0
"""
FAKE_RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$FAKE_LOG"\n'


class Board:
    """A temporary root plus the fakes, and a way to run install.sh against it."""

    def __init__(self, tmp: Path, deploy_dir: Path = DEPLOY) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.root.mkdir()
        self.log = tmp / "calls.log"
        self.log.touch()
        self.config = tmp / "cell.toml"
        self.config.write_text("# shipped config\nscan_period_s = 0.1\n")
        self.script = deploy_dir / "install.sh"
        fakes = tmp / "fakes"
        fakes.mkdir()
        self.env = dict(os.environ, FAKE_LOG=str(self.log), FAKE_ROOT=str(self.root))
        self.env.update(FAKE_HEALTHY="", FAKE_FLAPPING="")
        self.env.pop("NOTIFY_SOCKET", None)
        for name, text, var in (
            ("systemctl", FAKE_SYSTEMCTL, "CRUSHCELL_SYSTEMCTL"),
            ("useradd", FAKE_RECORDER, "CRUSHCELL_USERADD"),
            ("usermod", FAKE_RECORDER, "CRUSHCELL_USERMOD"),
            ("groupadd", FAKE_RECORDER, "CRUSHCELL_GROUPADD"),
            ("userdel", FAKE_RECORDER, "CRUSHCELL_USERDEL"),
        ):
            path = fakes / name
            path.write_text(text)
            path.chmod(0o755)
            self.env[var] = str(path)

    def version(self, name: str, body: str = GOOD_BIN) -> Path:
        src = self.tmp / f"build-{name}"
        (src / "bin").mkdir(parents=True)
        exe = src / "bin" / "crushcell"
        exe.write_text(body.format(version=name))
        exe.chmod(0o755)
        return src

    def run(self, *args: str, healthy: str = "") -> subprocess.CompletedProcess[str]:
        env = dict(self.env, FAKE_HEALTHY=healthy)
        return subprocess.run(
            ["bash", str(self.script), "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def current(self) -> str:
        return os.readlink(self.root / "opt/crushcell/current")

    def install(self, name: str = "1.0.0", *extra: str) -> subprocess.CompletedProcess[str]:
        src = self.version(name) if not (self.tmp / f"build-{name}").exists() else self.tmp / f"build-{name}"
        return self.run(
            "--config", str(self.config), "--version", name, "--settle", "0", *extra, str(src), healthy=name
        )

    def snapshot(self) -> dict[str, tuple[str, str]]:
        """Every path under the root: mode and link target or content."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = path.read_text()
            else:
                what = "dir"
            out[str(path.relative_to(self.root))] = (oct(st.st_mode), what)
        return out


@pytest.fixture
def board(tmp_path):
    return Board(tmp_path)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_install_layout(board):
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    root = board.root
    assert board.current() == "1.0.0"  # relative, so the tree can be inspected from anywhere
    version_dir = root / "opt/crushcell/1.0.0"
    assert mode(version_dir) == 0o755
    assert os.access(version_dir / "bin/crushcell", os.X_OK)
    unit = root / "etc/systemd/system/crushcell.service"
    assert unit.read_text() == (DEPLOY / "crushcell.service").read_text()
    assert mode(unit) == 0o644
    assert mode(root / "etc/crushcell") == 0o750
    config = root / "etc/crushcell/cell.toml"
    assert config.read_text() == board.config.read_text()
    assert mode(config) == 0o640  # may hold plant-link credentials
    assert mode(root / "var/lib/crushcell") == 0o750
    assert mode(root / "var/log/crushcell") == 0o750

    calls = board.calls()
    useradd = [c for c in calls if c.startswith("useradd ")]
    assert len(useradd) == 1 and useradd[0].endswith(" crushcell") and "--groups gpio,i2c" in useradd[0]
    assert "groupadd --system -f gpio" in calls and "groupadd --system -f i2c" in calls
    # The config is checked (by the new version) before the service is started.
    assert "crushcell 1.0.0 check-config" in result.stdout
    assert calls.index("enable crushcell.service") < calls.index("restart crushcell.service")
    assert "daemon-reload" in calls


def test_host_steps_are_printed_not_run_under_root(tmp_path):
    board = Board(tmp_path)
    for var in ("CRUSHCELL_SYSTEMCTL", "CRUSHCELL_USERADD", "CRUSHCELL_USERMOD", "CRUSHCELL_GROUPADD"):
        del board.env[var]
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert board.calls() == []
    assert "skipped under --root: useradd --system" in result.stdout
    assert "skipped under --root: systemctl enable crushcell.service" in result.stdout


def test_install_twice_changes_nothing_and_does_not_restart(board):
    assert board.install("1.0.0").returncode == 0
    first = board.snapshot()
    board.log.write_text("")
    second = board.install("1.0.0")
    assert second.returncode == 0, second.stderr
    assert board.snapshot() == first
    # A no-op re-run must not restart a controller that may be supervising a running cell.
    assert "restart crushcell.service" not in board.calls()
    assert "not restarting" in second.stdout


def test_existing_config_is_never_overwritten(board):
    config = board.root / "etc/crushcell/cell.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# tuned at commissioning\n")
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "# tuned at commissioning\n"
    assert "keeping the existing" in result.stdout


def test_fresh_install_with_rejected_config_does_not_start(board):
    src = board.version("1.0.0", BAD_CONFIG_BIN)
    result = board.run("--config", str(board.config), "--version", "1.0.0", str(src))
    assert result.returncode == 1
    assert "rejects" in result.stderr and "trip_pct" in result.stderr
    assert not (board.root / "opt/crushcell/current").exists()
    assert not any(c.startswith(("restart", "start", "enable")) for c in board.calls())


def test_i2c_enabled_in_config_txt_once(board):
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("dtparam=audio=on\n#dtparam=i2c_arm=on\n")
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert cfg.read_text() == "dtparam=audio=on\ndtparam=i2c_arm=on\n"
    assert (board.root / "etc/modules-load.d/crushcell-i2c.conf").read_text() == "i2c-dev\n"
    # I2C only works after a reboot, so the service is enabled but not started now.
    assert "reboot" in result.stdout
    assert "restart crushcell.service" not in board.calls()
    assert board.install("1.0.0").returncode == 0
    assert cfg.read_text().count("i2c_arm") == 1


def test_i2c_line_appended_when_absent(board):
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[all]\ndtparam=audio=on\n")
    assert board.install("1.0.0").returncode == 0
    lines = cfg.read_text().splitlines()
    assert lines[:2] == ["[all]", "dtparam=audio=on"]
    assert lines.count("dtparam=i2c_arm=on") == 1


def test_raspi_config_used_when_present(board, tmp_path):
    fake = tmp_path / "fakes" / "raspi-config"
    # get_i2c prints 1 (off) until do_i2c 0 has run.
    fake.write_text(
        '#!/bin/sh\necho "raspi-config $*" >> "$FAKE_LOG"\n'
        'if [ "$2" = get_i2c ]; then [ -f "$FAKE_ROOT/i2c-on" ] && echo 0 || echo 1; fi\n'
        'if [ "$2" = do_i2c ]; then touch "$FAKE_ROOT/i2c-on"; fi\n'
    )
    fake.chmod(0o755)
    board.env["CRUSHCELL_RASPI_CONFIG"] = str(fake)
    assert board.install("1.0.0").returncode == 0
    assert "raspi-config nonint do_i2c 0" in board.calls()
    board.log.write_text("")
    assert board.install("1.0.0").returncode == 0
    assert "raspi-config nonint do_i2c 0" not in board.calls()


def test_upgrade_switches_and_keeps_previous(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    result = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(src), healthy="2.0.0")
    assert result.returncode == 0, result.stderr
    assert board.current() == "2.0.0"
    assert os.readlink(board.root / "opt/crushcell/previous") == "1.0.0"
    assert (board.root / "opt/crushcell/1.0.0/bin/crushcell").exists()
    assert "crushcell 2.0.0 check-config" in result.stdout


def test_upgrade_rejected_by_check_config_changes_nothing(board):
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    src = board.version("2.0.0", BAD_CONFIG_BIN)
    result = board.run("--upgrade", "--version", "2.0.0", "--ready-timeout", "0", str(src), healthy="1.0.0")
    assert result.returncode == 1
    assert board.current() == "1.0.0"
    assert "2.0.0 rejects" in result.stderr
    assert "trip_pct = 7.0 is above 5.0" in result.stderr  # the controller's own reason is shown
    assert "1.0.0 is still current" in result.stderr
    assert not (board.root / "opt/crushcell/2.0.0").exists()
    assert not any(c.startswith("restart") for c in board.calls())


def test_upgrade_that_never_becomes_ready_rolls_back(board):
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    src = board.version("2.0.0")
    result = board.run(
        "--upgrade", "--version", "2.0.0", "--ready-timeout", "0", "--settle", "0", str(src), healthy="1.0.0"
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert board.current() == "1.0.0"
    calls = board.calls()
    assert calls.count("restart crushcell.service") == 2  # the new version, then the old again
    assert "did not become healthy; rolling back to 1.0.0" in result.stderr
    assert "1.0.0 is running again" in result.stderr
    assert "ActiveState=activating" in result.stdout


def test_rollback_that_also_fails_says_the_cell_is_down(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    result = board.run("--upgrade", "--version", "2.0.0", "--ready-timeout", "0", str(src), healthy="none")
    assert result.returncode == 4
    assert board.current() == "1.0.0"
    assert "the cell is down" in result.stderr


def test_rollback_restores_the_old_unit(board):
    assert board.install("1.0.0").returncode == 0
    unit = board.root / "etc/systemd/system/crushcell.service"
    old_unit = unit.read_text()
    # Pretend 1.0.0 shipped another unit; 2.0.0 brings the current one.
    (board.root / "opt/crushcell/1.0.0/crushcell.service").write_text(old_unit + "# 1.0.0\n")
    unit.write_text(old_unit + "# 1.0.0\n")
    src = board.version("2.0.0")
    board.log.write_text("")
    result = board.run(
        "--upgrade", "--version", "2.0.0", "--ready-timeout", "0", "--settle", "0", str(src), healthy="1.0.0"
    )
    assert result.returncode == 3
    assert unit.read_text() == old_unit + "# 1.0.0\n"
    assert "daemon-reload" in board.calls()


def test_upgrade_that_restarts_right_after_ready_rolls_back(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    board.env["FAKE_FLAPPING"] = "2.0.0"
    result = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(src), healthy="1.0.0 2.0.0")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "did not stay up" in result.stdout
    assert board.current() == "1.0.0"


def test_install_of_another_version_requires_upgrade(board):
    assert board.install("1.0.0").returncode == 0
    result = board.install("2.0.0")
    assert result.returncode == 1
    assert "use --upgrade" in result.stderr
    assert board.current() == "1.0.0"


def test_uninstall_keeps_config_and_state(board):
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    result = board.run("--uninstall")
    assert result.returncode == 0, result.stderr
    assert "disable --now crushcell.service" in board.calls()
    assert not (board.root / "opt/crushcell").exists()
    assert not (board.root / "etc/systemd/system/crushcell.service").exists()
    assert (board.root / "etc/crushcell/cell.toml").exists()
    assert (board.root / "var/lib/crushcell").is_dir()
    assert not any(c.startswith("userdel") for c in board.calls())


def test_uninstall_purge_removes_everything(board):
    assert board.install("1.0.0").returncode == 0
    result = board.run("--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    for rel in ("opt/crushcell", "etc/crushcell", "var/lib/crushcell", "var/log/crushcell"):
        assert not (board.root / rel).exists(), rel
    assert "userdel crushcell" in board.calls()


def copy_deploy(tmp_path: Path, with_mosquitto: bool) -> Path:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("install.sh", "crushcell.service"):
        (deploy / name).write_bytes((DEPLOY / name).read_bytes())
    if with_mosquitto:
        (deploy / "mosquitto").mkdir()
        (deploy / "mosquitto" / "crushcell.conf").write_text("listener 1883 127.0.0.1\n")
        (deploy / "mosquitto" / "acl").write_text("topic readwrite crushcell/#\n")
    return deploy


def test_mosquitto_skipped_when_sample_missing(tmp_path):
    board = Board(tmp_path, copy_deploy(tmp_path, with_mosquitto=False))
    result = board.install("1.0.0", "--with-mosquitto")
    assert result.returncode == 0, result.stderr
    assert "skipping Mosquitto" in result.stdout
    assert not (board.root / "etc/mosquitto").exists()


def test_mosquitto_sample_installed_without_overwriting(tmp_path):
    board = Board(tmp_path, copy_deploy(tmp_path, with_mosquitto=True))
    kept = board.root / "etc/mosquitto/crushcell/acl"
    kept.parent.mkdir(parents=True)
    kept.write_text("# site ACL\n")
    result = board.install("1.0.0", "--with-mosquitto")
    assert result.returncode == 0, result.stderr
    assert (board.root / "etc/mosquitto/conf.d/crushcell.conf").read_text() == "listener 1883 127.0.0.1\n"
    assert kept.read_text() == "# site ACL\n"
    assert "restart mosquitto.service" in board.calls()
    # --purge removes what the installer put there, and only that.
    assert board.run("--uninstall", "--purge").returncode == 0
    assert not (board.root / "etc/mosquitto/conf.d/crushcell.conf").exists()
    assert kept.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus", "x"],
        [],
        ["--ready-timeout", "soon", "x"],
        ["--ready-timeout"],
        ["a", "b"],
        ["--purge", "x"],
        ["--uninstall", "x"],
    ],
)
def test_bad_arguments_print_usage_and_exit_2(board, args):
    result = board.run(*args)
    assert result.returncode == 2
    assert "usage: install.sh" in result.stderr
    assert board.calls() == []


def tiny_wheel(directory: Path, version: str) -> Path:
    """A real, dependency-free crushcell wheel whose check-config prints the config path."""
    import base64
    import hashlib
    import zipfile

    files = {
        "crushcell_fake.py": (
            "import sys\ndef main():\n    print('tiny crushcell', ' '.join(sys.argv[1:]))\n    return 0\n"
        ),
        f"crushcell-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: crushcell\nVersion: {version}\n"
        ),
        f"crushcell-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"crushcell-{version}.dist-info/entry_points.txt": (
            "[console_scripts]\ncrushcell = crushcell_fake:main\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record_name = f"crushcell-{version}.dist-info/RECORD"
    record.append(f"{record_name},,")
    files[record_name] = "\n".join(record) + "\n"
    wheel = directory / f"crushcell-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def test_wheel_installs_into_a_versioned_venv(board):
    """The real path: python3 -m venv + pip install of the wheel (offline: it has no dependencies)."""
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        pytest.skip("this python3 cannot create a venv with pip (Debian: apt-get install python3-venv)")
    wheel = tiny_wheel(board.tmp, "0.0.1")
    env_extra = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    board.env.update(env_extra)
    result = board.run("--config", str(board.config), "--settle", "0", str(wheel), healthy="0.0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert board.current() == "0.0.1"  # the version comes from the wheel's file name
    venv = board.root / "opt/crushcell/0.0.1"
    assert (venv / "pyvenv.cfg").is_file()
    assert "tiny crushcell check-config" in result.stdout
    out = subprocess.run([str(venv / "bin/crushcell"), "x"], capture_output=True, text=True, check=True)
    assert out.stdout == "tiny crushcell x\n"


def test_upgrade_back_to_an_installed_version_reuses_it(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    up = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(src), healthy="1.0.0 2.0.0")
    assert up.returncode == 0, up.stderr
    old_dir = board.root / "opt/crushcell/1.0.0"
    # Back to 1.0.0 by naming its directory; 1.0.0 then never becomes ready, so roll forward
    # again to 2.0.0 -- and 1.0.0 must survive both moves.
    back = board.run("--upgrade", "--ready-timeout", "0", "--settle", "0", str(old_dir), healthy="2.0.0")
    assert back.returncode == 3, back.stdout + back.stderr
    assert board.current() == "2.0.0"
    assert (old_dir / "bin/crushcell").exists()
    back = board.run("--upgrade", "--settle", "0", str(old_dir), healthy="1.0.0")
    assert back.returncode == 0, back.stdout + back.stderr
    assert board.current() == "1.0.0"
    assert os.readlink(board.root / "opt/crushcell/previous") == "2.0.0"
