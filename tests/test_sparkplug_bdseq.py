"""bdSeq across connections and restarts (Sparkplug 3.0: starts at 0, +1 per MQTT CONNECT, 255
wraps to 0; NBIRTH and the will of one CONNECT carry the same number), and what a broken or
read-only state dir does to it: never stop the node, never reuse a number a broker may hold."""

from __future__ import annotations

import json
import os
import stat

import pytest

from controller.link.sparkplug.bdseq import BdSeqStore


def connect(store: BdSeqStore, reached: bool = True) -> int:
    """One connection attempt as paho makes it: the number is taken before the socket opens; a
    CONNECT that reached the broker (CONNACK or a dropped session) uses it up."""
    bd = store.for_connect()
    if reached:
        store.used()
    return bd


def test_starts_at_zero_and_goes_up_by_one_per_connect(tmp_path):
    store = BdSeqStore(str(tmp_path / "bd.json"))
    assert [connect(store) for _ in range(4)] == [0, 1, 2, 3]


def test_an_attempt_that_never_reached_the_broker_keeps_its_number(tmp_path):
    store = BdSeqStore(str(tmp_path / "bd.json"))
    assert connect(store) == 0
    assert connect(store, reached=False) == 1   # socket refused: no CONNECT went out
    assert connect(store, reached=False) == 1
    assert connect(store) == 1
    assert connect(store) == 2


def test_wraps_from_255_to_0(tmp_path):
    path = tmp_path / "bd.json"
    path.write_text(json.dumps({"bdSeq": 254}))
    store = BdSeqStore(str(path))
    assert [connect(store) for _ in range(3)] == [255, 0, 1]


def test_a_restart_goes_on_after_the_last_number_written(tmp_path):
    path = tmp_path / "bd.json"
    first = BdSeqStore(str(path))
    assert [connect(first) for _ in range(3)] == [0, 1, 2]
    # Written before the CONNECT went out: a crash right after it must not reuse 2.
    assert json.loads(path.read_text()) == {"bdSeq": 2}
    assert connect(BdSeqStore(str(path))) == 3


@pytest.mark.parametrize("text", ["", "{", "[]", '{"bdSeq": 256}', '{"bdSeq": -1}', '{"bdSeq": true}',
                                  '{"bdSeq": 1.5}', '{"other": 1}'])
def test_an_unreadable_file_starts_at_zero_and_says_so(tmp_path, caplog, text):
    path = tmp_path / "bd.json"
    path.write_text(text)
    store = BdSeqStore(str(path))
    assert connect(store) == 0
    assert "bdSeq starts at 0" in caplog.text
    assert json.loads(path.read_text()) == {"bdSeq": 0}   # and the file is whole again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a read-only directory")
def test_a_read_only_state_dir_keeps_counting_in_memory(tmp_path, caplog):
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        store = BdSeqStore(str(folder / "bd.json"))
        assert [connect(store) for _ in range(3)] == [0, 1, 2]
        assert caplog.text.count("kept in memory only") == 1
    finally:
        folder.chmod(stat.S_IRWXU)


def test_a_state_path_that_is_a_directory_keeps_counting_in_memory(tmp_path, caplog):
    # Works as root too: nobody can replace a directory with a file by rename.
    path = tmp_path / "bd.json"
    path.mkdir()
    (path / "x").write_text("keep me non-empty")
    store = BdSeqStore(str(path))
    assert [connect(store) for _ in range(3)] == [0, 1, 2]
    assert "kept in memory only" in caplog.text
