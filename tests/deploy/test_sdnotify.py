"""controller/sdnotify.py against real AF_UNIX datagram sockets."""

import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from controller.sdnotify import SystemdNotifier


@pytest.fixture
def listener():
    """A bound datagram socket in a short temporary path (sun_path holds 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_ready_watchdog_stopping_reach_the_socket(listener):
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"
    assert notifier.watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"
    assert (notifier.sent, notifier.failed) == (3, 0)


def test_status_cannot_inject_other_assignments(listener):
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    notifier.status("O2 high\nWATCHDOG=1\rREADY=1")
    payload = sock.recv(4096)
    assert payload.startswith(b"STATUS=O2 high")
    # One assignment only: the protocol splits on newlines.
    assert b"\n" not in payload and b"\r" not in payload


def test_abstract_namespace_socket():
    name = f"crushcell-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (SystemdNotifier({}), SystemdNotifier()):
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
        assert (notifier.sent, notifier.failed) == (0, 0)
        assert notifier._sock is None


def test_reads_os_environ_by_default(listener, monkeypatch):
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert SystemdNotifier().ready() is True
    assert sock.recv(4096) == b"READY=1"


def test_unusable_addresses_are_ignored():
    for value in ("", "@", "relative/path", "vsock:2:1234"):
        assert not SystemdNotifier({"NOTIFY_SOCKET": value}).enabled


def test_dead_socket_path_is_counted_not_raised(tmp_path):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert (notifier.sent, notifier.failed) == (0, 2)
    assert notifier.last_error is not None and notifier.last_error.startswith("WATCHDOG")


def test_socket_without_listener_is_counted_not_raised():
    directory = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.watchdog() is False
        assert notifier.failed == 1
    finally:
        path.unlink()
        directory.rmdir()


def test_recovers_when_the_listener_comes_back(tmp_path):
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.watchdog() is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        assert notifier.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert (notifier.sent, notifier.failed) == (1, 1)
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_full_receiver_queue_does_not_block(listener):
    """A receiver that never reads must not stall the scan loop: sends fail with EAGAIN."""
    _sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.watchdog() is True
    assert notifier._sock is not None and notifier._sock.getblocking() is False
    for _ in range(100_000):
        if not notifier.watchdog():
            break
    assert notifier.failed >= 1
    assert notifier.sent >= 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "1000000"}, 1.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "1s"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert SystemdNotifier(env).watchdog_interval_s() == expected
