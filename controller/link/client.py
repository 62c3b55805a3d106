"""The one module that imports paho-mqtt: builds a configured client for the link and `watch`.

paho-mqtt 2.x with CallbackAPIVersion.VERSION2 and MQTT 5: its "retain as published" subscription
option lets the controller see that a *live* command was published retained and refuse it too
(MQTT 3.1.1 clears the flag on live delivery). paho does not honour the broker's Receive Maximum
by itself: the link reads it from the CONNACK and limits its in-flight messages. Connection is always
`connect_async` + `loop_start`: a broker missing at boot never blocks, and paho retries forever,
with the delays the link chooses (`set_next_delay`, jittered, see controller/link/pacing.py).
Callback exceptions are suppressed (`suppress_exceptions`): one bad message must never stop
paho's network thread (the link guards its callbacks as well).

Secrets: the password comes from a file or an environment variable named in the config, is
handed to paho and kept nowhere else; it never appears in logs, reprs or payloads. A password
or key file that group or others may read is warned about once, and refused with require_tls.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger("crushcell.link")

_warned: set[str] = set()   # security warnings already given in this process (each once)


class LinkConfigError(ValueError):
    """The plant link cannot be set up as configured (names the key or option, never a secret)."""


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def check_secret_file(settings: Any, key: str, path: str, section: str = "[mqtt]") -> None:
    """A credentials file readable by group or others: refused with require_tls, else warned once."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return   # reading it reports the problem
    if not mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        return
    problem = (f"{section} {key} = {path!r} is readable or writable by group or others "
               f"(mode {stat.S_IMODE(mode):04o}); make it private: chmod 600 {path}")
    if settings.require_tls:
        # Hazard: require_tls promises a locked-down link; a password others can read breaks it.
        raise LinkConfigError(problem + " (refused because require_tls = true)")
    warn_once(f"mode:{key}:{path}", "plant link: WARNING: " + problem)


def parse_broker(text: str, default_port: int) -> tuple[str, int]:
    """'HOST', 'HOST:PORT', '[v6addr]:PORT' -> (host, port)."""
    text = text.strip()
    if not text:
        raise LinkConfigError("--broker: empty; give HOST or HOST:PORT")
    if "://" in text:
        raise LinkConfigError(f"--broker {text}: give HOST or HOST:PORT, not a URL "
                              "(TLS is set by [mqtt] tls in the config)")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise LinkConfigError(f"--broker {text}: unclosed '[' in an IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise LinkConfigError(f"--broker {text}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise LinkConfigError(f"--broker {text}: no host")
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise LinkConfigError(f"--broker {text}: port must be a number from 1 to 65535")
    return host, int(port_text)


def read_password(settings: Any, environ: Any = os.environ, section: str = "[mqtt]") -> str | None:
    """The broker password from password_file or password_env; None when neither is set.
    section: the config table the settings came from, for the error message."""
    if settings.password_file:
        check_secret_file(settings, "password_file", settings.password_file, section)
        try:
            with open(settings.password_file, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as exc:
            raise LinkConfigError(f"{section} password_file = {settings.password_file!r}: cannot read: "
                                  f"{exc.strerror or exc}") from None
    if settings.password_env:
        value = environ.get(settings.password_env)
        if value is None:
            raise LinkConfigError(f"{section} password_env = {settings.password_env!r}: that environment "
                                  "variable is not set")
        return value
    return None


def make_client(settings: Any, client_id: str, *, password: str | None,
                will: tuple[str, str] | None = None) -> mqtt.Client:
    """A paho client with credentials, TLS, last will and backoff applied; not yet connected."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    # Hazard: paho re-raises callback exceptions and its network thread dies with them (the link
    # then looks online but never answers again). Log and carry on instead.
    client.suppress_exceptions = True
    if settings.require_tls and not settings.tls:
        # Hazard: credentials and commands in clear text on the plant network.
        raise LinkConfigError("[mqtt] require_tls = true but tls = false: refusing to connect in clear text")
    if settings.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(settings, key)
            if path and not os.path.isfile(path):
                raise LinkConfigError(f"[mqtt] {key} = {path!r}: no such file")
        if settings.key_file:
            check_secret_file(settings, "key_file", settings.key_file)
        try:
            client.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None,
                           keyfile=settings.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise LinkConfigError(f"[mqtt] TLS files rejected: {exc}") from None
    if settings.username:
        if not settings.tls:
            warn_once("cleartext", f"plant link: WARNING: [mqtt] username = {settings.username!r} "
                      "over plain TCP: the password crosses the network in clear text; set tls = true")
        client.username_pw_set(settings.username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    # Fractions of a second are kept (paho's wait takes floats); the link replaces these with
    # jittered delays of its own after every failed attempt (set_next_delay).
    client.reconnect_delay_set(min_delay=settings.reconnect_min_s,    # type: ignore[arg-type]
                               max_delay=settings.reconnect_max_s)    # type: ignore[arg-type]
    client.on_socket_open = _send_at_once
    return client


def _send_at_once(_client: Any, _userdata: Any, sock: Any) -> None:
    """TCP_NODELAY: a command reply or an event is one small packet; Nagle's algorithm held each
    behind the previous one's delayed ACK (up to 40 ms; measured p99 52 ms -> 12 ms, docs/mqtt.md)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError, ValueError):
        pass   # not a TCP socket (a test double, a unix socket): nothing to tune


def set_next_delay(client: mqtt.Client, delay_s: float) -> None:
    """The wait before paho's next reconnect attempt (called from on_disconnect/on_connect_fail)."""
    client.reconnect_delay_set(min_delay=delay_s, max_delay=delay_s)   # type: ignore[arg-type]


def network_alive(client: mqtt.Client) -> bool:
    """Is paho's network thread (started by loop_start) still running?

    paho has no public accessor: it keeps the thread in `_thread` and clears it when the thread
    ends, whether by loop_stop() or by an exception that escaped a callback.
    """
    thread = getattr(client, "_thread", None)
    return thread is not None and thread.is_alive()


def retire(client: mqtt.Client) -> None:
    """Let go of a client the link replaces, without blocking and without raising.

    A normal DISCONNECT, so the broker drops the old connection at once and does not publish
    the last will (the replacement says `online` itself). loop_stop() is not called: it joins
    the network thread, which may be the very thing that is stuck; it ends by itself after the
    DISCONNECT, and is a daemon thread if it does not.
    """
    try:
        client.disconnect()
    except Exception:   # noqa: BLE001 - a broken client must not stop its own replacement
        pass


def connect_error_text(exc: BaseException | None) -> str:
    """Why a connection attempt failed, for the log (TLS errors named as such; no secrets)."""
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def start(client: mqtt.Client, host: str, port: int, keepalive: int) -> None:
    """Connect in the background; never raises for a missing broker (paho keeps retrying)."""
    # Clean start every time: commands queued while we were away are stale and must not act.
    client.connect_async(host, port, keepalive=keepalive, clean_start=True)
    client.loop_start()


def subscribe(client: mqtt.Client, topic: str, qos: int = 1) -> None:
    """Subscribe so that the retain flag arrives as published (live retained commands show it)."""
    client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))


def receive_maximum(properties: Any) -> int:
    """The broker's Receive Maximum from CONNACK properties (65535 when not sent)."""
    value = getattr(properties, "ReceiveMaximum", None)
    return int(value) if isinstance(value, int) and value > 0 else 65535


def connack_text(reason_code: Any) -> str:
    """A reason code as words, for the log (never includes credentials)."""
    return str(reason_code)


def is_failure(reason_code: Any) -> bool:
    return bool(getattr(reason_code, "is_failure", False))


MQTTMessage = mqtt.MQTTMessage
MQTT_ERR_SUCCESS = mqtt.MQTT_ERR_SUCCESS
MQTT_ERR_NO_CONN = mqtt.MQTT_ERR_NO_CONN
