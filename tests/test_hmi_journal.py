"""`crushcell hmi` reads the controller's state dir (issue 14): the journal search page (`/journal`)
and the calibration dates on the cell view.

The HMI runs in this process on a free port, as tests/mqtt/test_hmi.py starts it, but without a
broker: neither page needs one (the journal and calibration.json are files). The journal is written
with controller.persist's own writer (Journal), the calibration records with a real
`crushcell calibration record`; every page is fetched over HTTP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from controller import calibration as cal
from controller import config as cfg
from controller.hmi.journal import MAX_RESULTS
from controller.hmi.server import Hmi, make_server
from controller.hmi.settings import HmiSettings
from controller.persist import Journal

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime.now(dt.UTC)


def ts(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds")


# What a controller journals (controller/core.py, persist.py), oldest first, one seq each.
RECORDS = [
    (180, {"type": "config", "path": "config/cell.toml", "sha256": "0" * 64, "previous_sha256": None,
           "changed": False}),
    (170, {"type": "state", "from": "BOOT", "to": "IDLE", "cause": "self_test_passed"}),
    (90, {"type": "command", "action": "purge", "source": "local", "accepted": True, "reason": ""}),
    (60, {"type": "trip", "causes": ["co_rise", "temp_rise"]}),
    (60, {"type": "state", "from": "RUNNING", "to": "TRIPPED", "cause": "trip:co_rise,temp_rise"}),
    (10, {"type": "trip", "causes": ["o2_high"]}),
    (5, {"type": "command", "action": "reset", "source": "local", "accepted": True, "reason": "",
         "by": "ana"}),
]


def write_journal(state_dir: Path, max_bytes: int | None = None) -> None:
    journal = Journal(state_dir, **({"max_bytes": max_bytes} if max_bytes else {}))
    for seq, (ago, rec) in enumerate(RECORDS, 1):
        journal.append([dict(rec, t=float(seq), seq=seq, ts=ts(ago))])   # one batch each: may rotate
    journal.close()


@pytest.fixture
def start_hmi():
    made = []

    def start(state_dir: Path, hal: str = "hardware"):
        config = dataclasses.replace(cfg.load(ROOT / "config" / "cell.toml"), hal_backend=hal,
                                     hmi=HmiSettings(listen="127.0.0.1:0"))
        hmi = Hmi(config, "127.0.0.1", 1, commands=False, state_dir=str(state_dir))   # never started
        server = make_server(hmi, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        made.append(server)
        return hmi, server.server_address[1]

    yield start
    for server in made:
        server.stopping = True
        server.shutdown()
        server.server_close()


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read().decode()


def rows(page: str) -> list[tuple[str, str]]:
    """(type, seq) of every record row, top to bottom."""
    return re.findall(r'<tr class="jrec" data-type="([^"]*)">.*?<td class="num">([^<]*)</td>', page)


def by_id(page: str, ident: str) -> str:
    m = re.search(rf'id="{ident}"[^>]*>(.*?)</p>', page, re.S)
    assert m, f"no #{ident} in the page"
    return re.sub(r"<[^>]+>", "", m.group(1)).replace("&quot;", '"')


@pytest.fixture
def journaled(tmp_path, start_hmi):
    state = tmp_path / "state"
    state.mkdir()
    write_journal(state, max_bytes=400)   # rotated: the search reads every file, oldest first
    assert len(list(state.glob("journal.jsonl*"))) > 2
    return start_hmi(state)[1]


def test_filter_by_type_cause_and_time(journaled):
    port = journaled
    code, page = get(port, "/journal")
    assert code == 200 and by_id(page, "journal-summary") == "7 records match, newest first"
    assert [s for _t, s in rows(page)] == ["7", "6", "5", "4", "3", "2", "1"]

    code, page = get(port, "/journal?type=trip")
    assert code == 200 and rows(page) == [("trip", "6"), ("trip", "4")]
    assert "co_rise, temp_rise" in page and "2 records match" in page
    code, page = get(port, "/journal?type=trip&since=30m")
    assert rows(page) == [("trip", "6")] and "1 record match" in page
    since, until = quote(ts(70)), quote(ts(50))     # ISO times with their zone
    assert rows(get(port, f"/journal?since={since}&until={until}")[1]) == [("state", "5"), ("trip", "4")]
    local = (NOW - dt.timedelta(minutes=100)).astimezone().replace(tzinfo=None).isoformat(timespec="minutes")
    assert [s for _t, s in rows(get(port, f"/journal?until={local}")[1])] == ["2", "1"]   # local time

    code, page = get(port, "/journal?cause=co_rise")   # the trip's causes and the state's cause
    assert rows(page) == [("state", "5"), ("trip", "4")]
    assert rows(get(port, "/journal?cause=CO_RISE&type=trip")[1]) == [("trip", "4")]
    assert rows(get(port, "/journal?type=command&cause=co_rise")[1]) == []
    page = get(port, "/journal?type=calibration")[1]
    assert rows(page) == [] and by_id(page, "journal-summary").startswith("no record matches")
    page = get(port, "/journal?type=command")[1]
    assert 'by="ana"' in page.replace("&quot;", '"')   # the details of a record


def test_the_newest_within_the_limit_and_the_page_says_so(journaled):
    code, page = get(journaled, "/journal?limit=2")
    assert code == 200 and rows(page) == [("command", "7"), ("trip", "6")]
    assert by_id(page, "journal-summary").startswith("7 records match; showing the newest 2.")
    assert f"At most the newest {MAX_RESULTS} matching records are shown" in page


@pytest.mark.parametrize(("query", "problem"), [
    ("since=yesterday", 'since "yesterday": give an ISO time'),
    ("until=2026-13-01", 'until "2026-13-01": give an ISO time'),
    ("since=99999999999999d", 'since "99999999999999d": give an ISO time'),
    ("type=tripp", 'type "tripp": not a journal record type; one of command, trip, state'),
    ("since=1h&until=2h", 'until "2h" is before since "1h"'),
    ("limit=0", 'limit "0": a whole number from 1 to 500'),
    ("cause=%00x", "cause: at most 64 printable characters"),
    ("type=%3Cscript%3E", 'type "<script>": not a journal record type'),
])
def test_a_bad_query_is_told_on_the_page(journaled, query, problem):
    code, page = get(journaled, "/journal?" + query)
    assert code == 400 and "Traceback" not in page
    text = by_id(page, "journal-problem").replace("&lt;", "<").replace("&gt;", ">")
    assert text.startswith("not searched: ") and problem in text, text
    assert "<script>" not in page.split("<script>", 1)[0]   # escaped, not markup
    assert rows(page) == []


def test_an_unreadable_state_dir_is_said_plainly_with_the_path(tmp_path, start_hmi):
    missing = tmp_path / "elsewhere"
    _hmi, port = start_hmi(missing)
    code, page = get(port, "/journal?type=trip")
    text = by_id(page, "journal-problem")
    assert code == 200
    assert text.startswith(f"the journal cannot be read here: state dir {missing} does not exist"), text
    assert "--state-dir DIR or [hmi] state_dir" in text
    text = by_id(get(port, "/cell/cell1")[1], "calibration-problem")
    assert text.startswith(f"not shown: state dir {missing} does not exist on this machine"), text

    broken = tmp_path / "broken"
    (broken / "journal.jsonl").mkdir(parents=True)   # a file that cannot be read as one
    _hmi, port = start_hmi(broken)
    text = by_id(get(port, "/journal")[1], "journal-problem")
    assert f"cannot read {broken / 'journal.jsonl'}: Is a directory" in text, text

    empty = tmp_path / "empty"
    empty.mkdir()
    _hmi, port = start_hmi(empty)
    assert by_id(get(port, "/journal")[1], "journal-summary").startswith("no journal.jsonl in the state dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a directory whatever its mode")
def test_a_state_dir_without_permission(tmp_path, start_hmi):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    write_journal(locked)
    locked.chmod(0)
    try:
        _hmi, port = start_hmi(locked)
        assert f"cannot read state dir {locked}: permission denied" in by_id(get(port, "/journal")[1],
                                                                             "journal-problem")
    finally:
        locked.chmod(0o700)


def test_no_permission_as_root_sees_it(tmp_path, start_hmi, monkeypatch):
    """The same words where the test runs as root (which reads any directory): os.access says no."""
    from controller.hmi import journal

    write_journal(tmp_path)
    monkeypatch.setattr(journal.os, "access", lambda *_a, **_k: False)
    _hmi, port = start_hmi(tmp_path)
    assert f"cannot read state dir {tmp_path}: permission denied" in by_id(get(port, "/journal")[1],
                                                                           "journal-problem")
    assert "permission denied" in by_id(get(port, "/cell/cell1")[1], "calibration-problem")


def crushcell(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_the_cell_view_shows_calibration_dates_and_what_blocks_start(tmp_path, start_hmi):
    state = tmp_path / "state"
    today = dt.date.today()
    recent = (today - dt.timedelta(days=3)).isoformat()
    crushcell("calibration", "record", "o2_a", "--calibration", "--date", recent, "--by", "ana",
              "--state-dir", str(state))
    crushcell("calibration", "record", "co_cell", "--bump", "--date", "2020-01-02", "--by", "ana",
              "--state-dir", str(state))
    hmi, port = start_hmi(state)
    code, page = get(port, "/cell/cell1")   # nothing heard on the broker: the records show all the same
    assert code == 200

    def row(sensor: str, kind: str) -> list[str]:
        m = re.search(rf'data-sensor-kind="{sensor}:{kind}">(.*?)</tr>', page)
        assert m, (sensor, kind)
        return re.findall(r"<td[^>]*>([^<]*)</td>", m.group(1))

    cal_due = (today - dt.timedelta(days=3) + dt.timedelta(days=180)).isoformat()
    assert row("o2_a", "calibration") == ["o2_a", "calibration", recent, cal_due, "ok"]
    assert row("o2_a", "bump")[2] == recent   # a calibration counts as a bump test
    assert row("co_cell", "bump") == ["co_cell", "bump", "2020-01-02", "2020-02-01", "OVERDUE: blocks start"]
    assert row("h2_cell", "bump") == ["h2_cell", "bump", "-", "-", "never recorded: blocks start"]
    blocks = by_id(page, "calibration-blocks")
    assert blocks.startswith("start is blocked: o2_b, o2_c, lel_cell, h2_cell, co_cell, hf_room, "
                             "lel_rto not"), blocks
    # The `crushcell calibration record` runs are in the journal, and the search finds them.
    assert rows(get(port, "/journal?type=calibration")[1]) == [("calibration", ""), ("calibration", "")]

    # Every sensor calibrated today: nothing blocks start; the page follows the file (re-read).
    for sensor in cal.CALIBRATED_SENSORS:
        cal.record(state, sensor, "calibration", today)
    page = get(port, "/cell/cell1")[1]
    assert by_id(page, "calibration-blocks") == "start is not blocked by a bump test or a calibration"
    assert "blocks start" not in page
    # Another cell's records are in its own state dir, not this one's.
    hmi.store.feed("crushcell/cell9/status", json.dumps({"ts": time.time(), "state": "IDLE"}).encode())
    note = by_id(get(port, "/cell/cell9")[1], "calibration-note")
    assert note.startswith("recorded in that cell's own state dir; "
                           "this HMI reads only the state dir of cell cell1"), note


def test_the_simulated_cell_without_records_enforces_nothing(tmp_path, start_hmi):
    state = tmp_path / "state"
    state.mkdir()
    _hmi, port = start_hmi(state, hal="sim")
    page = get(port, "/cell/cell1")[1]
    assert "never recorded: not enforced on the simulated cell" in page
    assert "never recorded: blocks start" not in page and "OVERDUE" not in page
    assert "so nothing here blocks start there" in page
    assert 'id="calibration-blocks"' not in page


def test_state_dir_from_the_config_and_the_option(tmp_path):
    from controller.hmi.server import build_parser

    base = cfg.load(ROOT / "config" / "cell.toml")
    assert base.hmi.state_dir is None
    configured = dataclasses.replace(base, hmi=HmiSettings(state_dir=str(tmp_path)))
    assert Hmi(configured, "127.0.0.1", 1, commands=False).state_dir == str(tmp_path)
    assert Hmi(configured, "127.0.0.1", 1, commands=False, state_dir="/x").state_dir == "/x"
    assert build_parser().parse_args(["--state-dir", "var/demo"]).state_dir == "var/demo"


def test_a_broken_calibration_file_is_said_never_a_traceback(tmp_path, start_hmi):
    (tmp_path / "calibration.json").write_text("{not json")
    _hmi, port = start_hmi(tmp_path)
    code, page = get(port, "/cell/cell1")
    assert code == 200 and "calibration.json: unreadable" in page
    assert by_id(page, "calibration-blocks").startswith("start is blocked: o2_a,")   # as never tested
    (tmp_path / "calibration.json").write_text('{"o2_a": {"bump": 5}}')   # a date that is no string
    code, page = get(port, "/cell/cell1")   # counts as never tested, as the controller judges it
    assert code == 200 and by_id(page, "calibration-blocks").startswith("start is blocked: o2_a,")
