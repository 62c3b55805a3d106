"""The shipped broker samples (deploy/mosquitto/) made runnable on loopback, for the tests
(test_broker_samples.py) and the fleet benchmark (bench/bench_fleet.py).

The sample files are used as they are: only file locations and the port are substituted, and
each substitution must find its text exactly once, so a changed sample fails loudly here rather
than being silently run with /etc paths. No pytest here: the benchmark imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from brokers import Broker

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
BINDING = "use_username_as_clientid true\n"


def substitute(text: str, subs: dict[str, str], sample: str) -> str:
    for old, new in subs.items():
        if text.count(old) != 1:
            raise AssertionError(f"{sample}: expected {old!r} once; update the substitutions in "
                                 "tests/mqtt/samples.py")
        text = text.replace(old, new)
    return text


def root_user() -> str:
    # Started as root, mosquitto drops to user "mosquitto", which cannot read our tmp files.
    return "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""


def cell_block(acl: str, cell: str) -> str:
    """Another cell's ACL block, made as crushcell.acl says: cell1's block with cell1 replaced."""
    lines = acl.splitlines(keepends=True)
    start = lines.index("user crushcell-cell1\n")
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "".join(lines[start:end]).replace("cell1", cell) + "\n"


def acl_for(cells: list[str], base: str | None = None) -> str:
    """The sample ACL (or `base`) with a block for every cell in `cells` other than cell1."""
    acl = (SAMPLES / "crushcell.acl").read_text() if base is None else base
    return acl + "\n" + "".join(cell_block(acl, c) for c in cells if c != "cell1")


# Debian's /etc/mosquitto/mosquitto.conf (bookworm), which deploy/install.sh --with-mosquitto
# installs the sample under: its paths moved into the test folder, its log to stderr.
DEBIAN_MAIN = """pid_file {folder}/mosquitto.pid
persistence true
persistence_location {persist}/
log_dest stderr
log_type error
log_type warning
include_dir {confd}
"""


def sample_conf(port: int, *, passwd: str, acl: str, certs: dict[str, str], binding: bool = True) -> str:
    """deploy/mosquitto/mosquitto.conf on 127.0.0.1:`port` with our files; `binding=False` takes
    the client-id binding out (the planted bug of the takeover test)."""
    text = (SAMPLES / "mosquitto.conf").read_text()
    if not binding:
        text = substitute(text, {BINDING: ""}, "mosquitto.conf")
    return substitute(text, {
        "\nlistener 8883\n": f"\nlistener {port} 127.0.0.1\n",
        "\npassword_file /etc/mosquitto/crushcell.passwd\n": f"\npassword_file {passwd}\n",
        "\nacl_file /etc/mosquitto/crushcell/crushcell.acl\n": f"\nacl_file {acl}\n",
        "\ncafile /etc/mosquitto/certs/ca.crt\n": f"\ncafile {certs['ca.crt']}\n",
        "\ncertfile /etc/mosquitto/certs/server.crt\n": f"\ncertfile {certs['server.crt']}\n",
        "\nkeyfile /etc/mosquitto/certs/server.key\n": f"\nkeyfile {certs['server.key']}\n",
    }, "mosquitto.conf")


def sample_broker(folder: Path, *, passwd: str, acl: str, certs: dict[str, str], binding: bool = True,
                  confd: dict[str, str] | None = None) -> Broker:
    """A Broker (not started) laid out as install.sh installs the sample: Debian's main config,
    the sample as conf.d/mosquitto.conf, and any other `confd` files (name -> text) beside it."""
    b = Broker(folder)
    persist, confd_dir = folder / "persist", folder / "conf.d"
    persist.mkdir(exist_ok=True)
    confd_dir.mkdir(exist_ok=True)
    (confd_dir / "mosquitto.conf").write_text(sample_conf(b.port, passwd=passwd, acl=acl, certs=certs,
                                                          binding=binding))
    for name, text in (confd or {}).items():
        (confd_dir / name).write_text(text)
    b.conf.write_text(DEBIAN_MAIN.format(folder=folder, persist=persist, confd=confd_dir) + root_user())
    return b
