"""state.json is checked field by field: a damaged or crafted file is one
sentence naming the field, never a traceback or a bogus commit to boot."""

import json

import pytest

from gitroot.boot.state import State, StateStore, Trial
from gitroot.errors import StateError

A, B = "a" * 40, "b" * 40
GOOD = {"version": 1, "last_good": A, "previous_good": None, "hold": False,
        "trial": {"commit": B, "tries_left": 2, "tries": 3, "since": 5.0},
        "abandoned": None, "last_fetch": None}


def with_(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        else:
            data[key] = value
    return json.dumps(data).encode()


BAD = [
    ("garbage bytes", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("not json", b"{", "not JSON"),
    ("a list", b"[]", "not a JSON object"),
    ("deeply nested", b"[" * 100000, "not JSON"),
    ("unknown version", with_(version=2), "unknown state version 2"),
    ("tries_left a string", with_(**{"trial.tries_left": "3"}), "tries_left is not a whole number"),
    ("tries a boolean", with_(**{"trial.tries": True}), "tries is not a whole number"),
    ("last_good a number", with_(last_good=12345), "last_good is not a full commit id"),
    ("last_good a path", with_(last_good="../../etc/passwd"), "last_good is not a full commit id"),
    ("last_good short", with_(last_good="abc123"), "last_good is not a full commit id"),
    ("trial without commit", with_(**{"trial.commit": None}), "lacks its commit"),
    ("tries_left above tries", with_(**{"trial.tries_left": 9}), "out of range"),
    ("negative tries", with_(**{"trial.tries_left": -1}), "out of range"),
    ("hold a string", with_(hold="yes"), "hold is not a boolean"),
    ("trial a string", with_(trial="soon"), "trial is not a JSON object"),
]


@pytest.mark.parametrize("name, raw, words", BAD, ids=[b[0] for b in BAD])
def test_damaged_state_is_one_sentence(tmp_path, name, raw, words):
    (tmp_path / "state.json").write_bytes(raw)
    with pytest.raises(StateError) as info:
        StateStore(str(tmp_path)).load()
    assert words in str(info.value)
    assert str(tmp_path / "state.json") in str(info.value)


def test_good_state_round_trips(tmp_path):
    (tmp_path / "state.json").write_bytes(json.dumps(GOOD).encode())
    state = StateStore(str(tmp_path)).load()
    assert state == State(last_good=A, trial=Trial(B, 2, 3, 5.0))
    StateStore(str(tmp_path)).save(state, "", "test")
    assert StateStore(str(tmp_path)).load() == state


def test_oversized_state_is_refused(tmp_path):
    (tmp_path / "state.json").write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(StateError, match="over"):
        StateStore(str(tmp_path)).load()


def test_missing_state_is_a_new_device(tmp_path):
    assert StateStore(str(tmp_path)).load() == State()
