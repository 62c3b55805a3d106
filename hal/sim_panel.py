"""The simulated cell's field panel, for a running controller: `crushcell panel ACTION`.

Why: on a laptop a latched trip could only be cleared by writing a scenario or deleting the state
dir (a remote reset is off, rightly). A real cell has a panel beside it; the simulated one now has
one too, so the whole story (trip, find the cause, clear it, reset) can be played by hand:

    crushcell panel estop --state-dir var/demo           # press the E-stop: the cell trips
    crushcell panel estop-release --state-dir var/demo   # pull it out again
    crushcell panel reset --state-dir var/demo           # the reset button (after reset_hold_s)

What it can do is what a person at the simulated cell can do, nothing more: press the panel's
reset push-button (the `local_reset` input, exactly as the scenario event `local_reset` does;
the core decides, as for the real button: a trip clears only once every latched cause has been
clear for `timers.reset_hold_s`), press and release the E-stop, open and close the door, and inject
hal/sim.py's faults (what a scenario's `fault` steps do). It never submits a command to the core,
never writes an output and never touches the latch or the journal.

Only the simulated backend makes a panel (`SimulatedCell.open_panel`): the hardware backend has no
such method, so with `--hal hardware` no socket exists and `crushcell panel` says so.

Threads: a daemon thread serves the socket; what it is asked is applied by the scan thread (the
loop's before_scan hook, like a scenario step), where the simulated cell and the core are read and
written. The server thread waits for the outcome and replies. A reset waits until the button is
out (a press lasts RESET_PRESS_MS), presses it, and replies after the scan that read it: the core's
answer to that rising edge (accepted, or refused with its reason).

Protocol: one JSON object on one line per connection, e.g. {"action": "reset"} or
{"action": "fault", "target": "o2_a", "mode": "disconnect"}; the reply, one line:
{"ok": true|false, "message": "...", "state": "TRIPPED", "causes": [...]}.
Socket: <state-dir>/sim-panel.sock, mode 0600 (the controller's user and root only), made when the
controller starts and removed when it stops. A leftover one (a controller killed with SIGKILL) is
replaced: the state dir's lock, held before the panel opens, says no other controller uses the dir.
"""

from __future__ import annotations

import collections
import difflib
import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

from cellspec.names import IN_RESET, OUTPUTS, SENSORS

SOCKET_NAME = "sim-panel.sock"
PID_FILE = "crushcell.pid"        # controller/runtime.py writes it (for people; the lock decides)
REQUEST_MAX_BYTES = 4096
READ_TIMEOUT_S = 2.0              # a client must send its line within this
REPLY_TIMEOUT_S = 10.0            # the scan thread must have answered within this (real seconds)

# action -> (arguments, what it does); the event of hal/sim.py it plays, if any.
ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "reset": ((), "press the panel's reset button (local_reset)"),
    "estop": ((), "press the E-stop (the chain opens)"),
    "estop-release": ((), "release the E-stop"),
    "door-open": ((), "open the cell door"),
    "door-close": ((), "close the cell door"),
    "fault": (("TARGET", "MODE"), "inject a fault of hal/sim.py (MODE clear ends it)"),
    "status": ((), "show the state, the latched causes and the panel's inputs"),
}
EVENTS = {"reset": "local_reset", "estop": "estop", "estop-release": "estop_release",
          "door-open": "door_open", "door-close": "door_close"}


class PanelError(ValueError):
    """A malformed panel request, or no panel to send it to; the message says which and why."""


def _fault_modes() -> dict[str, tuple[str, ...]]:
    from hal.sim import INPUT_FAULT_MODES, INPUT_FAULT_TARGETS, OUTPUT_FAULT_MODES, SENSOR_FAULT_MODES

    modes = {name: tuple(SENSOR_FAULT_MODES) for name in SENSORS}
    modes.update((name, tuple(INPUT_FAULT_MODES)) for name in INPUT_FAULT_TARGETS)
    modes.update((name, tuple(OUTPUT_FAULT_MODES)) for name in OUTPUTS)
    return modes


def _unknown(what: str, word: Any, known: tuple[str, ...]) -> PanelError:
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return PanelError(f"unknown {what} {word!r}{hint}; expected one of: {', '.join(known)}")


def validate(request: Any) -> dict[str, str]:
    """A request as the server accepts it, or PanelError naming what is wrong."""
    if not isinstance(request, dict):
        raise PanelError('a request is one JSON object, e.g. {"action": "reset"}')
    action = request.get("action")
    if action not in ACTIONS:
        raise _unknown("panel action", action, tuple(ACTIONS))
    allowed = {"action", "target", "mode"} if action == "fault" else {"action"}
    extra = sorted(set(request) - allowed)
    if extra:
        raise PanelError(f"{action}: unexpected key(s) {', '.join(extra)}")
    if action != "fault":
        return {"action": action}
    modes = _fault_modes()
    target, mode = request.get("target"), request.get("mode")
    if target is None or mode is None:
        raise PanelError("fault needs a TARGET and a MODE, e.g. fault o2_a disconnect "
                         "(MODE clear ends the fault)")
    if target not in modes:
        raise _unknown("fault target", target, tuple(modes))
    if mode not in modes[target]:
        raise _unknown(f"fault mode for {target}", mode, modes[target])
    return {"action": action, "target": target, "mode": mode}


def parse_words(words: list[str]) -> dict[str, str]:
    """`crushcell panel` arguments (ACTION [TARGET MODE]) as a request; PanelError when malformed."""
    if not words:
        raise PanelError(f"give an action: {', '.join(ACTIONS)}")
    action, args = words[0], words[1:]
    if action not in ACTIONS:
        raise _unknown("panel action", action, tuple(ACTIONS))
    wanted = ACTIONS[action][0]
    if len(args) != len(wanted):
        usage = " ".join((action, *wanted))
        raise PanelError(f"{action} takes {len(wanted) or 'no'} argument(s) ({usage}), "
                         f"got {len(args)}: {' '.join(args) or '-'}")
    request = {"action": action}
    if action == "fault":
        request.update(target=args[0], mode=args[1])
    return validate(request)


def socket_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


# -- the client: `crushcell panel` -------------------------------------------------------------
def send(state_dir: str | Path, request: dict[str, str], timeout_s: float = REPLY_TIMEOUT_S + 5.0) -> dict:
    """Send one request to the panel of the controller using `state_dir`; its reply.
    PanelError when there is no panel there (and why, as far as can be told)."""
    path = socket_path(state_dir)
    if not os.path.lexists(path):
        raise PanelError(_why_no_panel(Path(state_dir), path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise PanelError(f"no controller answers on {path}: it is left over from a controller that "
                             "has stopped (the next `crushcell run` on the simulated cell replaces it)"
                             ) from None
        except PermissionError:
            raise PanelError(f"{path} belongs to another user (mode 0600): run crushcell panel as the "
                             "controller's user") from None
        except OSError as exc:
            raise PanelError(f"cannot reach the panel at {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = _read_line(sock)
    except TimeoutError:
        raise PanelError(f"the controller did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise PanelError(f"the panel connection failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(reply)
    except ValueError:
        raise PanelError(f"the panel answered something that is not JSON: {reply[:200]!r}") from None
    if not isinstance(answer, dict):
        raise PanelError(f"the panel answered something unexpected: {reply[:200]!r}")
    return answer


def _why_no_panel(state_dir: Path, path: Path) -> str:
    head = (f"no simulated panel in {state_dir} ({path.name} is absent): the field panel exists only "
            "while a controller runs on the simulated cell (--hal sim or mock) with this --state-dir")
    try:
        pid = (state_dir / PID_FILE).read_text().strip()
    except OSError:
        pid = ""
    if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
        return (f"{head}. A controller runs there (pid {pid}, {PID_FILE}) without one: it drives the "
                "hardware (--hal hardware), whose panel is the real one beside the cell")
    if not state_dir.is_dir():
        return f"{head}; {state_dir} does not exist (give --state-dir; make run uses var/demo)"
    return head + " (make run uses var/demo)"


def _read_line(sock: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) <= REQUEST_MAX_BYTES * 4:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")


# -- the server: inside `crushcell run` on the simulated cell ----------------------------------
class _Request:
    __slots__ = ("body", "done", "reply", "phase", "scans", "before")

    def __init__(self, body: dict[str, str]):
        self.body = body
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.phase = "new"
        self.scans = 0
        self.before = ""


class PanelServer:
    """The socket (served by its own thread) and the scan-thread hook that applies what it receives."""

    def __init__(self, path: str | Path, cell: Any, loop: Any):
        self.path = Path(path)
        self.cell = cell
        self.loop = loop
        self.queue: collections.deque[_Request] = collections.deque()   # server thread -> scan thread
        self.active: list[_Request] = []                                 # scan thread only
        self.closed = threading.Event()
        self.sock = _listen(self.path)
        self.thread = threading.Thread(target=self._serve, name="crushcell-sim-panel", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout=2.0)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        for req in [*self.queue, *self.active]:
            self._finish(req, False, "the controller stopped before it could do it")

    def hook(self, before: Any = None) -> Any:
        """The loop's before_scan: `before` (a scenario Player, or None), then the panel."""
        def before_scan(now_ms: int) -> None:
            if before is not None:
                before(now_ms)
            if self.queue or self.active:
                self.service(now_ms)
        return before_scan

    # -- the server thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.closed.is_set():
                    return
                self.closed.wait(0.1)
                continue
            with conn:
                try:
                    self._handle(conn)
                except OSError:
                    pass   # the client went away: nothing to tell it

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(READ_TIMEOUT_S)
        try:
            line = _read_line(conn)
        except TimeoutError:
            self._send(conn, {"ok": False, "message": f"no request line within {READ_TIMEOUT_S:g} s"})
            return
        try:
            body = validate(json.loads(line) if line.strip() else None)
        except PanelError as exc:
            self._send(conn, {"ok": False, "message": str(exc)})
            return
        except ValueError as exc:   # JSON that does not parse
            self._send(conn, {"ok": False, "message": f"not JSON ({exc}): send one object on one line, "
                                                      'e.g. {"action": "reset"}'})
            return
        req = _Request(body)
        self.queue.append(req)
        if not req.done.wait(REPLY_TIMEOUT_S):
            self._send(conn, {"ok": False, "message": "the controller did not act within "
                                                      f"{REPLY_TIMEOUT_S:g} s (is it stopping?)"})
            return
        self._send(conn, req.reply or {"ok": False, "message": "no answer"})

    @staticmethod
    def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply, separators=(",", ":")).encode() + b"\n")

    # -- the scan thread ------------------------------------------------------------------------
    def service(self, now_ms: int) -> None:
        """Move each request on (scan thread: the core and the cell are consistent here)."""
        core = self.loop.core
        still = []
        for req in self.active:
            self._progress(req, core, now_ms)
            if not req.done.is_set():
                still.append(req)
        while self.queue:
            req = self.queue.popleft()
            self._progress(req, core, now_ms)
            if not req.done.is_set():
                still.append(req)
        self.active = still

    def _progress(self, req: _Request, core: Any, now_ms: int) -> None:
        body, action = req.body, req.body["action"]
        if req.phase == "new":
            if action == "status":
                self._finish(req, True, "status: " + _summary(core) + "; " + self._inputs(core))
                return
            if action == "reset" and core.inputs[IN_RESET]:
                req.phase = "wait"        # the button is still in from a press before: wait until it is out
                return
            req.before = core.state_name
            try:
                if action == "fault":
                    self.cell.inject_fault(body["target"], body["mode"])
                else:
                    self.cell.event(EVENTS[action])
            except ValueError as exc:   # the cell refused it (cannot happen for a validated request)
                self._finish(req, False, str(exc))
                return
            self.loop.events.append({"t": now_ms / 1000.0, "type": "panel", **body})
            req.phase, req.scans = "applied", self.loop.scans
            return
        if req.phase == "wait":
            if not core.inputs[IN_RESET]:
                req.phase = "new"
                self._progress(req, core, now_ms)
            return
        if self.loop.scans == req.scans:
            return                        # no scan has read it yet
        if action != "reset":
            self._finish(req, True, f"{_done(body)}; " + _summary(core))
            return
        if not core.inputs[IN_RESET]:     # cannot happen: the cell holds a press until it is read
            self._finish(req, False, "the core did not see the reset button pressed; " + _summary(core))
            return
        if not core.command_results:   # cannot happen either: the rising edge adds a local reset
            self._finish(req, False, "the core made no reset of the press; " + _summary(core))
            return
        accepted, reason = core.command_results[-1]   # the press's rising edge: the scan's last command
        if accepted:
            self._finish(req, True, f"reset accepted: {req.before} -> {core.state_name} (a reset never "
                                    "restarts crushing: purge, then start)")
        else:
            self._finish(req, False, f"reset refused: {reason}; " + _summary(core))

    def _inputs(self, core: Any) -> str:
        from cellspec.names import INPUTS

        shown = ("estop_ok", "door_closed", "local_reset")
        return "inputs: " + ", ".join(f"{n} {str(core.inputs[INPUTS.index(n)]).lower()}" for n in shown)

    def _finish(self, req: _Request, ok: bool, message: str) -> None:
        if req.done.is_set():
            return
        core = self.loop.core
        req.reply = {"ok": ok, "message": message, "state": core.state_name, "causes": list(core.causes())}
        req.done.set()


def _done(body: dict[str, str]) -> str:
    """What the panel did, in the past tense."""
    action = body["action"]
    if action == "fault":
        if body["mode"] == "clear":
            return f"fault on {body['target']} cleared"
        return f"fault {body['mode']} injected on {body['target']}"
    return {"estop": "E-stop pressed (the chain is open)", "estop-release": "E-stop released",
            "door-open": "door opened", "door-close": "door closed"}[action]


def _summary(core: Any) -> str:
    text = f"state {core.state_name}"
    if core.latched:
        text += f", latched: {', '.join(core.causes())}"
    if core.state_name == "TRIPPED":
        text += (f" (clear every cause, wait {core.reset_hold_ms / 1000.0:g} s, then press reset: "
                 "crushcell panel reset)")
    return text


def _listen(path: Path) -> socket.socket:
    """Bind `path` (mode 0600 before anyone can connect), replacing a leftover socket only."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket: left as it is")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)   # before listen(): until then nobody can connect
        sock.listen(4)
    except OSError:
        sock.close()
        raise
    sock.settimeout(0.5)        # accept() wakes to see close()
    return sock
